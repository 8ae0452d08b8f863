"""Mask patching: which layers' restructured attention makes the embedding what it is.

Run one input under two mask types, a *source* (e.g. `bidirectional`) and a *target* (e.g. `causal`). Patch
the residual stream of layer r, at the positions of a group (`"EOS"`, `"all"`, or any knockout group:
`"A"`, `"image"`, `"text"`, `"~image"`, ...), from the source run into the target run, and read the
target run's final embedding. Layer r indexes the residual stream as a capture does: 0 the embeddings
(`blocks.0.hook_resid_pre`), r = l+1 the output of block l (`blocks.{l}.hook_resid_post`). The patched
embedding moves from the target's (r = 0: embeddings do not depend on the mask) towards the source's
(r = last, all positions: exactly the source's; EOS alone too, for presets that read the EOS token).
`recovery` = (cos(patched, source) - cos(target, source)) / (1 - cos(target, source)): 0 at the target,
1 at the source, NaN where the two mask types give one embedding (e.g. a bridged mask without B).

Built on TransformerLens hooks: a bridge (`analysis.lens.bridge.boot`) caches the source run's residual
stream and replaces it in the target run. `patching_retrieval` scores the patched embeddings of queries
and candidates at every layer, MMEB-style.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from transformer_lens.model_bridge import TransformerBridge

from analysis.data.items import EvalDataset, Item
from analysis.embed import pooled
from analysis.inputs import Batch, encode
from analysis.lens.eos_lens import unique_candidates
from analysis.lens.knockout import group_positions
from analysis.lens.recorder import residual_hooks
from analysis.lens.validate import check_batch
from analysis.masks import PAD, check_mask_type
from analysis.metrics.layerwise import layerwise_retrieval
from analysis.metrics.retrieval import cosine_scores
from analysis.presets import Preset, get_preset


def positions_of(batch: Batch, positions: str) -> torch.Tensor:
    """BoolTensor `[B, L]`: `"all"` non-PAD positions, else a knockout group's (`"EOS"`, `"A"`, `"image"`, ...)."""
    return batch.roles != PAD if positions == "all" else group_positions(batch, positions)


