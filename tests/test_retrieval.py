"""Scoring on hand-built cases, checked against an independent hand computation."""

import math

import numpy as np
import pytest
import torch

from analysis.errors import UsageError
from analysis.metrics.retrieval import (
    DEGENERATE_SPREAD,
    NonFiniteEmbeddings,
    embedding_spread,
    is_degenerate,
    mmeb_scores,
    precision_at_1,
    score_candidates,
)

QUERY = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
CANDIDATES = np.array([
    [[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]],     # positive best (scale does not matter)
    [[1.0, 0.0], [0.0, 3.0], [1.0, 1.0]],     # a negative is best
    [[1.0, 1.0], [2.0, 2.0], [0.0, 1.0]],     # positive tied with one negative -> MMEB gives 1, robust 1/2
    [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]],     # all zero (a collapsed model): three-way tie -> 1 and 1/3
    [[0.0, 1.0], [5.0, 0.0], [1.0, 0.0]],     # two negatives tied above the positive -> 0 and 0
])


def test_precision_at_1_hand_cases():
    assert precision_at_1(QUERY, CANDIDATES) == pytest.approx(3 / 5)
    assert precision_at_1(torch.tensor(QUERY), torch.tensor(CANDIDATES)) == pytest.approx(3 / 5)


def test_precision_at_1_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\[N, C, d\]"):
        precision_at_1(np.zeros((2, 3)), np.zeros((2, 3)))


def test_score_candidates_reports_ties_and_splits_them():
    s = score_candidates(torch.tensor(QUERY), torch.tensor(CANDIDATES), dataset="hand")
    assert s["score"] == pytest.approx(3 / 5)
    assert s["score_tie_robust"] == pytest.approx((1 + 0 + 1 / 2 + 1 / 3 + 0) / 5)
    assert s["ties"] == 3


def _by_hand(query, candidates):
    """Loops over queries: cosine with math, then who shares the best."""
    hits, robust, ties = 0, 0.0, 0
    for q, cands in zip(query.tolist(), candidates.tolist()):
        def cos(c):
            nq, nc = math.sqrt(sum(x * x for x in q)), math.sqrt(sum(x * x for x in c))
            return sum(a * b for a, b in zip(q, c)) / (nq * nc) if nq and nc else 0.0
        sims = [cos(c) for c in cands]
        best = max(sims)
        shared = [i for i, s in enumerate(sims) if abs(s - best) < 1e-9]
        hits += sims.index(best) == 0
        robust += (0 in shared) / len(shared)
        ties += len(shared) > 1
    n = len(query)
    return hits / n, robust / n, ties


def test_score_candidates_matches_a_hand_computation_with_collapsed_queries():
    rng = np.random.default_rng(0)
    query = rng.normal(size=(40, 6))
    candidates = rng.normal(size=(40, 5, 6))
    candidates[::4] = candidates[::4, :1]   # every 4th query: all candidates identical (a tie with the positive)
    candidates[1::4, 2] = candidates[1::4, 3]  # two identical negatives (tied; counts when they are the best)
    s = score_candidates(query, candidates)
    assert (s["score"], s["score_tie_robust"], s["ties"]) == pytest.approx(_by_hand(query, candidates))
    assert s["ties"] >= 10 and s["score_tie_robust"] < s["score"]


@pytest.mark.parametrize("where", ["query", "candidate"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_embeddings_raise_naming_the_dataset(where, bad):
    query, candidates = QUERY.copy(), CANDIDATES.copy()
    (query if where == "query" else candidates)[1, 0] = bad
    with pytest.raises(NonFiniteEmbeddings, match=f"ShapesI2T/ind of ckpt: {where} embeddings hold NaN or inf"):
        score_candidates(query, candidates, dataset="ShapesI2T/ind of ckpt")
    assert issubclass(NonFiniteEmbeddings, UsageError)


def test_embedding_spread_by_hand():
    d = 8
    basis = np.eye(d)  # mean = 1/d everywhere: each |e_i - mean|^2 = 1 - 2/d + 1/d
    assert embedding_spread(basis) == pytest.approx(math.sqrt(1 - 1 / d))
    assert embedding_spread(3 * basis) == pytest.approx(math.sqrt(1 - 1 / d))  # scale-free
    two = np.array([[1.0, 0.0], [0.0, 1.0]])  # mean (.5, .5): each distance^2 = .5
    assert embedding_spread(torch.tensor(two)) == pytest.approx(math.sqrt(0.5))
    same = np.tile(np.arange(1.0, 5.0), (10, 1))
    assert embedding_spread(same) == pytest.approx(0.0, abs=1e-12) and is_degenerate(embedding_spread(same))
    assert embedding_spread(np.zeros((10, 4))) == 0.0  # a zeroed final norm
    nearly = same + 1e-5 * np.random.default_rng(0).normal(size=same.shape)
    assert is_degenerate(embedding_spread(nearly)) and not is_degenerate(embedding_spread(basis))
    assert DEGENERATE_SPREAD < math.sqrt(0.5)


def test_mmeb_scores_aggregates_like_mmeb():
    records = [
        dict(dataset="a", meta_task="vqa", split="ind", negatives="hard", score=0.2, score_tie_robust=0.1, ties=3),
        dict(dataset="b", meta_task="vqa", split="ood", negatives="hard", score=0.4, score_tie_robust=0.4, ties=0),
        dict(dataset="c", meta_task="retrieval", split="ind", negatives="random", score=0.9, score_tie_robust=0.6,
             ties=2),
    ]
    s = mmeb_scores(records)
    assert s["overall"] == pytest.approx(0.5) and s["n_datasets"] == 3
    assert s["meta_task"] == pytest.approx({"retrieval": 0.9, "vqa": 0.3})
    assert s["split"] == pytest.approx({"ind": 0.55, "ood": 0.4})
    assert s["negatives"] == pytest.approx({"hard": 0.3, "random": 0.9})
    assert s["overall_tie_robust"] == pytest.approx(1.1 / 3) and s["ties"] == 5
    assert s["split_tie_robust"] == pytest.approx({"ind": 0.35, "ood": 0.4})
    old = mmeb_scores([{k: v for k, v in r.items() if k not in ("score_tie_robust", "ties")} for r in records])
    assert "overall_tie_robust" not in old and "ties" not in old and old["overall"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        mmeb_scores([])
