"""Scoring on hand-built cases."""

import numpy as np
import pytest
import torch

from analysis.metrics.retrieval import mmeb_scores, precision_at_1


def test_precision_at_1_hand_cases():
    query = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    candidates = np.array([
        [[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]],     # positive best (scale does not matter)
        [[1.0, 0.0], [0.0, 3.0], [1.0, 1.0]],     # a negative is best
        [[1.0, 1.0], [2.0, 2.0], [0.0, 1.0]],     # tie with the positive -> first index wins
    ])
    assert precision_at_1(query, candidates) == pytest.approx(2 / 3)
    assert precision_at_1(torch.tensor(query), torch.tensor(candidates)) == pytest.approx(2 / 3)


def test_precision_at_1_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\[N, C, d\]"):
        precision_at_1(np.zeros((2, 3)), np.zeros((2, 3)))


def test_mmeb_scores_aggregates_like_mmeb():
    records = [
        dict(dataset="a", meta_task="vqa", split="ind", negatives="hard", score=0.2),
        dict(dataset="b", meta_task="vqa", split="ood", negatives="hard", score=0.4),
        dict(dataset="c", meta_task="retrieval", split="ind", negatives="random", score=0.9),
    ]
    s = mmeb_scores(records)
    assert s["overall"] == pytest.approx(0.5)
    assert s["meta_task"] == pytest.approx({"retrieval": 0.9, "vqa": 0.3})
    assert s["split"] == pytest.approx({"ind": 0.55, "ood": 0.4})
    assert s["negatives"] == pytest.approx({"hard": 0.3, "random": 0.9})
    with pytest.raises(ValueError):
        mmeb_scores([])
