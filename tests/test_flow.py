import dataclasses

import numpy as np
import pytest
import torch

from analysis.lens.store import CapturedSample, SampleRecord
from analysis.masks import ROLES
from analysis.metrics.flow import (
    attention_flow,
    attention_rollout,
    knockout_effect,
    retrieval_delta,
    row_budget,
    segment_attention,
)


def _softmax_patterns(rng, layers, heads, n, allow=None):
    """Random softmax patterns [layers, heads, n, n]; disallowed keys get exactly 0."""
    logits = rng.normal(size=(layers, heads, n, n))
    if allow is not None:
        logits = np.where(allow, logits, -np.inf)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# One layer, one head, roles A A EOS B PAD; masses below are worked out by hand.
HAND_PATTERN = np.array([
    [0.5, 0.5, 0.0, 0.0, 0.0],
    [0.2, 0.6, 0.2, 0.0, 0.0],
    [0.1, 0.3, 0.2, 0.4, 0.0],
    [0.0, 0.0, 0.5, 0.5, 0.0],
    [0.0, 0.0, 0.0, 0.0, 1.0],
])
HAND_ROLES = ["A", "A", "EOS", "B", "PAD"]


def test_segment_attention_by_hand():
    seg = segment_attention(HAND_PATTERN[None], HAND_ROLES)  # [heads, q, k]: one layer
    assert seg.names == ROLES
    assert seg.mass.shape == (1, 1, 4, 4)
    expected = np.array([
        [0.9, 0.1, 0.0, 0.0],  # A   -> A, EOS, B, PAD
        [0.4, 0.2, 0.4, 0.0],  # EOS
        [0.0, 0.5, 0.5, 0.0],  # B
        [0.0, 0.0, 0.0, 1.0],  # PAD
    ])
    np.testing.assert_allclose(seg.mass[0, 0], expected, atol=1e-12)
    d = seg.as_dict()
    assert d[("EOS", "B")].shape == (1, 1) and d[("EOS", "B")][0, 0] == pytest.approx(0.4)


def test_segment_attention_image_text_split():
    segments = ["image", "text", None, None, None]
    seg = segment_attention(torch.tensor(HAND_PATTERN)[None, None], HAND_ROLES, segments=segments)
    assert seg.names == ("image", "text", *ROLES)
    d = seg.as_dict()
    assert d[("EOS", "image")][0, 0] == pytest.approx(0.1)
    assert d[("EOS", "text")][0, 0] == pytest.approx(0.3)
    assert d[("image", "text")][0, 0] == pytest.approx(0.5)
    assert d[("text", "image")][0, 0] == pytest.approx(0.2)
    assert np.isnan(d[("A", "EOS")][0, 0])  # every A position was relabelled
    assert d[("EOS", "A")][0, 0] == 0.0
    budget = seg.budget("EOS")
    assert list(budget) == ["image", "text", "EOS", "B", "PAD"]  # A has no positions left
    np.testing.assert_allclose([budget[k][0] for k in budget], [0.1, 0.3, 0.2, 0.4, 0.0], atol=1e-12)


@pytest.mark.parametrize("strict", [False, True])
def test_bridged_mask_truncates_b_to_a(strict):
    roles = ["A", "A", "A", "EOS", "B", "B", "PAD"]
    rule = {  # (query, key) -> allowed, DESIGN.md's table
        ("A", "A"): True, ("A", "EOS"): True, ("A", "B"): False,
        ("EOS", "A"): True, ("EOS", "EOS"): True, ("EOS", "B"): not strict,
        ("B", "A"): False, ("B", "EOS"): True, ("B", "B"): True,
    }
    allow = np.array([
        [(q == "PAD" and i == j) if "PAD" in (q, k) else rule[q, k] for j, k in enumerate(roles)]
        for i, q in enumerate(roles)
    ])
    p = _softmax_patterns(np.random.default_rng(0), 3, 2, len(roles), allow)
    d = segment_attention(p, roles).as_dict()
    assert np.all(d[("B", "A")] == 0.0)
    assert np.all(d[("A", "B")] == 0.0)
    assert np.all(d[("EOS", "B")] == 0.0) if strict else np.all(d[("EOS", "B")] > 0.0)
    assert np.all(d[("B", "EOS")] > 0.0)
    mass = segment_attention(p, roles).mass
    np.testing.assert_allclose(mass.sum(axis=-1), 1.0)  # every role is present: rows sum to 1


def test_segment_attention_absent_role_is_nan_and_bad_roles_raise():
    p = _softmax_patterns(np.random.default_rng(1), 2, 2, 3)
    seg = segment_attention(p, ["A", "A", "EOS"])
    assert np.isnan(seg.mass[:, :, ROLES.index("B")]).all()
    with pytest.raises(ValueError, match="unknown roles"):
        segment_attention(p, ["A", "X", "EOS"])
    with pytest.raises(ValueError, match="2 roles for 3 positions"):
        segment_attention(p, ["A", "EOS"])


