"""Layer-wise retrieval: MMEB Precision@1 of the EOS state read at every layer (Skean et al., 2025).

A capture keeps the EOS residual stream raw (`eos_resid`: embeddings, then after each block, no final
norm); only the last layer's state passes the model's final RMSNorm on the way to the embedding. Here
every layer is read the way the model reads its last one: through the final norm (`FinalNorm`: the
checkpoint's weight and eps, `analysis.lens.eos_lens.final_norm`), then cosine. So the last layer scores
exactly what the embedding scores (for token-reading presets), and no layer is judged through the few
outlier dimensions that dominate a raw residual's cosine but that the norm weight scales down.
`norm=None` scores the raw residuals instead.

Scores per layer are `analysis.metrics.retrieval.score_candidates`: the MMEB-rule P@1 beside the
tie-robust one. The best layer is chosen by the tie-robust P@1: at layer 0 every EOS state is the same
token embedding, a collapsed embedder that the MMEB rule would score 1.0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from analysis.metrics.arrays import as_numpy
from analysis.metrics.retrieval import mmeb_scores, score_candidates


@dataclass(frozen=True)
class FinalNorm:
    """A model's final RMSNorm: `x / sqrt(mean(x**2) + eps) * weight` over the last axis (`weight` `[d]`)."""

    weight: np.ndarray
    eps: float

    def __call__(self, x) -> np.ndarray:
        x = as_numpy(x)
        return x / np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True) + self.eps) * as_numpy(self.weight)


def layer_scores(query, candidates, *, norm: FinalNorm | None = None, dataset: str = "the dataset") -> dict:
    """P@1 at every layer of query states `[Q, layers, d]` against candidate states `[Q, C, layers, d]`
    (positive at index 0): `{"score", "score_tie_robust", "ties"}`, each a list over layers."""
    q, c = as_numpy(query), as_numpy(candidates)
    if q.ndim != 3 or c.ndim != 4 or c.shape[0] != q.shape[0] or c.shape[2:] != q.shape[1:]:
        raise ValueError(f"expected query [Q, layers, d] and candidates [Q, C, layers, d]; got {q.shape} and {c.shape}")
    if norm is not None:
        q, c = norm(q), norm(c)
    per_layer = [score_candidates(q[:, layer], c[:, :, layer], dataset=f"{dataset}, layer {layer}")
                 for layer in range(q.shape[1])]
    return {key: [s[key] for s in per_layer] for key in ("score", "score_tie_robust", "ties")}


def best_layer(scores: Mapping) -> dict:
    """The block output with the best tie-robust P@1 (the earliest among equals) against the last:
    `{"best_layer", "best", "last", "gain"}` (on `score_tie_robust`), and the MMEB-rule `best_mmeb`, `last_mmeb`.

    Layer 0 (the EOS token's own embedding, one vector for every input) is never the best layer: it holds no
    information about the input, whatever a near-chance model scores elsewhere.
    """
    robust = np.asarray(scores["score_tie_robust"], dtype=float)
    layer = 1 + int(np.argmax(robust[1:])) if len(robust) > 1 else 0
    return {"best_layer": layer, "best": float(robust[layer]), "last": float(robust[-1]),
            "gain": float(robust[layer] - robust[-1]), "best_mmeb": float(scores["score"][layer]),
            "last_mmeb": float(scores["score"][-1])}


def layerwise_retrieval(queries: Mapping[str, np.ndarray], candidates: Mapping[str, np.ndarray], datasets: Sequence,
                        *, norm: FinalNorm | None = None) -> dict:
    """MMEB scores at every layer over `datasets` (`EvalDataset`s: each example's query and candidates, by key).

    queries / candidates: `{item key: states [layers, d]}` (e.g. a capture's `eos_states()` by record key).
    Returns `{"n_layers", "datasets": [{dataset, meta_task, split, negatives, n, score, score_tie_robust, ties}],
    **mmeb_scores(...) per layer, **best_layer(...)}`: every score a list over layers (a group a
    `{value: list}`).
    """
    if not datasets:
        raise ValueError("layerwise_retrieval needs at least one dataset")
    records = []
    for d in datasets:
        missing = [ex.query.key for ex in d.examples if ex.query.key not in queries]
        missing += [c.key for ex in d.examples for c in ex.candidates if c.key not in candidates]
        if missing:
            raise KeyError(f"{d.key}: no states for {len(missing)} input(s), e.g. {missing[0]!r}: capture the "
                           f"queries and the candidates of these datasets")
        q = np.stack([queries[ex.query.key] for ex in d.examples])
        c = np.stack([np.stack([candidates[c.key] for c in ex.candidates]) for ex in d.examples])
        records.append(dict(dataset=d.key, meta_task=d.meta_task, split=d.split, negatives=d.negatives,
                            n=len(d.examples), **layer_scores(q, c, norm=norm, dataset=d.key)))
    n_layers = len(records[0]["score"])
    per_layer = [mmeb_scores([{**r, **{k: r[k][layer] for k in ("score", "score_tie_robust", "ties")}}
                              for r in records]) for layer in range(n_layers)]
    out = {"n_layers": n_layers, "datasets": records}
    for key, value in per_layer[0].items():
        if isinstance(value, dict):
            out[key] = {group: [s[key][group] for s in per_layer] for group in value}
        elif key != "n_datasets":
            out[key] = [s[key] for s in per_layer]
    return {**out, **best_layer({"score": out["overall"], "score_tie_robust": out["overall_tie_robust"]})}
