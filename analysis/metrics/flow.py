"""Attention flow: segment budgets, rollout, max-flow and knockout summaries.

Attention patterns are for ONE sample, stacked over layers in TransformerLens' ``hook_pattern``
layout: ``[layers, heads, q, k]`` (row ``q`` is the softmax distribution of query ``q`` over keys).
Inputs may be torch tensors (any float dtype or device) or array-likes; outputs are numpy float64.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import networkx as nx
import numpy as np

from analysis.masks import ROLES
from analysis.metrics.arrays import as_numpy

if TYPE_CHECKING:
    from analysis.lens.store import CapturedSample

HEAD_REDUCTIONS = ("mean", "max", "min")

# networkx's max-flow algorithms are exact on integers only; capacities are scaled to this grid.
_FLOW_SCALE = 2**40


def _patterns(patterns) -> np.ndarray:
    p = as_numpy(patterns)
    if p.ndim != 4 or p.shape[-1] != p.shape[-2]:
        raise ValueError(f"patterns must be [layers, heads, q, k] with q == k, got shape {p.shape}")
    return p


@dataclass(frozen=True)
class SegmentMass:
    """Attention mass between groups of positions (roles or finer segments).

    mass: ``[layers, heads, n, n]``; ``mass[l, h, r, s]`` is the mean over queries labelled
        ``names[r]`` of their summed attention to keys labelled ``names[s]`` (rows sum to 1 for
        softmax patterns; NaN rows for labels with no position).
    names: the ``n`` labels: custom segment labels (first-appearance order), then ``ROLES``.
    counts: ``[n]`` number of positions carrying each label.
    """

    mass: np.ndarray
    names: tuple[str, ...]
    counts: np.ndarray

    def as_dict(self) -> dict[tuple[str, str], np.ndarray]:
        """``{(query_label, key_label): [layers, heads]}`` for every pair of labels."""
        return {
            (q, k): self.mass[:, :, i, j]
            for i, q in enumerate(self.names)
            for j, k in enumerate(self.names)
        }

    def budget(self, query: str = "EOS") -> dict[str, np.ndarray]:
        """How ``query`` positions split their attention per layer, heads averaged:
        ``{key_label: [layers]}`` over labels present in the sequence (feeds ``plots.segment_budget``)."""
        i = self.names.index(query)
        return {
            k: self.mass[:, :, i, j].mean(axis=1)
            for j, k in enumerate(self.names)
            if self.counts[j] > 0
        }


def segment_attention(patterns, roles: Sequence[str], *, segments: Sequence[str | None] | None = None) -> SegmentMass:
    """Role-to-role (or segment-to-segment) attention mass per layer and head.

    patterns: ``[layers, heads, q, k]``; a ``[heads, q, k]`` input is one layer (``layers = 1``).
    roles: length-``q`` sequence of ``ROLES``.
    segments: optional length-``q`` labels overriding ``roles`` where not None, e.g.
        ``["image", "image", "text", None, ...]`` to split A into image and text tokens.
    Returns a ``SegmentMass`` with ``mass [layers, heads, n, n]``. B->A is the truncation check:
    exactly 0 under the bridged masks.
    """
    p = as_numpy(patterns)
    if p.ndim == 3:
        p = p[None]
    p = _patterns(p)
    n_pos = p.shape[-1]
    roles = list(roles)
    if len(roles) != n_pos:
        raise ValueError(f"got {len(roles)} roles for {n_pos} positions")
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise ValueError(f"unknown roles {unknown}; roles must be in {ROLES}")
    labels = roles
    if segments is not None:
        if len(segments) != n_pos:
            raise ValueError(f"got {len(segments)} segments for {n_pos} positions")
        labels = [r if s is None else s for r, s in zip(roles, segments)]
    custom = [lab for lab in dict.fromkeys(labels) if lab not in ROLES]
    names = (*custom, *ROLES)
    onehot = np.array([[lab == name for name in names] for lab in labels], dtype=np.float64)  # [q, n]
    counts = onehot.sum(axis=0)
    to_keys = p @ onehot  # [layers, heads, q, n]: summed attention of each query to each group
    with np.errstate(invalid="ignore", divide="ignore"):
        mass = np.einsum("qr,lhqs->lhrs", onehot, to_keys) / counts[:, None]
    return SegmentMass(mass=mass, names=names, counts=counts)


def _layer_matrices(patterns, head_reduce: str, add_residual: bool) -> np.ndarray:
    """``[layers, heads, q, k]`` -> per-layer ``[layers, q, k]`` matrices used by rollout and flow."""
    if head_reduce not in HEAD_REDUCTIONS:
        raise ValueError(f"head_reduce must be one of {HEAD_REDUCTIONS}, got {head_reduce!r}")
    a = getattr(np, head_reduce)(_patterns(patterns), axis=1)
    if add_residual:
        a = a + np.eye(a.shape[-1])
        a = a / a.sum(axis=-1, keepdims=True)
    return a


def attention_rollout(patterns, *, head_reduce: str = "mean", add_residual: bool = True) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema, 2020): ``[layers, heads, q, k]`` -> ``[q, k]``.

    Per layer the heads are reduced (mean / max / min) and, with ``add_residual``, replaced by
    ``row_normalise(A + I)``; the result is ``A'_last @ ... @ A'_first``: row ``q`` says how much
    of position ``q``'s last-layer state comes from each input position.
    """
    a = _layer_matrices(patterns, head_reduce, add_residual)
    joint = np.eye(a.shape[-1])
    for layer in a:
        joint = layer @ joint
    return joint