def test_rollout_of_identity_is_identity():
    p = np.broadcast_to(np.eye(5), (3, 4, 5, 5))
    np.testing.assert_allclose(attention_rollout(p), np.eye(5))
    np.testing.assert_allclose(attention_rollout(p, add_residual=False), np.eye(5))


def _rollout_loops(p, head_reduce, add_residual):
    layers, heads, n, _ = p.shape
    reduce = {"mean": lambda v: sum(v) / len(v), "max": max, "min": min}[head_reduce]
    joint = [[float(i == j) for j in range(n)] for i in range(n)]
    for layer in range(layers):
        a = [[reduce([p[layer, h, i, j] for h in range(heads)]) for j in range(n)] for i in range(n)]
        if add_residual:
            a = [[a[i][j] + (i == j) for j in range(n)] for i in range(n)]
            a = [[v / sum(row) for v in row] for row in a]
        joint = [[sum(a[i][m] * joint[m][j] for m in range(n)) for j in range(n)] for i in range(n)]
    return np.array(joint)


@pytest.mark.parametrize("head_reduce", ["mean", "max", "min"])
@pytest.mark.parametrize("add_residual", [True, False])
def test_rollout_matches_loops(head_reduce, add_residual):
    p = _softmax_patterns(np.random.default_rng(2), 2, 3, 4)
    got = attention_rollout(p, head_reduce=head_reduce, add_residual=add_residual)
    np.testing.assert_allclose(got, _rollout_loops(p, head_reduce, add_residual), atol=1e-12)


def test_rollout_rows_sum_to_one_and_accepts_bf16():
    p = _softmax_patterns(np.random.default_rng(3), 4, 2, 6)
    np.testing.assert_allclose(attention_rollout(p).sum(axis=1), 1.0)
    bf16 = attention_rollout(torch.tensor(p, dtype=torch.bfloat16))
    np.testing.assert_allclose(bf16, attention_rollout(p), atol=0.05)


def test_attention_flow_by_hand():
    a1 = [[1.0, 0.0, 0.0], [0.3, 0.7, 0.0], [0.5, 0.2, 0.3]]
    a2 = [[1.0, 0.0, 0.0], [0.6, 0.4, 0.0], [0.2, 0.5, 0.3]]
    p = np.array([[a1], [a2]])  # [2 layers, 1 head, 3, 3]
    # Two layers: every path s -> i -> 2 uses its own middle node, so the max flow is
    # sum_i min(a1[i][s], a2[2][i]): s=0: .2+.3+.3, s=1: 0+.5+.2, s=2: 0+0+.3
    flow = attention_flow(p, target_position=2, add_residual=False)
    np.testing.assert_allclose(flow, [0.8, 0.7, 0.3], atol=1e-9)
    assert attention_rollout(p, add_residual=False)[2, 0] == pytest.approx(0.5)  # flow != rollout
    np.testing.assert_allclose(attention_flow(p, 2, source_positions=[2, 0], add_residual=False), [0.3, 0.8], atol=1e-9)


def test_attention_flow_with_residual_matches_two_layer_formula():
    p = _softmax_patterns(np.random.default_rng(4), 2, 2, 4)
    a = p.mean(axis=1) + np.eye(4)
    a = a / a.sum(axis=-1, keepdims=True)
    expected = [sum(min(a[0, i, s], a[1, 3, i]) for i in range(4)) for s in range(4)]
    np.testing.assert_allclose(attention_flow(p, target_position=3), expected, atol=1e-9)


def test_attention_flow_length_limit_and_bad_arguments():
    p = np.broadcast_to(np.eye(65), (1, 1, 65, 65))
    with pytest.raises(ValueError, match=r"65 positions.*max_positions=64.*attention_rollout"):
        attention_flow(p, target_position=0)
    with pytest.raises(ValueError, match="outside the sequence"):
        attention_flow(p[..., :3, :3], target_position=3)


@pytest.mark.parametrize(
    "fn", [attention_rollout, lambda p, head_reduce: attention_flow(p, 0, head_reduce=head_reduce)])
def test_invalid_head_reduce(fn):
    p = _softmax_patterns(np.random.default_rng(5), 1, 2, 3)
    with pytest.raises(ValueError, match=r"head_reduce must be one of \('mean', 'max', 'min'\), got 'median'"):
        fn(p, head_reduce="median")


def test_knockout_effect_and_retrieval_delta():
    base = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    knocked = np.array([[3.0, 0.0], [1.0, 0.0], [-1.0, -1.0]])
    effect = knockout_effect(torch.tensor(base), knocked)
    np.testing.assert_allclose(effect["cosine_distance"], [0.0, 1.0, 2.0], atol=1e-12)
    assert effect["mean"] == pytest.approx(1.0)
    delta = retrieval_delta({"p@1": 0.6, "hard": 0.25}, {"p@1": 0.5, "hard": 0.25})
    assert delta == {"p@1": pytest.approx(-0.1), "hard": 0.0}
    with pytest.raises(KeyError, match="hard"):
        retrieval_delta({"p@1": 0.6, "hard": 0.2}, {"p@1": 0.5})


