"""Gradient caching for InfoNCE over batches larger than memory (Gao et al. 2021, "Scaling Deep Contrastive
Learning Batch Size under Memory Limited Setup").

InfoNCE couples every query with every target, so its batch cannot simply be split into micro-batches.
Gradient caching splits the *encoder* instead, in two passes over chunks of `chunk_size` rows:

1. embed every chunk without autograd: `[n + m, d]` EOS states, the only full-batch tensor kept;
2. compute the loss on those states (gathered from every rank) and its gradient with respect to them;
3. re-run each chunk with autograd and backpropagate that chunk's cached gradient (`states · g`).

Peak activation memory is one chunk's, whatever the batch. Each chunk's random state (dropout) is saved
in pass 1 and replayed in pass 3, so both passes compute the same function; afterwards the generators
continue as after pass 1. The gradients equal the full-batch loss's up to float rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor

from analysis import distributed
from analysis.embed import eos_states
from analysis.train.objectives import PairBatch, base_model, info_nce


def _rng_state(device: torch.device) -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def cached_contrastive_loss(model, pb: PairBatch, embed_mask: str, *, temperature: float = 0.02,
                            symmetric: bool = False, chunk_size: int = 32, weight: float = 1.0) -> Tensor:
    """InfoNCE of `pb` (see `analysis.train.objectives.contrastive_loss`) with gradient caching.

    Accumulates `weight` x the loss's gradient into every parameter's `.grad` (pass 3) and returns the
    loss value, detached. Under several processes the loss is over all ranks' rows, as without caching.
    """
    core = base_model(model)
    device = pb.batch.input_ids.device
    rows = pb.batch.input_ids.shape[0]
    chunks = [range(start, min(start + chunk_size, rows)) for start in range(0, rows, chunk_size)]
    states, rng = [], []
    with torch.no_grad():  # pass 1: every chunk's embedding, no activations kept
        for chunk in chunks:
            rng.append(_rng_state(device))
            states.append(eos_states(core, pb.batch.rows(chunk).trimmed(), embed_mask))
    after = _rng_state(device)
    cached = torch.cat(states).detach().requires_grad_(True)  # [n + m, d], this rank's rows
    with torch.enable_grad():  # pass 2: the loss over all ranks' rows, and its gradient w.r.t. ours
        query = distributed.gather_with_grad(cached[:pb.n])
        target = distributed.gather_with_grad(cached[pb.n:])
        loss = info_nce(query, target, temperature=temperature, target_keys=pb.target_keys, symmetric=symmetric)
        (grad,) = torch.autograd.grad(loss * weight, cached)
    for chunk, state in zip(chunks, rng):  # pass 3: each chunk again, with autograd, fed its cached gradient
        _set_rng_state(state, device)
        chunk_states = eos_states(core, pb.batch.rows(chunk).trimmed(), embed_mask)
        chunk_states.backward(grad[chunk.start:chunk.stop].to(chunk_states.dtype))
    _set_rng_state(after, device)
    return loss.detach()
