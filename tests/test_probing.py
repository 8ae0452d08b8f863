from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError

from analysis.metrics.probing import LayerProbe, control_task, label_in_text, mean_pool, probe_attributes

COLOURS = np.array(["red", "green", "blue"])


def _planted(n=240, d=8, seed=0):
    """States [n, 3 layers, d]: only layer 1 carries the colour (one direction per class)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    states = rng.normal(size=(n, 3, d))
    states[np.arange(n), 1, y] += 3.0
    return states, COLOURS[y].tolist()


def test_planted_feature_found_in_its_layer_only():
    states, labels = _planted()
    res = LayerProbe(cv=5).fit(torch.tensor(states, dtype=torch.float32), labels).score()
    assert res["accuracy"][1] > 0.9
    assert res["accuracy"][0] < 0.55 and res["accuracy"][2] < 0.55  # chance is about 1/3
    # _planted draws labels with default_rng(0), as a dataset might: the control must not copy them
    assert np.all((res["control"] > 0.15) & (res["control"] < 0.5))
    np.testing.assert_allclose(res["selectivity"], res["accuracy"] - res["control"])
    assert res["selectivity"][1] > 0.45
    assert res["chance"] == pytest.approx(max(Counter(labels).values()) / len(labels))
    assert res["accuracy_std"].shape == (3,) and np.all(res["accuracy_std"] >= 0)


def test_without_control_the_control_results_are_nan():
    states, labels = _planted(n=100)
    res = LayerProbe(cv=3, control=False).fit(states, labels).score()
    assert np.isnan(res["control"]).all() and np.isnan(res["selectivity"]).all()
    assert res["accuracy"][1] > 0.85


def _repeated_types(n_types=60, repeats=4, d=200, seed=0):
    """Every type appears `repeats` times with identical states; labels are random per type,
    so only memorising a type seen in training can predict them."""
    rng = np.random.default_rng(seed)
    types = np.repeat(np.arange(n_types), repeats)
    states = rng.normal(size=(n_types, 1, d))[types]
    labels = rng.integers(0, 3, size=n_types)[types]
    return states, labels, types


def test_grouped_folds_keep_types_out_of_test():
    states, labels, types = _repeated_types()
    leaky = LayerProbe(cv=4).fit(states, labels).score()  # no groups given: copies of a test sample are in train
    grouped = LayerProbe(cv=4).fit(states, labels, groups=types).score()
    assert leaky["accuracy"][0] > 0.9
    assert grouped["accuracy"][0] < 0.6
    assert grouped["control"][0] < 0.6  # unseen types: the control task sits at chance


def test_control_task_measures_memorisation_of_types_that_recur_across_inputs():
    states, labels, types = _repeated_types()
    res = LayerProbe(cv=4).fit(states, labels, types=torch.tensor(types)).score()
    assert res["control"][0] > 0.9  # Hewitt & Liang: the probe memorises type -> control label
    assert abs(res["selectivity"][0]) < 0.1


def test_control_labels_are_per_type_and_follow_the_empirical_distribution():
    labels = ["a"] * 18000 + ["b"] * 2000
    control = control_task(labels, range(20000), seed=0)
    assert abs(np.mean(control == 0) - 0.9) < 0.01  # "a" (code 0) as often as in the labels, not 1/2
    types = np.repeat(np.arange(50), 4)
    per_type = control_task(np.arange(200) % 3, types, seed=1).reshape(50, 4)
    assert (per_type == per_type[:, :1]).all() and len(np.unique(per_type)) == 3
    assert np.array_equal(control_task(labels, range(20000), seed=0), control)


def test_selectivity_equals_a_hand_computation():
    """4 types x 6 samples; 3 inputs (groups), each holding 2 samples of every type, so each of the 3
    folds tests 2 samples per type after training on 4. Labels: types 0-2 "a", type 3 "b".
    Layer 0 = one-hot type: task and control labels (one per type) are both read off it -> 1, 1.
    Layer 1 = zeros: the probe predicts each training fold's majority: task 6/8 "a" -> 0.75; control:
    the majority of the 4 types' control labels, k of 4 -> max(k, 4 - k) / 4."""
    types = np.repeat(np.arange(4), 6)
    groups = np.tile(np.arange(3), 8)
    labels = np.where(types < 3, "a", "b")
    states = np.zeros((24, 2, 4))
    states[np.arange(24), 0, types] = 1.0
    probe = LayerProbe(cv=3, seed=0).fit(states, labels, groups=groups, types=types)
    control = probe.control_labels_
    assert np.array_equal(control, control_task(labels, types, seed=0))
    k = int(np.sum(control[::6] == 0))  # types whose control label is "a"
    assert k != 2  # no tie in layer 1 (a tie would leave the prediction to the solver's rounding)
    res = probe.score()
    np.testing.assert_allclose(res["accuracy"], [1.0, 0.75])
    np.testing.assert_allclose(res["control"], [1.0, max(k, 4 - k) / 4])
    np.testing.assert_allclose(res["selectivity"], [0.0, 0.75 - max(k, 4 - k) / 4])


def test_label_in_text_matches_whole_words():
    texts = ["what is at the top left ?", "select the red circle .", "a tired cat", "describe the image .", "x"]
    labels = ["top left", "red", "red", "red", None]
    assert label_in_text(labels, texts).tolist() == [True, True, False, False, False]
    with pytest.raises(ValueError, match="2 labels but 1 texts"):
        label_in_text(["a", "b"], ["a"])


