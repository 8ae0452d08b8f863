"""EOS embeddings: the last-layer hidden state of the embedding token under a chosen mask type."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from analysis.data.items import Item
from analysis.inputs import Batch, encode


def eos_states(model, batch: Batch, mask_type: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Final-norm hidden state at each sample's EOS position: `[B, d_model]` (keeps gradients)."""
    dtype = dtype or next(model.parameters()).dtype
    hidden = model.model(**batch.model_inputs(mask_type, dtype)).last_hidden_state
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), batch.eos_index]


StatesFn = Callable[..., torch.Tensor]  # (model, batch, mask_type) -> [B, d], e.g. eos_states


@torch.no_grad()
def embed_items(model, processor, items: Sequence[Item], mask_type: str = "causal", batch_size: int = 64,
                normalize: bool = True, progress: bool = False, desc: str = "embed",
                states_fn: StatesFn = eos_states) -> torch.Tensor:
    """Embed `items` (each distinct `key` once), in order: float32 `[N, d_model]` on the CPU.

    `states_fn(model, batch, mask_type)` computes the EOS states of a batch (swap it to intervene,
    e.g. an attention knockout).
    """
    device = next(model.parameters()).device
    unique = list({it.key: it for it in items}.values())
    # similar lengths together: images first, then by text length
    order = sorted(range(len(unique)), key=lambda i: (unique[i].image is None, len(unique[i].text)))
    vectors: dict[str, torch.Tensor] = {}
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
        chunk = [unique[i] for i in order[start:start + batch_size]]
        batch = encode(processor, model, chunk).to(device)
        states = states_fn(model, batch, mask_type).float()
        if normalize:
            states = F.normalize(states, dim=-1)
        vectors.update(zip((it.key for it in chunk), states.cpu()))
    return torch.stack([vectors[it.key] for it in items]) if items else torch.empty(0)
