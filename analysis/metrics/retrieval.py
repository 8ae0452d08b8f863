"""MMEB-style scoring: Precision@1 against per-query candidate lists, and score aggregation."""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Mapping

import numpy as np

from analysis.metrics.arrays import as_numpy


def cosine_scores(query, candidates) -> np.ndarray:
    """Cosine similarity of query `[N, d]` to its candidates `[N, C, d]` -> `[N, C]`."""
    q, c = as_numpy(query), as_numpy(candidates)
    if q.ndim != 2 or c.ndim != 3 or c.shape[0] != q.shape[0] or c.shape[2] != q.shape[1]:
        raise ValueError(f"expected query [N, d] and candidates [N, C, d]; got {q.shape} and {c.shape}")
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    c = c / np.maximum(np.linalg.norm(c, axis=-1, keepdims=True), 1e-12)
    return np.einsum("nd,ncd->nc", q, c)


def precision_at_1(query, candidates) -> float:
    """Fraction of queries whose most similar candidate is index 0 (ties go to the first index)."""
    return float(np.mean(np.argmax(cosine_scores(query, candidates), axis=1) == 0))


def mmeb_scores(records: Iterable[Mapping], groups: tuple[str, ...] = ("meta_task", "split", "negatives")) -> dict:
    """Aggregate per-dataset scores.

    `records`: one mapping per dataset with `score` and the keys named in `groups`.
    Returns `{"overall": mean over datasets, "n_datasets": n, <group>: {value: mean}}`.
    """
    records = list(records)
    if not records:
        raise ValueError("mmeb_scores needs at least one dataset record")
    out: dict = {"overall": float(np.mean([r["score"] for r in records])), "n_datasets": len(records)}
    for g in groups:
        buckets: dict[str, list[float]] = defaultdict(list)
        for r in records:
            if g in r:
                buckets[r[g]].append(r["score"])
        out[g] = {k: float(np.mean(v)) for k, v in sorted(buckets.items())}
    return out
