"""The EOS state read layer by layer: through the final norm and the LM head (a logit lens), and as an embedding.

`EosLens` decodes a residual state `[..., d]` as the model decodes its last one: the final RMSNorm (weight
and eps of the checkpoint, `final_norm`), then the unembedding (`lm_head`). Over a capture's
`eos_states()` `[N, layers+1, d]` it gives the top tokens at every layer and the rank / probability of
given target tokens. `reconstruction_probe` turns the stage-2 objective into a per-layer probe: how well the
EOS state at layer l alone, decoded through the head, predicts the tokens of B (the positive candidate's
text). It is a bag-of-words reading: in training only the first B token is predicted from the EOS
position (MNTP predicts token i from position i-1), so at the last layer `first_logprob` is exactly that
term of the reconstruction loss; the other B tokens are predicted from B positions that read EOS.

Layer-wise retrieval (`analysis.metrics.layerwise`) reads the same states as embeddings; `capture_retrieval`
captures the queries and the candidates of MMEB-style datasets for it, `states_by_key` lines them up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from analysis.data.items import EvalDataset
from analysis.lens.knockout import _hf
from analysis.lens.store import Capture
from analysis.metrics.layerwise import FinalNorm


def final_norm(model) -> FinalNorm:
    """The checkpoint's final RMSNorm (weight `[d]` as float64 numpy, eps from its config); a bridge or HF model."""
    hf = _hf(model)
    weight = hf.model.language_model.norm.weight.detach().double().cpu().numpy()
    return FinalNorm(weight, float(hf.config.text_config.rms_norm_eps))


def target_ids(tokenizer, texts: Iterable[str]) -> list[np.ndarray]:
    """Token ids `[T_i]` of each text, tokenised as `analysis.inputs.encode` tokenises a B target."""
    return [np.asarray(tokenizer(t, add_special_tokens=False).input_ids, dtype=np.int64) for t in texts]


@dataclass
class EosLens:
    """Final norm + unembedding `[V, d]` of a checkpoint, applied to residual states (no forward pass)."""

    norm: FinalNorm
    unembed: torch.Tensor

    @classmethod
    def from_model(cls, model) -> "EosLens":
        """The lens of a Hugging Face Qwen2(.5)-VL model or a bridge around one (its `lm_head` weight, not copied)."""
        return cls(final_norm(model), _hf(model).lm_head.weight.detach())

    @torch.no_grad()
    def logits(self, states) -> torch.Tensor:
        """Residual states `[..., d]` -> float32 logits `[..., V]`, on the unembedding's device."""
        normed = torch.as_tensor(self.norm(states), device=self.unembed.device).to(self.unembed.dtype)
        return (normed @ self.unembed.T).float()

    def top_tokens(self, states, *, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """`(ids, probs)`, each `[N, layers, k]`: the k most likely tokens of states `[N, layers, d]`, best first."""
        out = [torch.topk(self.logits(s).softmax(-1), k) for s in np.asarray(states)]
        return (np.stack([t.indices.cpu().numpy() for t in out]), np.stack([t.values.cpu().numpy() for t in out]))

    def target_ranks(self, states, ids) -> tuple[np.ndarray, np.ndarray]:
        """`(ranks, logprobs)`, each `[layers, T]`: rank (1 = the top token; ties count in its favour) and
        log-probability of target tokens `ids [T]` under states `[layers, d]`."""
        logits = self.logits(states)
        ids = torch.as_tensor(np.asarray(ids), dtype=torch.long, device=logits.device)
        chosen = logits[:, ids]  # [layers, T]
        ranks = 1 + (logits[:, None, :] > chosen[:, :, None]).sum(-1)
        return ranks.cpu().numpy(), chosen.sub(logits.logsumexp(-1, keepdim=True)).cpu().numpy()

    def reconstruction_probe(self, states, targets: Sequence[np.ndarray], *, k: int = 10) -> dict:
        """How much of B each layer's EOS state predicts, over states `[N, layers, d]` and B token ids `[T_i]`.

        Per layer, means over samples (samples without B tokens left out) of: `logprob` (a sample's mean
        log-probability of its B tokens), `first_logprob` (its first B token), `top_k` (the share of its B
        tokens among the k most likely) and `median_rank`; `n` samples.
        """
        rows = [self.target_ranks(s, ids) for s, ids in zip(np.asarray(states), targets) if len(ids)]
        if not rows:
            raise ValueError("no sample has B tokens: give each sample its target token ids")
        ranks, logprobs = [r for r, _ in rows], [lp for _, lp in rows]
        return {"logprob": np.mean([lp.mean(1) for lp in logprobs], 0).tolist(),
                "first_logprob": np.mean([lp[:, 0] for lp in logprobs], 0).tolist(),
                "top_k": np.mean([(r <= k).mean(1) for r in ranks], 0).tolist(),
                "median_rank": np.mean([np.median(r, 1) for r in ranks], 0).tolist(), "k": k, "n": len(rows)}


def states_by_key(capture: Capture) -> dict[str, np.ndarray]:
    """`{record key: EOS residual stream [layers+1, d]}` of a capture (layer-wise retrieval's input)."""
    return dict(zip((r.key for r in capture.records), capture.eos_states()))


def unique_candidates(datasets: Sequence[EvalDataset]) -> list:
    """Every distinct candidate Item of `datasets` (by key), in first-appearance order."""
    return list({c.key: c for d in datasets for ex in d.examples for c in ex.candidates}.values())


def capture_retrieval(checkpoint, datasets: Sequence[EvalDataset], mask_types: str | Iterable[str] | None,
                      out_dir: str | Path, **capture_kwargs) -> dict[str, tuple[Capture, Capture]]:
    """Capture the queries of `datasets` (query prompt) into `out_dir/queries/<mask>` and their distinct
    candidates (candidate prompt) into `out_dir/candidates/<mask>`: `{mask type: (queries, candidates)}`.

    `capture_kwargs` go to `analysis.lens.recorder.capture` (preset, batch_size, dtype, device, ...; patterns
    default to "none": retrieval needs the residual stream only). A rerun with the same settings resumes or
    reuses both captures; captures of other inputs in `out_dir` raise.
    """
    from analysis.lens.recorder import capture

    out_dir, capture_kwargs = Path(out_dir), {"patterns": "none", **capture_kwargs}
    sides = (("queries", "query", [ex.query for d in datasets for ex in d.examples]),
             ("candidates", "candidate", unique_candidates(datasets)))
    captured = {}
    for folder, side, items in sides:
        captured[folder] = capture(checkpoint, items, mask_types, out_dir / folder, side=side, **capture_kwargs)
        for cap in captured[folder].values():
            if [r.key for r in cap.records] != [it.key for it in items]:
                raise ValueError(f"{cap.directory} holds a capture of other inputs than these datasets' {folder}: "
                                 f"delete it, or capture into another directory")
    return {m: (captured["queries"][m], captured["candidates"][m]) for m in captured["queries"]}