@torch.no_grad()
def run(bridge: TransformerBridge, batch: Batch, mask_type: str, *, patch: dict[int, torch.Tensor] | None = None,
        where: torch.Tensor | None = None, keep_stream: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Forward `batch` under `mask_type`, with the residual stream of layers `patch` (`{r: [B, L, d]}`)
    replaced at `where` (`[B, L]` bool). Returns the residual stream `[layers+1, B, L, d]` after patching
    (None unless `keep_stream`) and the final-norm embedding `[B, d]` as the preset pools it (before L2
    normalisation)."""
    check_mask_type(mask_type)
    patch = patch or {}
    if patch and where is None:
        raise ValueError("patching needs `where`, the [batch, pos] positions to patch (see positions_of)")
    model = bridge.original_model
    check_batch(model, batch)
    param = next(model.parameters())
    batch = batch.to(param.device)
    names = residual_hooks(bridge.cfg.n_layers)
    stream: dict[int, torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}

    def at(r: int):
        def hook(tensor: torch.Tensor, hook) -> torch.Tensor:
            if r in patch:
                tensor = torch.where(where[..., None].to(tensor.device), patch[r].to(tensor), tensor)
            if keep_stream:
                stream[r] = tensor
            return tensor
        return hook

    def final(tensor: torch.Tensor, hook) -> None:
        out["embedding"] = pooled(tensor, batch)

    hooked = range(len(names)) if keep_stream else sorted(patch)
    inputs = batch.model_inputs(mask_type, dtype=param.dtype)
    with bridge.hooks(fwd_hooks=[(names[r], at(r)) for r in hooked] + [("ln_final.hook_out", final)]):
        bridge(inputs.pop("input_ids"), return_type=None, logits_to_keep=1, **inputs)
    return (torch.stack([stream[r] for r in range(len(names))]) if keep_stream else None), out["embedding"]


@torch.no_grad()
def patched_embeddings(bridge: TransformerBridge, batch: Batch, source: str, target: str,
                       *, positions: str = "EOS") -> dict[str, torch.Tensor]:
    """Embeddings `[B, d]` of the `source` and `target` runs and `patched` `[layers+1, B, d]`: the target run
    with layer r's residual at `positions` taken from the source run, one run per layer r. Holds the source
    run's residual stream `[layers+1, B, L, d]` meanwhile: size batches for it."""
    stream, source_embedding = run(bridge, batch, source)
    where = positions_of(batch, positions)
    _, target_embedding = run(bridge, batch, target, keep_stream=False)
    patched = [run(bridge, batch, target, patch={r: stream[r]}, where=where,
                   keep_stream=False)[1] for r in range(len(stream))]
    return {"source": source_embedding, "target": target_embedding, "patched": torch.stack(patched)}


def _cos(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Row-wise cosine of `[N, d]` and `[N, d]` -> `[N]`."""
    return cosine_scores(a, b[:, None])[:, 0]


def _embed(bridge: TransformerBridge, items: Sequence[Item], source: str, target: str, positions: str,
           targets: Sequence[str] | None, preset: Preset, side: str, batch_size: int) -> dict[str, torch.Tensor]:
    """`patched_embeddings` over `items` in batches: source / target `[N, d]`, patched `[layers+1, N, d]` (CPU)."""
    model, processor = bridge.original_model, bridge.processor
    parts = []
    for start in range(0, len(items), batch_size):
        chunk = targets[start:start + batch_size] if targets is not None else None
        batch = encode(processor, model, items[start:start + batch_size], chunk, preset=preset, side=side)
        parts.append({k: v.float().cpu() for k, v in patched_embeddings(bridge, batch, source, target,
                                                                         positions=positions).items()})
    return {k: torch.cat([p[k] for p in parts], dim=-2) for k in ("source", "target", "patched")}


def mask_patching(bridge: TransformerBridge, items: Sequence[Item], source: str, target: str, *, positions: str = "EOS",
                  targets: Sequence[str] | None = None, preset: str | Preset = "plain", side: str = "query",
                  batch_size: int = 16) -> dict:
    """The patching profile over `items` (with optional B `targets`): per layer r, means over the inputs of
    `cos_source`, `cos_target` (the patched embedding's cosine to each run's) and `recovery` (NaN-mean over
    inputs where the two runs differ); `baseline` the mean cos(target, source), `n_equal` how many inputs
    the two mask types embed alike (cosine > 1 - 1e-6); lists over layers."""
    e = _embed(bridge, list(items), source, target, positions, targets, get_preset(preset), side, batch_size)
    baseline = _cos(e["target"], e["source"])
    cos_source = np.stack([_cos(p, e["source"]) for p in e["patched"]])
    cos_target = np.stack([_cos(p, e["target"]) for p in e["patched"]])
    equal = baseline > 1 - 1e-6
    recovery = np.where(equal, np.nan, (cos_source - baseline) / np.where(equal, 1.0, 1 - baseline))
    mean_recovery = np.nanmean(recovery, 1).tolist() if not equal.all() else [float("nan")] * len(recovery)
    return {"source": source, "target": target, "positions": positions, "cos_source": cos_source.mean(1).tolist(),
            "cos_target": cos_target.mean(1).tolist(), "recovery": mean_recovery,
            "baseline": float(baseline.mean()), "n_equal": int(equal.sum()), "n": len(baseline)}


def patching_retrieval(bridge: TransformerBridge, datasets: Sequence[EvalDataset], source: str, target: str,
                       *, positions: str = "EOS", preset: str | Preset = "plain", batch_size: int = 16) -> dict:
    """MMEB P@1 of the patched embeddings at every layer r (queries and candidates patched alike, each
    with its side's prompt): `analysis.metrics.layerwise.layerwise_retrieval` over layers r, plus
    `source_run` / `target_run` (`overall`, `overall_tie_robust` of the unpatched runs)."""
    preset = get_preset(preset)
    states, runs = {}, {"source": {}, "target": {}}
    for side, items in (("query", [ex.query for d in datasets for ex in d.examples]),
                        ("candidate", unique_candidates(datasets))):
        items = list({it.key: it for it in items}.values())
        e = _embed(bridge, items, source, target, positions, None, preset, side, batch_size)
        states[side] = dict(zip((it.key for it in items), e["patched"].transpose(0, 1).numpy()))
        for run_name in runs:
            runs[run_name][side] = dict(zip((it.key for it in items), e[run_name][:, None].numpy()))
    out = layerwise_retrieval(states["query"], states["candidate"], datasets)
    for run_name, by_side in runs.items():
        scores = layerwise_retrieval(by_side["query"], by_side["candidate"], datasets)
        out[f"{run_name}_run"] = {k: scores[k][0] for k in ("overall", "overall_tie_robust")}
    return {"source": source, "target": target, "positions": positions, **out}
