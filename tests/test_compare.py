"""The compare notebook's pair and retrieval deltas (`analysis.compare`), on a constructed study folder."""

import json

import numpy as np
import pytest

from analysis.compare import Side, cka_metrics, resolve_pair, retrieval_deltas, study_sides
from analysis.errors import UsageError


def _study(root, compare):
    cells = [{"name": n, "mask_type": "causal", "recon_weight": 0.0} for n in ("bridged-l0.5", "causal", "bridged-l1")]
    (root / "study.json").write_text(json.dumps({"cells": cells, "seeds": [0, 1], "compare": compare}))
    for cell in ("bridged-l0.5", "causal", "bridged-l1"):
        for seed in (0, 1):
            run = f"{cell}-s{seed}"
            (root / "checkpoints" / run).mkdir(parents=True)
            scores = {"datasets": [{"dataset": "A/ind", "score": 0.5 + seed / 10, "score_tie_robust": 0.4, "ties": 1},
                                   {"dataset": "B/ind", "score": 0.25, "score_tie_robust": 0.25, "ties": 0}],
                      "embedding_spread": 1.0, "degenerate": False}
            (root / "checkpoints" / run / "scores.json").write_text(json.dumps(scores))
            (root / "captures" / run).mkdir(parents=True)
            (root / "captures" / run / "stamp.json").write_text("{}")
    return root


def test_the_study_pair_is_the_configured_one_never_two_seeds_of_one_cell(tmp_path):
    root = _study(tmp_path, ["causal", "bridged-l1"])
    a, b = resolve_pair(str(root))
    assert (a.name, b.name) == ("causal-s0", "bridged-l1-s0")
    assert a.capture == root / "captures" / "causal-s0" / "probe" and b.flow.name == "flow"
    sides = study_sides(str(root), a, b)
    assert list(sides)[:2] == ["causal-s0", "bridged-l1-s0"] and len(sides) == 6  # the pair first, then every run


def test_explicit_captures_win_and_nothing_given_is_an_error(tmp_path):
    a, b = resolve_pair(str(_study(tmp_path, ["causal", "bridged-l1"])), capture_a="/x/run-a/probe",
                        capture_b="/x/run-b/probe", flow_a="/x/run-a/flow", flow_b="/x/run-b/flow")
    assert (a.name, b.name) == ("run-a", "run-b")
    with pytest.raises(UsageError, match="study_dir"):
        resolve_pair()


def test_retrieval_deltas_go_through_retrieval_delta(tmp_path):
    root = _study(tmp_path, ["causal", "bridged-l1"])
    sides = (Side("a", root, root, root / "checkpoints" / "causal-s0"),
             Side("b", root, root, root / "checkpoints" / "causal-s1"))
    deltas = retrieval_deltas(sides)
    assert deltas["delta"] == pytest.approx({"A/ind": 0.1, "B/ind": 0.0})
    assert deltas["delta_tie_robust"] == pytest.approx({"A/ind": 0.0, "B/ind": 0.0})
    assert deltas["names"] == ("a", "b") and deltas["degenerate"] == []


def test_cka_metrics_write_undefined_cells_as_null():
    m = np.array([[np.nan, np.nan], [np.nan, 0.9]])
    assert cka_metrics(m) == {"cka": [[None, None], [None, 0.9]], "cka_diagonal": [None, 0.9]}