def attention_flow(
    patterns,
    target_position: int,
    *, source_positions: Sequence[int] | None = None,
    head_reduce: str = "mean",
    add_residual: bool = True,
    max_positions: int = 64,
) -> np.ndarray:
    """Attention flow (Abnar & Zuidema, 2020): max-flow from input positions to one output.

    patterns: ``[layers, heads, q, k]``. The graph has a node per (layer boundary, position);
    the edge from key ``k`` below layer ``l`` to query ``q`` above it has capacity ``A'_l[q, k]``
    (the matrices of ``attention_rollout``). Returns ``[len(source_positions)]`` (default all
    ``q`` positions): the max-flow value from each input node to ``target_position`` at the top.
    """
    a = _layer_matrices(patterns, head_reduce, add_residual)
    n_layers, n_pos, _ = a.shape
    if n_pos > max_positions:
        raise ValueError(
            f"attention_flow solves one max-flow problem per source on a graph of {n_layers + 1} x "
            f"{n_pos} nodes; the sequence has {n_pos} positions, more than max_positions="
            f"{max_positions}. Use attention_rollout for long sequences, or raise max_positions."
        )
    sources = range(n_pos) if source_positions is None else list(source_positions)
    for pos in [target_position, *sources]:
        if not 0 <= pos < n_pos:
            raise ValueError(f"position {pos} is outside the sequence of {n_pos} positions")
    graph = nx.DiGraph()
    graph.add_nodes_from((layer, pos) for layer in range(n_layers + 1) for pos in range(n_pos))
    capacity = np.rint(a * _FLOW_SCALE).astype(np.int64)
    for layer in range(n_layers):
        queries, keys = np.nonzero(capacity[layer])
        graph.add_edges_from(
            ((layer, int(k)), (layer + 1, int(q)), {"capacity": int(capacity[layer, q, k])})
            for q, k in zip(queries, keys)
        )
    sink = (n_layers, target_position)
    return np.array([nx.maximum_flow_value(graph, (0, s), sink) / _FLOW_SCALE for s in sources])


def knockout_effect(base_embeddings, knocked_embeddings) -> dict[str, np.ndarray | float]:
    """How far a knockout moves the embeddings: ``[N, d]``, ``[N, d]`` ->
    ``{"cosine_distance": [N] (1 - cosine per sample), "mean": float}``."""
    base, knocked = as_numpy(base_embeddings), as_numpy(knocked_embeddings)
    if base.shape != knocked.shape or base.ndim != 2:
        raise ValueError(f"expected two [N, d] arrays of one shape, got {base.shape} and {knocked.shape}")
    cosine = np.sum(base * knocked, axis=1) / (np.linalg.norm(base, axis=1) * np.linalg.norm(knocked, axis=1))
    distance = 1.0 - cosine
    return {"cosine_distance": distance, "mean": float(distance.mean())}


def retrieval_delta(base_scores: Mapping[str, float], knocked_scores: Mapping[str, float]) -> dict[str, float]:
    """``{metric: knocked - base}`` for score dicts with the same keys (e.g. Precision@1 per task)."""
    if set(base_scores) != set(knocked_scores):
        raise KeyError(f"score keys differ: {sorted(set(base_scores) ^ set(knocked_scores))}")
    return {k: float(knocked_scores[k]) - float(base_scores[k]) for k in base_scores}


