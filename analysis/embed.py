"""Embeddings as an embedder preset reads them: the final-norm state at the EOS position, or its mean."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from analysis import distributed
from analysis.data.items import Item
from analysis.inputs import Batch, encode
from analysis.presets import Preset, get_preset


def pooled(hidden: torch.Tensor, batch: Batch) -> torch.Tensor:
    """`[B, L, d]` states -> `[B, d]`: the EOS position's, or the mean over `batch.pool` positions."""
    if batch.pool is None:
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), batch.eos_index]
    weights = batch.pool.to(hidden.dtype)[..., None]
    return (hidden * weights).sum(1) / weights.sum(1)


def eos_states(model, batch: Batch, mask_type: str, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Final-norm embedding states of a batch: `[B, d_model]` (keeps gradients); see `pooled`."""
    dtype = dtype or next(model.parameters()).dtype
    hidden = model.model(**batch.model_inputs(mask_type, dtype=dtype)).last_hidden_state
    return pooled(hidden, batch)


StatesFn = Callable[..., torch.Tensor]  # (model, batch, mask_type) -> [B, d], e.g. eos_states


@torch.no_grad()
def embed_items(model, processor, items: Sequence[Item], *, mask_type: str | None = None, batch_size: int = 64,
                normalize: bool | None = None, progress: bool = False, desc: str = "embed",
                states_fn: StatesFn = eos_states, preset: str | Preset = "plain",
                side: str = "query", split: bool = False) -> torch.Tensor:
    """Embed `items` as `preset` does on `side` (each distinct `key` once), in order: float32 `[N, d]` on the CPU.

    `mask_type` defaults to the attention the preset's model was trained with, `normalize` to the preset's
    (L2). `states_fn(model, batch, mask_type)` computes a batch's states (swap it to intervene, e.g. an
    attention knockout). Images are decoded batch by batch, so memory stays flat in the number of items.
    `split=True` under torchrun / accelerate launch (every rank calls it with the same items): rank r embeds
    batches r, r+N, ... and every rank gets all vectors, each equal to the single-process one.
    """
    preset = get_preset(preset)
    mask_type = mask_type or preset.attention
    normalize = preset.normalize if normalize is None else normalize
    device = next(model.parameters()).device
    unique = list({it.key: it for it in items}.values())
    # similar lengths together: images first, then by text length
    order = sorted(range(len(unique)), key=lambda i: (not unique[i].has_image, len(unique[i].text)))
    starts = range(0, len(order), batch_size)
    if split and distributed.active():  # strided batches: each rank gets images and texts alike
        rank, size = distributed.world()
        starts = starts[rank::size]
    vectors: dict[str, torch.Tensor] = {}
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
        chunk = [unique[i] for i in order[start:start + batch_size]]
        batch = encode(processor, model, chunk, preset=preset, side=side).to(device)
        states = states_fn(model, batch, mask_type).float()
        if normalize:
            states = F.normalize(states, dim=-1)
        vectors.update(zip((it.key for it in chunk), states.cpu()))
    if split and distributed.active():
        for part in distributed.gather_objects(vectors):
            vectors.update(part)
    return torch.stack([vectors[it.key] for it in items]) if items else torch.empty(0)
