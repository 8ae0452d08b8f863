"""Attention knockout (Geva et al., 2023): cut attention edges between groups of positions in chosen layers.

An edge `(query_group, key_group)`, e.g. `("EOS", "image")`, stops every query of the first group from
attending to any key of the second, in the chosen layers, on top of the mask type. Groups are the
roles `A`, `EOS`, `B` and the prompt segments of A (`analysis.presets.SEGMENTS`): `image` (the image
tokens), `vision` (the `<|vision_start|>` / `<|vision_end|>` markers around them: neither image nor
text), `text` (the input's text), `instruction` and `template`; `~group` is every other (non-PAD)
position. A position always keeps its own key, so no softmax row is ever empty.

An edge removes the *direct* edge only: with `("EOS", "image")` cut, the image still reaches EOS through
every other position that reads it (text, vision markers, template). To remove a group's whole
contribution to EOS, isolate it: `isolate("image")` = `("~image", "image")` in every layer stops every
other position from reading it, so nothing of it reaches EOS (the position ids, which depend on the
image's size but not on its content, are untouched). Cut in some layers only, an isolation leaves the
paths through the other layers.

Cross-modal flow by layer window (Zhang et al., 2024, arXiv 2411.18620): `window_knockout` cuts each flow of
`FLOWS` (image->text, image->EOS, text->EOS: the direct edges) in sliding windows of layers and reports the
drop in P@1 per window, so one sees in which layers image information reaches the text and the EOS token.

Mechanism: the chosen layers' attention modules get a forward pre-hook that adds `finfo.min` to the
blocked entries of the additive mask they receive (the pre-softmax scores), so the softmax gives those
edges exactly zero weight. TransformerLens' `hook_attn_scores` cannot do this for Qwen2(.5)-VL: their
mRoPE attention stays Hugging Face-native and the bridge fires that hook after the fact, discarding
edits. Works on a plain Hugging Face model and on a bridged one (`bridge.original_model`) alike.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from typing import Iterator, Sequence

import torch
from transformer_lens.model_bridge import TransformerBridge

from analysis.data.items import EvalDataset, Item
from analysis.embed import embed_items, eos_states
from analysis.evaluate import evaluate
from analysis.inputs import SEGMENT_ID, Batch
from analysis.lens.validate import check_batch
from analysis.masks import EOS, PAD, A, B, check_mask_type
from analysis.presets import Preset, get_preset

ROLE_GROUPS = {"A": A, "EOS": EOS, "B": B}
SEGMENT_GROUPS = ("image", "vision", "text", "instruction", "template")
GROUPS = (*ROLE_GROUPS, *SEGMENT_GROUPS)
Edge = tuple[str, str]
# flow name -> the direct edges (query group, key group) that carry it
FLOWS: dict[str, list[Edge]] = {"image->text": [("text", "image")], "image->EOS": [("EOS", "image")],
                                "text->EOS": [("EOS", "text")]}


def _hf(model) -> torch.nn.Module:
    return model.original_model if isinstance(model, TransformerBridge) else model


def group_positions(batch: Batch, group: str) -> torch.Tensor:
    """BoolTensor `[B, L]`: the positions of `group` (a role, a segment of A, or `~group`: all other non-PAD)."""
    roles = batch.roles
    if group.startswith("~"):
        return (roles != PAD) & ~group_positions(batch, group[1:])
    if group in ROLE_GROUPS:
        return roles == ROLE_GROUPS[group]
    if group in SEGMENT_GROUPS:
        return (batch.segment_ids == SEGMENT_ID[group]) & (roles == A)
    raise ValueError(f"unknown knockout group {group!r}; valid groups: {', '.join(GROUPS)}, or ~ before one")


def isolate(group: str) -> list[Edge]:
    """The edges that stop every other position from reading `group`: in every layer, its whole contribution."""
    return [(f"~{group}", group)]


def blocked(batch: Batch, edges: Sequence[Edge]) -> torch.Tensor:
    """BoolTensor `[B, L, L]`: True where query q may no longer attend key k (the diagonal never)."""
    size, length = batch.roles.shape
    out = torch.zeros(size, length, length, dtype=torch.bool, device=batch.roles.device)
    for edge in edges:
        if len(edge) != 2:
            raise ValueError(f"an edge is (query_group, key_group), e.g. ('EOS', 'image'); got {edge!r}")
        query, key = (group_positions(batch, g) for g in edge)
        out |= query[:, :, None] & key[:, None, :]
    return out & ~torch.eye(length, dtype=torch.bool, device=out.device)


def _attention_modules(model) -> list[torch.nn.Module]:
    return [layer.self_attn for layer in _hf(model).model.language_model.layers]


@contextmanager
def knockout(model, batch: Batch, edges: Sequence[Edge], *, layers: Sequence[int] | None = None) -> Iterator[None]:
    """Within the block, forwards of `batch` through `model` run with `edges` cut in `layers` (default all)."""
    modules = _attention_modules(model)
    n = len(modules)
    layers = range(n) if layers is None else list(layers)
    bad = [layer for layer in layers if not -n <= layer < n]
    if bad:
        raise ValueError(f"layers {bad} out of range: this checkpoint has {n} layers (0..{n - 1})")
    cut = blocked(batch.to(next(_hf(model).parameters()).device), edges)[:, None]  # [B, 1, L, L]

    def add_cut(module, args, kwargs):
        mask = kwargs.get("attention_mask")
        if mask is None or mask.shape[-2:] != cut.shape[-2:] or not mask.is_floating_point():
            raise RuntimeError("knockout needs the additive 4D float mask of Batch.model_inputs "
                               f"[batch, 1, {cut.shape[-1]}, {cut.shape[-1]}]; got "
                               f"{None if mask is None else (tuple(mask.shape), mask.dtype)}")
        kwargs["attention_mask"] = mask.masked_fill(cut, torch.finfo(mask.dtype).min)
        return args, kwargs

    handles = [modules[layer].register_forward_pre_hook(add_cut, with_kwargs=True) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def knockout_eos_states(model, batch: Batch, mask_type: str, edges: Sequence[Edge],
                        *, layers: Sequence[int] | None = None) -> torch.Tensor:
    """Final-norm EOS states `[B, d]` with `edges` cut in `layers` (`edges=()` gives `eos_states` exactly)."""
    check_mask_type(mask_type)
    check_batch(_hf(model), batch)
    with knockout(model, batch, edges, layers=layers):
        return eos_states(_hf(model), batch, mask_type)


def _knocked(edges: Sequence[Edge], layers: Sequence[int] | None):
    """A `states_fn` for `embed_items` / `evaluate` that cuts `edges` in `layers`."""
    return partial(knockout_eos_states, edges=edges, layers=layers)


def knockout_embed_items(model, processor, items: Sequence[Item], mask_type: str, edges: Sequence[Edge],
                         *, layers: Sequence[int] | None = None, batch_size: int = 64,
                         normalize: bool = True) -> torch.Tensor:
    """`embed_items` with a knockout: float32 `[N, d]` on the CPU, each distinct key embedded once."""
    return embed_items(_hf(model), processor, items, mask_type=mask_type, batch_size=batch_size, normalize=normalize,
                       states_fn=_knocked(edges, layers))


def evaluate_knockout(model, processor, datasets: Sequence[EvalDataset], *, mask_type: str | None = None,
                      edges: Sequence[Edge] = (), layers: Sequence[int] | None = None,
                      batch_size: int = 64, preset: str | Preset = "plain") -> dict:
    """mini-MMEB P@1 with `edges` cut in `layers`, inputs as `preset` embeds them, under `mask_type` (default: the
    preset's attention, as in `analysis.evaluate.evaluate`, whose dict it returns)."""
    result = evaluate(_hf(model), processor, datasets, mask_type=mask_type, batch_size=batch_size,
                      states_fn=_knocked(edges, layers), preset=preset)
    result["knockout"] = {"edges": [list(e) for e in edges], "layers": None if layers is None else list(layers)}
    return result


def layer_windows(n_layers: int, width: int, *, stride: int = 1) -> list[list[int]]:
    """Sliding windows of `width` consecutive layers, `stride` apart; the last window ends at the last layer."""
    if not 1 <= width <= n_layers or stride < 1:
        raise ValueError(f"need 1 <= width <= {n_layers} layers and stride >= 1; got width {width}, stride {stride}")
    starts = list(range(0, n_layers - width + 1, stride))
    if starts[-1] != n_layers - width:
        starts.append(n_layers - width)
    return [list(range(s, s + width)) for s in starts]


def window_knockout(model, processor, datasets: Sequence[EvalDataset], *, mask_type: str | None = None,
                    flows: dict[str, Sequence[Edge]] | None = None, width: int = 1, stride: int = 1,
                    preset: str | Preset = "plain", batch_size: int = 64) -> dict:
    """P@1 with each flow's edges cut in sliding layer windows (`layer_windows`), against the intact model.

    flows: `{name: edges}` (default `FLOWS`); mask_type defaults to the preset's attention. Returns
    `{"mask_type", "windows": [[layer, ...]], "base": {overall, overall_tie_robust}, "flows": {name: {"edges",
    "score", "score_tie_robust", "drop", "drop_tie_robust" (lists over windows; drop = base - score),
    "all_layers": {overall, overall_tie_robust} with the edges cut in every layer}}}`.
    """
    mask_type = mask_type or get_preset(preset).attention
    windows = layer_windows(len(_attention_modules(model)), width, stride=stride)

    def score(edges: Sequence[Edge], layers: Sequence[int] | None) -> dict:
        result = evaluate_knockout(model, processor, datasets, mask_type=mask_type, edges=edges, layers=layers,
                                   batch_size=batch_size, preset=preset)
        return {k: result[k] for k in ("overall", "overall_tie_robust")}

    base = score((), None)
    out = {"mask_type": mask_type, "windows": windows, "base": base, "flows": {}}
    for name, edges in (FLOWS if flows is None else flows).items():
        cut = [score(edges, window) for window in windows]
        out["flows"][name] = {
            "edges": [list(e) for e in edges],
            "score": [c["overall"] for c in cut], "score_tie_robust": [c["overall_tie_robust"] for c in cut],
            "drop": [base["overall"] - c["overall"] for c in cut],
            "drop_tie_robust": [base["overall_tie_robust"] - c["overall_tie_robust"] for c in cut],
            "all_layers": score(edges, None)}
    return out


# The cuts the attention_flow notebook tabulates, each in every layer: direct edges into EOS, and isolations
# (every path from a group to EOS).
KNOCKOUT_CUTS: dict[str, list[Edge]] = {
    "none": [], "EOS ← image (direct edge only)": [("EOS", "image")],
    "EOS ← text (direct edge only)": [("EOS", "text")], "EOS ← A (EOS reads only itself)": [("EOS", "A")],
    "image isolated (every path image → EOS)": isolate("image"),
    "text isolated (every path text → EOS)": isolate("text")}


def knockout_table(model, processor, datasets: Sequence[EvalDataset], mask_type: str,
                   *, cuts: dict[str, Sequence[Edge]] | None = None) -> dict[str, dict]:
    """Each cut of `cuts` (default `KNOCKOUT_CUTS`) in every layer: mini-MMEB P@1 (`evaluate_knockout`) and how
    far the query embeddings move from the intact model's (mean cosine distance, `knockout_effect`).
    `{cut name: {edges, overall, overall_tie_robust, ties, ind, cosine_distance}}`."""
    from analysis.metrics.flow import knockout_effect

    queries = [ex.query for d in datasets for ex in d.examples]
    base = embed_items(_hf(model), processor, queries, mask_type=mask_type)
    table = {}
    for name, edges in (KNOCKOUT_CUTS if cuts is None else cuts).items():
        scores = evaluate_knockout(model, processor, datasets, mask_type=mask_type, edges=edges)
        moved = knockout_effect(base, knockout_embed_items(model, processor, queries, mask_type, edges))["mean"]
        table[name] = dict(edges=[list(e) for e in edges], overall=scores["overall"],
                           overall_tie_robust=scores["overall_tie_robust"], ties=scores["ties"],
                           ind=scores["split"]["ind"], cosine_distance=moved)
    return table
