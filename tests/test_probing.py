from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError

from analysis.metrics.probing import LayerProbe, mean_pool, probe_attributes

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
    leaky = LayerProbe(cv=4).fit(states, labels).score()  # copies of a test sample are in train
    grouped = LayerProbe(cv=4, grouped=True).fit(states, labels, types=types).score()
    assert leaky["accuracy"][0] > 0.9
    assert grouped["accuracy"][0] < 0.6
    assert grouped["control"][0] < 0.6  # unseen types: the control task sits at chance


def test_ungrouped_control_task_measures_memorisation():
    states, labels, types = _repeated_types()
    res = LayerProbe(cv=4, grouped=False).fit(states, labels, types=torch.tensor(types)).score()
    assert res["control"][0] > 0.9  # Hewitt & Liang: the probe memorises type -> control label
    assert abs(res["selectivity"][0]) < 0.1


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
    few_types = probe_attributes(states, {"colour": colours}, types=[i % 2 for i in range(120)], cv=3, grouped=True)
    assert few_types["colour"] == {"skipped": "2 distinct types, fewer than cv=3 folds"}


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