def row_budget(rows, segments: Sequence[str]) -> dict[str, np.ndarray]:
    """How one query row splits its attention over key segments, per layer, heads averaged.

    rows: ``[layers, heads, k]`` (e.g. the EOS row of every layer); segments: length-``k`` key labels.
    Returns ``{label: [layers]}`` for every label present (values sum to 1 over labels for softmax rows).
    """
    r = as_numpy(rows)
    if r.ndim != 3 or r.shape[-1] != len(segments):
        raise ValueError(f"rows must be [layers, heads, k] with k = {len(segments)} segments; got shape {r.shape}")
    labels = np.asarray(list(segments))
    return {lab: r[:, :, labels == lab].sum(axis=-1).mean(axis=1) for lab in dict.fromkeys(segments)}


def attention_layer(layer: int, n_blocks: int) -> int:
    """The pattern index (0-based block) of the attention at `layer`, counted as everywhere in the toolkit:
    layer 0 = the embeddings (no attention there), layer l = block l's output (1..n_blocks); negative counts
    from the last (-1 = layer n_blocks)."""
    if not (1 <= layer <= n_blocks or -n_blocks <= layer < 0):
        raise ValueError(f"attention exists at layers 1..{n_blocks} (layer 0 is the embeddings) or -1..-{n_blocks} "
                         f"from the last; got {layer}")
    return layer - 1 if layer > 0 else n_blocks + layer


def eos_row_budget(sample: CapturedSample) -> dict[str, np.ndarray]:
    """`row_budget` of one captured sample's EOS row (`Capture.sample`: `pattern [layers, heads, rows, L]` with
    rows at `query_positions`, `eos_index`, `segments`): ``{segment: [layers]}``."""
    rows = list(np.asarray(sample.query_positions))
    if sample.eos_index not in rows:
        raise ValueError(f"the sample's pattern rows ({rows[:8]}...) do not include its EOS position "
                         f"{sample.eos_index}: capture with patterns 'eos', 'eos+b' or 'full'")
    return row_budget(np.asarray(sample.pattern)[:, :, rows.index(sample.eos_index)], sample.segments)


def mean_eos_budget(samples: Iterable[CapturedSample], n_layers: int) -> dict[str, np.ndarray]:
    """The EOS budget averaged over samples: ``{segment: [n_layers]}`` in first-appearance order; a segment
    missing from a sample counts as 0 there (e.g. the image in a text-only sample)."""
    budgets = [eos_row_budget(s) for s in samples]
    if not budgets:
        raise ValueError("no samples to average the EOS budget over")
    segments = list(dict.fromkeys(k for b in budgets for k in b))
    return {k: np.mean([b.get(k, np.zeros(n_layers)) for b in budgets], axis=0) for k in segments}


def merged_grid(image_grid: Sequence[int] | None, n_image_tokens: int) -> tuple[int, int, int]:
    """The `(t, h, w)` grid of a sample's image tokens, from the `[t, h, w]` patch grid before merging that
    the capture stores (`record.image_grid`, the processor's `image_grid_thw`): the merge factor (2x2
    patches per token in Qwen2/2.5/3-VL) follows from the token count."""
    if image_grid is None:
        raise ValueError("this capture's records hold no image_grid (the image's patch grid): recapture with this "
                         "version of cocoa-lens to draw the rollout on the image")
    t, h, w = (int(v) for v in image_grid)
    if n_image_tokens < 1 or (t * h * w) % n_image_tokens:
        raise ValueError(f"{n_image_tokens} image tokens do not tile a {t}x{h}x{w} patch grid")
    merge = int(round(np.sqrt(t * h * w // n_image_tokens)))
    if merge < 1 or merge * merge * n_image_tokens != t * h * w or h % merge or w % merge:
        raise ValueError(f"{n_image_tokens} image tokens are not a square merge of the {t}x{h}x{w} patch grid")
    return t, h // merge, w // merge


def image_rollout(sample: CapturedSample, *, head_reduce: str = "mean") -> np.ndarray:
    """The EOS row of the attention rollout onto the image tokens of one captured sample, on the image's
    merged patch grid: ``[h, w]`` (frames averaged). The sample needs the full pattern (`patterns="full"`),
    its `is_image` flags and `record.image_grid`."""
    pattern = _patterns(sample.pattern)
    image = np.asarray(sample.is_image, dtype=bool)
    if not image.any():
        raise ValueError("the sample has no image tokens")
    t, h, w = merged_grid(sample.record.image_grid, int(image.sum()))
    rollout = attention_rollout(pattern, head_reduce=head_reduce)[sample.eos_index]
    return rollout[image].reshape(t, h, w).mean(axis=0)
