"""What the capture parity tests share: a mixed batch (images of two grid sizes, B segments, text only, padding)
and the check of a full capture against Hugging Face's own outputs."""

import numpy as np
import torch

from analysis.data import build_mini_mmeb
from analysis.data.items import Item
from analysis.embed import eos_states
from analysis.inputs import Batch, encode
from analysis.lens import run_batch


def mixed_batch(processor, model) -> Batch:
    """4 samples: image+text with B, text-only without B, a 56px crop (other grid) with B, image+text with B."""
    i2t, t2i, ground = build_mini_mmeb(2, tasks=("ShapesI2T", "ShapesT2I", "ShapesGround"), splits=("ind",))
    crop = ground.examples[0].candidates[0]
    items = [i2t.examples[0].query, t2i.examples[0].query, Item("", crop.image, key="crop"), i2t.examples[1].query]
    targets = [i2t.examples[0].positive.text, "", "a red circle", i2t.examples[1].positive.text]
    return encode(processor, model, items, targets)


def assert_full_capture_equals_hugging_face(reference, bridge, batch: Batch, mask_type: str, tol: float) -> None:
    """Full patterns, the EOS residual at every layer and the final-norm EOS state of a capture through `bridge`
    equal an untouched `reference` model's own `output_attentions` / `output_hidden_states` within `tol`."""
    with torch.no_grad():
        hf = reference(**batch.model_inputs(mask_type), output_attentions=True, output_hidden_states=True)
    captured = run_batch(bridge, batch, mask_type, patterns="full")
    n_layers = len(hf.attentions)
    norm = reference.model.language_model.norm
    for i, sample in enumerate(captured):
        n, eos = len(sample["roles"]), sample["eos_index"]
        full_rows = torch.stack(hf.attentions)[:, i, :, :n, :]  # [layers, heads, n, L]
        assert (full_rows[..., n:] == 0).all()  # PAD keys get no weight, so keeping n keys loses nothing
        torch.testing.assert_close(torch.from_numpy(sample["pattern"]), full_rows[..., :n], atol=tol, rtol=0)
        # embeddings and blocks 0..L-2 are HF's raw hidden states; HF's last one is after the final norm
        raw = torch.stack([h[i, eos] for h in hf.hidden_states[:n_layers]])
        torch.testing.assert_close(torch.from_numpy(sample["eos_resid"][:n_layers]), raw, atol=tol, rtol=0)
        with torch.no_grad():
            renormed = norm(torch.from_numpy(sample["eos_resid"][n_layers]))
        torch.testing.assert_close(renormed, hf.hidden_states[-1][i, eos], atol=tol, rtol=0)
        final = torch.from_numpy(sample["eos_final"])
        torch.testing.assert_close(final, hf.hidden_states[-1][i, eos], atol=tol, rtol=0)
    with torch.no_grad():
        embedding = eos_states(reference, batch, mask_type)
    torch.testing.assert_close(torch.from_numpy(np.stack([s["eos_final"] for s in captured])),
                               embedding, atol=tol, rtol=0)