def test_probe_attributes_skips_unprobeable_attributes():
    states, colours = _planted(n=120)
    sizes = ["small"] * 120
    counts = ["one"] * 118 + ["two"] * 2
    res = probe_attributes(states, {"colour": colours, "size": sizes, "count": counts}, cv=3)
    assert res["colour"]["accuracy"][1] > 0.85
    assert res["size"] == {"skipped": "fewer than 2 classes"}
    assert res["count"] == {"skipped": "smallest class has 2 samples, fewer than cv=3 folds"}
    digits_only = [None] * 60 + colours[60:]  # samples without the label are left out
    partial = probe_attributes(states, {"colour": digits_only}, cv=3)["colour"]
    assert partial["accuracy"][1] > 0.85
    assert probe_attributes(states, {"digit": [None] * 120}, cv=3)["digit"] == {"skipped": "no sample has this label"}
    few_inputs = probe_attributes(states, {"colour": colours}, groups=[i % 2 for i in range(120)], cv=3)
    assert few_inputs["colour"] == {"skipped": "2 distinct inputs, fewer than cv=3 folds"}


def test_fit_errors_and_not_fitted():
    states, labels = _planted(n=30)
    with pytest.raises(NotFittedError):
        LayerProbe().score()
    with pytest.raises(ValueError, match="fewer than 2 classes"):
        LayerProbe().fit(states, ["red"] * 30)
    with pytest.raises(ValueError, match=r"\[N, layers, d\]"):
        LayerProbe().fit(states[:, 0], labels)


def test_mean_pool():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 4))
    roles = ["A", "A", "EOS", "B", "PAD"]
    np.testing.assert_allclose(mean_pool(torch.tensor(x), roles), x[:, :2].mean(axis=1))
    np.testing.assert_allclose(mean_pool(x, roles, role="B"), x[:, 3])
    ragged = [x[0, :3], x[1]]
    got = mean_pool(ragged, [["A", "EOS", "A"], roles])
    np.testing.assert_allclose(got, np.stack([x[0, [0, 2]].mean(axis=0), x[1, :2].mean(axis=0)]))
    with pytest.raises(ValueError, match="sample 0 has no 'B' positions"):
        mean_pool(ragged, [["A", "EOS", "A"], roles], role="B")


def _realistic(kind: str, classes: int, n=240, layers=4, d=64, seed=0):
    """States [n, layers, d] whose later layers carry the class: far apart ("separable") or a weak signal in the
    noise ("noisy"); groups of two samples per input."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    rng.shuffle(y)
    centres = rng.normal(size=(classes, d))
    strength = {"separable": 2.0, "noisy": 0.25}[kind] * np.linspace(0.0, 1.0, layers)
    states = rng.normal(size=(n, layers, d)) + strength[None, :, None] * centres[y][:, None]
    return states, y, np.arange(n) // 2


@pytest.mark.parametrize("kind,classes,C", [("separable", 10, 1.0), ("noisy", 10, 1.0), ("separable", 3, 1.0),
                                            ("noisy", 2, 1.0), ("noisy", 2, 0.05)])
def test_batched_probes_match_scikit_learn_on_the_same_folds(kind, classes, C):
    """The batched L-BFGS solve against one scikit-learn LogisticRegression (StandardScaler pipeline) per layer x
    fold x target, task and control: mean accuracy per layer within 0.01. The binary cases check scikit-learn's
    binomial C (its penalty is not the two-class multinomial one)."""
    from analysis.metrics.probing import _cv_accuracy, _cv_accuracy_sklearn

    states, y, groups = _realistic(kind, classes)
    tasks = LayerProbe(cv=5, C=C)._tasks(np.arange(len(y)), y, groups, None)
    batched = _cv_accuracy(states, tasks, C, 200)
    reference = _cv_accuracy_sklearn(states, tasks, C, 200)
    for ours, theirs in zip(batched, reference):
        assert ours.shape == theirs.shape == (4, 5)
        np.testing.assert_allclose(ours.mean(axis=1), theirs.mean(axis=1), atol=0.01)
    if kind == "separable":
        assert reference[0].mean(axis=1)[-1] > 0.95  # the case is what it says
    else:
        assert 0.2 < reference[0].mean(axis=1)[-1] < 0.95


def test_probe_attributes_gives_what_one_probe_per_attribute_gives():
    """Attributes with different class counts and missing labels, solved together, against `LayerProbe.fit` on
    each attribute's own samples."""
    states, y, groups = _realistic("noisy", 4, layers=3, d=16)
    colour = [COLOURS[v % 3] if v < 3 else None for v in y]
    attributes = {"four": y.tolist(), "colour": colour, "parity": (y % 2).tolist()}
    together = probe_attributes(states, attributes, groups=groups, cv=4)
    for name, labels in attributes.items():
        keep = np.array([v is not None for v in labels])
        alone = LayerProbe(cv=4).fit(states[keep], [v for v in labels if v is not None], groups[keep]).score()
        assert together[name]["chance"] == alone["chance"]
        for key in ("accuracy", "control", "selectivity"):
            np.testing.assert_allclose(together[name][key], alone[key], atol=0.01)


def test_layers_solved_in_chunks_give_the_same_probes(monkeypatch):
    import analysis.metrics.probing as probing

    states, y, groups = _realistic("noisy", 3, layers=3, d=16)
    whole = LayerProbe(cv=3).fit(states, y, groups).score()
    monkeypatch.setattr(probing, "_SOLVE_SIZE", 1)  # one layer per solve
    chunked = LayerProbe(cv=3).fit(states, y, groups).score()
    for key in ("accuracy", "control"):
        np.testing.assert_allclose(chunked[key], whole[key], atol=0.01)
