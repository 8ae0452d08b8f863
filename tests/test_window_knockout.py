"""Cross-modal flow by layer window: a window over every layer is the full cut; a window cuts its own layers."""

import pytest

from analysis.data import build_mini_mmeb
from analysis.evaluate import evaluate
from analysis.lens.knockout import FLOWS, evaluate_knockout, layer_windows, window_knockout
from analysis.models import build_tiny


@pytest.fixture(scope="module")
def setting():
    model, processor = build_tiny("tiny-qwen2.5-vl", seed=7)
    return model, processor, build_mini_mmeb(2, tasks=("ShapesObject", "ShapesT2I"), splits=("ind",))


def test_layer_windows():
    assert layer_windows(4, 2) == [[0, 1], [1, 2], [2, 3]]
    assert layer_windows(5, 2, stride=2) == [[0, 1], [2, 3], [3, 4]]  # the last window ends at the last layer
    assert layer_windows(4, 4) == [[0, 1, 2, 3]]
    with pytest.raises(ValueError, match="need 1 <= width <= 4 layers"):
        layer_windows(4, 5)


def test_a_window_over_every_layer_is_the_full_cut(setting):
    model, processor, datasets = setting
    sweep = window_knockout(model, processor, datasets, mask_type="bidirectional", width=4)
    assert sweep["windows"] == [[0, 1, 2, 3]] and list(sweep["flows"]) == list(FLOWS)
    for name, edges in FLOWS.items():
        full = evaluate_knockout(model, processor, datasets, mask_type="bidirectional", edges=edges)
        flow = sweep["flows"][name]
        assert flow["score"] == [full["overall"]] and flow["score_tie_robust"] == [full["overall_tie_robust"]]
        assert flow["all_layers"] == {"overall": full["overall"], "overall_tie_robust": full["overall_tie_robust"]}


def test_each_window_cuts_its_layers_and_the_drop_is_from_the_intact_model(setting):
    model, processor, datasets = setting
    flows = {"image->EOS": FLOWS["image->EOS"]}
    sweep = window_knockout(model, processor, datasets, flows=flows, width=2, stride=2, preset="vlm2vec")
    assert sweep["mask_type"] == "causal" and sweep["windows"] == [[0, 1], [2, 3]]  # vlm2vec's own attention
    intact = evaluate(model, processor, datasets, preset="vlm2vec")
    assert sweep["base"] == {"overall": intact["overall"], "overall_tie_robust": intact["overall_tie_robust"]}
    flow = sweep["flows"]["image->EOS"]
    for window, score, drop in zip(sweep["windows"], flow["score_tie_robust"], flow["drop_tie_robust"]):
        cut = evaluate_knockout(model, processor, datasets, mask_type="causal", edges=flows["image->EOS"],
                                layers=window, preset="vlm2vec")
        assert score == cut["overall_tie_robust"]
        assert drop == pytest.approx(intact["overall_tie_robust"] - score)
