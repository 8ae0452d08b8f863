"""MMEB-style scoring that cannot be fooled: Precision@1 with ties reported, and score aggregation.

MMEB puts the positive at index 0 and takes numpy's argmax, so ties go to the positive: a collapsed
embedder (every input the same vector, or zero) scores 1.0. `score_candidates` keeps that MMEB-rule
P@1 for comparability and reports beside it the number of tied queries and a tie-robust P@1 (a query
whose maximum is shared by k candidates, the positive among them, earns 1/k); NaN / inf embeddings
raise. `embedding_spread` measures how far inputs' embeddings differ at all (`DEGENERATE_SPREAD`).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Mapping

import numpy as np

from analysis.errors import UsageError
from analysis.metrics.arrays import as_numpy

TIE_TOLERANCE = 1e-6  # cosines closer than this to a query's best are tied (float32 rounding is ~1e-7)
DEGENERATE_SPREAD = 1e-2  # `embedding_spread` below this: every input embeds to nearly the same vector


class NonFiniteEmbeddings(UsageError):
    """Embeddings hold NaN or inf: no score is meaningful."""


def cosine_scores(query, candidates) -> np.ndarray:
    """Cosine similarity of query `[N, d]` to its candidates `[N, C, d]` -> `[N, C]` (a zero vector scores 0)."""
    q, c = as_numpy(query), as_numpy(candidates)
    if q.ndim != 2 or c.ndim != 3 or c.shape[0] != q.shape[0] or c.shape[2] != q.shape[1]:
        raise ValueError(f"expected query [N, d] and candidates [N, C, d]; got {q.shape} and {c.shape}")
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    c = c / np.maximum(np.linalg.norm(c, axis=-1, keepdims=True), 1e-12)
    return np.einsum("nd,ncd->nc", q, c)


def precision_at_1(query, candidates) -> float:
    """Fraction of queries whose most similar candidate is index 0 (ties go to the first index)."""
    return float(np.mean(np.argmax(cosine_scores(query, candidates), axis=1) == 0))


def score_candidates(query, candidates, *, dataset: str = "the dataset") -> dict:
    """Score query `[Q, d]` against its candidates `[Q, C, d]` (positive at index 0).

    Returns `{"score": MMEB-rule P@1, "score_tie_robust": P@1 with ties split evenly, "ties": number of
    queries whose best cosine is shared by two or more candidates}`. Raises `NonFiniteEmbeddings`, naming
    `dataset`, when any vector holds NaN or inf.
    """
    q, c = as_numpy(query), as_numpy(candidates)
    bad = [name for name, x in (("query", q), ("candidate", c)) if not np.isfinite(x).all()]
    if bad:
        raise NonFiniteEmbeddings(f"{dataset}: {' and '.join(bad)} embeddings hold NaN or inf, so no score is "
                                  f"meaningful; the model's weights or its forward pass overflow (check the "
                                  f"checkpoint, or load it in float32)")
    sims = cosine_scores(q, c)
    best = sims.max(axis=1, keepdims=True)
    tied = sims >= best - TIE_TOLERANCE  # [Q, C]: the candidates sharing each query's best
    k = tied.sum(axis=1)
    return {"score": float(np.mean(np.argmax(sims, axis=1) == 0)),
            "score_tie_robust": float(np.mean(tied[:, 0] / k)),
            "ties": int(np.sum(k > 1))}


def embedding_spread(vectors) -> float:
    """How much inputs' embeddings `[N, d]` differ: the RMS distance of the L2-normalised vectors to their mean.

    0 when every input embeds to the same direction (or to zero); about 1 for directions spread over the
    sphere. Below `DEGENERATE_SPREAD` the embedder is collapsed and P@1 means nothing.
    """
    v = as_numpy(vectors).astype(np.float64)
    if v.ndim != 2 or len(v) == 0:
        raise ValueError(f"expected vectors [N, d] with N >= 1; got {v.shape}")
    v = v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
    return float(np.sqrt(np.mean(np.sum((v - v.mean(axis=0)) ** 2, axis=-1))))


def is_degenerate(spread: float) -> bool:
    """True when an `embedding_spread` says the embeddings have collapsed."""
    return spread < DEGENERATE_SPREAD


def mmeb_scores(records: Iterable[Mapping], *, groups: tuple[str, ...] = ("meta_task", "split", "negatives")) -> dict:
    """Aggregate per-dataset scores as MMEB does (means over datasets), the tie-robust ones beside them.

    `records`: one mapping per dataset with `score` (and, from `score_candidates`, `score_tie_robust` and
    `ties`) and the keys named in `groups`. Returns `{"overall", "n_datasets", <group>: {value: mean}}`
    and, when every record has them, `"overall_tie_robust"`, `"<group>_tie_robust": {value: mean}` and
    `"ties"` (tied queries summed over datasets).
    """
    records = list(records)
    if not records:
        raise ValueError("mmeb_scores needs at least one dataset record")
    keys = [("score", "")]
    if all("score_tie_robust" in r and "ties" in r for r in records):
        keys.append(("score_tie_robust", "_tie_robust"))
    out: dict = {"n_datasets": len(records)}
    for key, suffix in keys:
        out[f"overall{suffix}"] = float(np.mean([r[key] for r in records]))
        for g in groups:
            buckets: dict[str, list[float]] = defaultdict(list)
            for r in records:
                if g in r:
                    buckets[r[g]].append(r[key])
            out[f"{g}{suffix}"] = {k: float(np.mean(v)) for k, v in sorted(buckets.items())}
    if len(keys) > 1:
        out["ties"] = int(sum(r["ties"] for r in records))
    return out
