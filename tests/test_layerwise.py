"""Layer-wise retrieval: the only informative layer wins; the last layer through the final norm scores the embedding."""

import numpy as np
import pytest
import torch

from analysis.data import build_mini_mmeb
from analysis.data.items import EvalDataset, Example, Item
from analysis.lens.eos_lens import capture_retrieval, final_norm, states_by_key
from analysis.metrics.layerwise import FinalNorm, best_layer, layer_scores, layerwise_retrieval
from analysis.metrics.retrieval import score_candidates
from analysis.models import build_tiny

Q, C, LAYERS, D, INFORMATIVE = 40, 6, 5, 16, 3


def _synthetic(seed=0):
    """Layer 0 collapsed (every state equal), layer INFORMATIVE matching, every other layer random noise."""
    rng = np.random.default_rng(seed)
    query = rng.normal(size=(Q, LAYERS, D))
    candidates = rng.normal(size=(Q, C, LAYERS, D))
    query[:, 0] = candidates[:, :, 0] = 1.0
    candidates[:, 0, INFORMATIVE] = query[:, INFORMATIVE] + 0.05 * rng.normal(size=(Q, D))
    return query, candidates


def test_the_only_informative_layer_is_the_best_and_a_collapsed_layer_is_not():
    scores = layer_scores(*_synthetic())
    assert scores["score"][INFORMATIVE] == scores["score_tie_robust"][INFORMATIVE] == 1.0
    assert scores["score"][0] == 1.0 and scores["ties"][0] == Q  # MMEB's rule rewards the collapsed layer
    assert scores["score_tie_robust"][0] == pytest.approx(1 / C)
    assert max(s for i, s in enumerate(scores["score_tie_robust"]) if i != INFORMATIVE) < 0.5
    best = best_layer(scores)
    assert best["best_layer"] == INFORMATIVE and best["gain"] == pytest.approx(1.0 - scores["score_tie_robust"][-1])
    assert best["last"] == scores["score_tie_robust"][-1] and best["best_mmeb"] == 1.0


def test_layer_0_is_never_the_best_even_when_every_block_scores_below_chance():
    scores = {"score": [1.0, 0.0, 0.1], "score_tie_robust": [0.25, 0.0, 0.1]}
    assert best_layer(scores)["best_layer"] == 2


def test_final_norm_weight_changes_what_a_layer_retrieves():
    """A weight that zeroes the informative dimensions blinds every layer: the norm is applied, not ignored."""
    query, candidates = _synthetic()
    query[:, INFORMATIVE, D // 2:] = candidates[:, 0, INFORMATIVE, D // 2:] = 0.0  # the signal in the first half
    weight = np.r_[np.zeros(D // 2), np.ones(D // 2)]
    assert layer_scores(query, candidates)["score_tie_robust"][INFORMATIVE] == 1.0
    blind = layer_scores(query, candidates, norm=FinalNorm(weight, 1e-6))
    assert blind["score_tie_robust"][INFORMATIVE] == pytest.approx(1 / C)
    x = np.array([[3.0, -4.0]])
    np.testing.assert_allclose(FinalNorm(np.array([1.0, 2.0]), 0.0)(x), [[3 / np.sqrt(12.5), -8 / np.sqrt(12.5)]])


def _datasets():
    """Two datasets over the synthetic states: 25 and 15 queries, keyed q<i> / c<i>-<j>."""
    examples = [Example(Item(f"q{i}", key=f"q{i}"), [Item(f"c{i}-{j}", key=f"c{i}-{j}") for j in range(C)])
                for i in range(Q)]
    return [EvalDataset("First", "retrieval", "ind", "hard", examples[:25]),
            EvalDataset("Second", "vqa", "ood", "random", examples[25:])]


def test_layerwise_retrieval_scores_each_dataset_and_aggregates_as_mmeb():
    query, candidates = _synthetic()
    queries = {f"q{i}": query[i] for i in range(Q)}
    cands = {f"c{i}-{j}": candidates[i, j] for i in range(Q) for j in range(C)}
    result = layerwise_retrieval(queries, cands, _datasets())
    first = layer_scores(query[:25], candidates[:25])
    second = layer_scores(query[25:], candidates[25:])
    assert result["n_layers"] == LAYERS and result["datasets"][0]["score"] == first["score"]
    np.testing.assert_allclose(result["overall_tie_robust"],
                               (np.array(first["score_tie_robust"]) + second["score_tie_robust"]) / 2)
    assert result["meta_task"]["vqa"] == second["score"] and result["split_tie_robust"]["ind"] == first[
        "score_tie_robust"]
    assert result["ties"][0] == Q and result["best_layer"] == INFORMATIVE
    del cands["c3-2"]
    with pytest.raises(KeyError, match="First/ind: no states for 1 input.*'c3-2'"):
        layerwise_retrieval(queries, cands, _datasets())


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    model, processor = build_tiny("tiny-qwen2.5-vl", seed=2)
    datasets = build_mini_mmeb(3, tasks=("ShapesObject", "ShapesT2I"), splits=("ind",))
    out = tmp_path_factory.mktemp("layerwise")
    return model, processor, datasets, out, capture_retrieval((model, processor), datasets, ["causal"], out)


def test_the_last_layer_through_the_final_norm_scores_the_embedding(captured):
    model, _, datasets, _, captures = captured
    queries, candidates = captures["causal"]
    norm = final_norm(model)
    np.testing.assert_allclose(norm(queries.eos_states(-1)), queries.embeddings(), atol=2e-5, rtol=1e-5)
    result = layerwise_retrieval(states_by_key(queries), states_by_key(candidates), datasets, norm=norm)
    embedded = dict(zip((r.key for r in candidates.records), candidates.embeddings()))
    for d, record, q in zip(datasets, result["datasets"], np.split(queries.embeddings(), len(datasets))):
        c = np.stack([[embedded[c.key] for c in ex.candidates] for ex in d.examples])
        expected = score_candidates(torch.tensor(q), torch.tensor(c))
        assert record["score"][-1] == expected["score"]
        assert record["score_tie_robust"][-1] == expected["score_tie_robust"]
    assert result["ties"][0] == sum(len(d.examples) for d in datasets)  # layer 0: one token embedding for all


def test_capture_retrieval_refuses_a_directory_holding_other_inputs(captured):
    model, processor, _, out, _ = captured
    others = build_mini_mmeb(3, seed=5, tasks=("ShapesObject", "ShapesT2I"), splits=("ind",))
    with pytest.raises(ValueError, match="holds a capture of other inputs than these datasets' queries"):
        capture_retrieval((model, processor), others, ["causal"], out)