def test_row_budget_sums_keys_per_segment():
    rows = np.array([[[0.5, 0.25, 0.25], [0.0, 0.5, 0.5]]])  # 1 layer, 2 heads, 3 keys
    budget = row_budget(rows, ["image", "text", "image"])
    assert budget["image"] == pytest.approx([0.625])  # heads: 0.75 and 0.5
    assert budget["text"] == pytest.approx([0.375])
    with pytest.raises(ValueError, match="3 segments"):
        row_budget(rows[0], ["image", "text", "image"])


# --- the notebooks' computations: EOS budget averaging, the rollout on the image grid, layer numbering ---

from analysis.metrics.flow import (  # noqa: E402
    attention_layer,
    eos_row_budget,
    image_rollout,
    mean_eos_budget,
    merged_grid,
)


def _captured(pattern, roles, segments, is_image=None, image_grid=None, rows=None):
    """A sample as `Capture.sample` gives it."""
    n = pattern.shape[-1]
    record = SampleRecord("k", "text", None, image_grid is not None, None, "B" in roles, image_grid=image_grid)
    return CapturedSample(roles=roles, is_image=np.zeros(n, bool) if is_image is None else np.asarray(is_image),
                          segments=segments, input_ids=np.zeros(n, np.int32), eos_index=roles.index("EOS"),
                          eos_resid=np.zeros((1, 1), np.float32), eos_final=np.zeros(1, np.float32), record=record,
                          pattern=pattern, query_positions=np.arange(n) if rows is None else np.asarray(rows))


def test_mean_eos_budget_averages_samples_and_counts_missing_segments_as_zero():
    rng = np.random.default_rng(0)
    p1 = _softmax_patterns(rng, 2, 2, 4)
    p2 = _softmax_patterns(rng, 2, 2, 3)
    s1 = _captured(p1, ["A", "A", "A", "EOS"], ["image", "text", "template", "EOS"])
    s2 = _captured(p2[:, :, [2]], ["A", "A", "EOS"], ["text", "template", "EOS"], rows=[2])  # EOS row only
    b1, b2 = eos_row_budget(s1), eos_row_budget(s2)
    np.testing.assert_allclose(b1["image"], p1[:, :, 3, 0].mean(axis=1))
    mean = mean_eos_budget([s1, s2], n_layers=2)
    assert list(mean) == ["image", "text", "template", "EOS"]
    np.testing.assert_allclose(mean["image"], b1["image"] / 2)  # absent from s2: 0 there
    np.testing.assert_allclose(mean["text"], (b1["text"] + b2["text"]) / 2)
    np.testing.assert_allclose(sum(mean.values()), 1.0)
    with pytest.raises(ValueError, match="EOS position"):
        eos_row_budget(_captured(p2[:, :, [0]], ["A", "A", "EOS"], ["text", "template", "EOS"], rows=[0]))
    with pytest.raises(ValueError, match="no samples"):
        mean_eos_budget([], n_layers=2)


def test_merged_grid_from_the_stored_patch_grid():
    assert merged_grid([1, 8, 12], 24) == (1, 4, 6)  # Qwen: 2x2 patches per token, a non-square image
    assert merged_grid([1, 4, 6], 24) == (1, 4, 6)  # no merge
    with pytest.raises(ValueError, match="recapture with this version"):
        merged_grid(None, 16)
    with pytest.raises(ValueError, match="do not tile"):
        merged_grid([1, 8, 12], 25)


def test_image_rollout_lies_on_the_real_image_grid():
    """A 2x3 image (after merging) among text: the EOS row of the rollout onto the image tokens, in row-major
    patch order, reshaped to the grid the capture stores, not a guessed square."""
    rng = np.random.default_rng(1)
    roles = ["A"] * 8 + ["EOS"]
    is_image = [False, True, True, True, True, True, True, False, False]
    pattern = _softmax_patterns(rng, 3, 2, 9)
    sample = _captured(pattern, roles, ["vision"] + ["image"] * 6 + ["text", "EOS"], is_image, image_grid=[1, 4, 6])
    grid = image_rollout(sample)
    assert grid.shape == (2, 3)
    np.testing.assert_allclose(grid.ravel(), attention_rollout(pattern)[8, 1:7])
    sample = dataclasses.replace(sample, record=dataclasses.replace(sample.record, image_grid=None))
    with pytest.raises(ValueError, match="recapture with this version"):
        image_rollout(sample)


def test_attention_layer_counts_as_every_figure():
    assert attention_layer(1, 4) == 0 and attention_layer(4, 4) == 3 and attention_layer(-1, 4) == 3
    for bad in (0, 5, -5):
        with pytest.raises(ValueError, match="layer 0 is the embeddings"):
            attention_layer(bad, 4)
