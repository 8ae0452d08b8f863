import os

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from analysis import plots

ROLES = ["A", "A", "A", "EOS", "B", "B", "PAD"]


def _assert_written(stem):
    png, svg = stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".svg")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    assert b"<svg" in svg.read_bytes()[:2000]
    assert not [p for p in stem.parent.iterdir() if p.name.endswith(".tmp")]


def _pattern(n, seed=0):
    e = np.exp(np.random.default_rng(seed).normal(size=(n, n)))
    return e / e.sum(axis=1, keepdims=True)


def test_attention_heatmap(tmp_path):
    fig = plots.attention_heatmap(torch.tensor(_pattern(7)), ROLES, save=tmp_path / "new" / "dir" / "attn")
    assert isinstance(fig, Figure)
    _assert_written(tmp_path / "new" / "dir" / "attn")
    legend = fig.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["A", "EOS", "B", "PAD"]
    host = Figure()
    axes = host.subplots(1, 2)
    assert plots.attention_heatmap(_pattern(7), ROLES, ax=axes[1]) is host
    with pytest.raises(ValueError, match="7 roles"):
        plots.attention_heatmap(_pattern(6), ROLES)


def test_save_with_suffix_writes_both_formats(tmp_path):
    plots.loss_curves({"a": [3.0, 2.0, 1.5]}, save=tmp_path / "loss.png")
    _assert_written(tmp_path / "loss")
    plots.loss_curves({"a": [3.0, 2.0]}, save=str(tmp_path / "run.v2"))  # not an image suffix: a stem
    _assert_written(tmp_path / "run.v2")


def test_rollout_on_image(tmp_path):
    scores = np.random.default_rng(0).random(12)
    plots.rollout_on_image(scores, (3, 4), save=tmp_path / "grid")
    _assert_written(tmp_path / "grid")
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    fig = plots.rollout_on_image(scores, (3, 4), image=image, title="EOS rollout onto the image — eos_bridged_strict",
                                 save=tmp_path / "overlay")
    _assert_written(tmp_path / "overlay")
    assert len(fig.axes[0].images) == 1 and len(fig.axes[1].images) == 2  # the bare image, then it under the rollout
    assert fig.get_suptitle() == "EOS rollout onto the image — eos_bridged_strict"  # whole, not cut off
    with pytest.raises(ValueError, match="3x5 grid"):
        plots.rollout_on_image(scores, (3, 5))


def test_segment_budget(tmp_path):
    budget = {"image": [0.5, 0.4, 0.3], "text": [0.3, 0.3, 0.3], "EOS": [0.2, 0.3, 0.4]}
    fig = plots.segment_budget(budget, save=tmp_path / "budget_dict")
    _assert_written(tmp_path / "budget_dict")
    assert len(fig.axes[0].patches) == 9
    plots.segment_budget(np.array(list(budget.values())).T, names=list(budget), save=tmp_path / "budget_arr")
    _assert_written(tmp_path / "budget_arr")
    with pytest.raises(ValueError, match="names"):
        plots.segment_budget(np.ones((3, 2)))


def test_probing_curves(tmp_path):
    res = {
        "accuracy": np.array([0.4, 0.9, 0.5]), "accuracy_std": np.array([0.05, 0.02, 0.04]),
        "control": np.array([0.33, 0.35, 0.3]), "control_std": np.zeros(3),
        "selectivity": np.array([0.07, 0.55, 0.2]), "chance": 0.34,
    }
    fig = plots.probing_curves({"colour": res, "size": {"skipped": "fewer than 2 classes"}}, save=tmp_path / "probe")
    _assert_written(tmp_path / "probe")
    assert len(fig.axes[0].lines) == 3  # accuracy, control and chance of the one attribute shown
    chance = [line for line in fig.axes[0].lines if line.get_linestyle() == ":"]
    assert len(chance) == 1 and np.allclose(chance[0].get_ydata(), 0.34)
    assert fig.axes[0].get_xlabel() == plots.LAYER_AXIS
    assert "chance (majority class)" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    with pytest.raises(ValueError, match="skipped"):
        plots.probing_curves({"size": {"skipped": "fewer than 2 classes"}})


def test_umap_scatter(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(["red", "green", "blue"], 20)
    centres = {"red": 0, "green": 1, "blue": 2}
    x = rng.normal(size=(60, 16)) * 0.2
    x[np.arange(60), [centres[c] for c in labels]] += 3.0
    fig = plots.umap_scatter(x, labels, seed=0, save=tmp_path / "umap")
    _assert_written(tmp_path / "umap")
    assert fig.cocoa_coords.shape == (60, 2) and np.isfinite(fig.cocoa_coords).all()
    centroids = {c: fig.cocoa_coords[labels == c].mean(axis=0) for c in centres}
    spread = max(np.linalg.norm(fig.cocoa_coords[labels == c] - centroids[c], axis=1).mean() for c in centres)
    gap = min(np.linalg.norm(centroids[a] - centroids[b]) for a in centres for b in centres if a != b)
    assert gap > spread  # three well-separated clusters stay separated
    again = plots.umap_scatter(x, labels[::-1], coords=fig.cocoa_coords)  # recoloured, not refitted
    assert np.array_equal(again.cocoa_coords, fig.cocoa_coords)
    with pytest.raises(ValueError, match=r"coords must be \[60, 2\]"):
        plots.umap_scatter(x, labels, coords=fig.cocoa_coords[:10])


def test_cka_heatmap(tmp_path):
    plots.cka_heatmap(np.random.default_rng(0).random((4, 3)), names=("causal", "bridged"), save=tmp_path / "cka")
    _assert_written(tmp_path / "cka")


def test_cka_heatmap_leaves_undefined_layers_blank_with_a_note(tmp_path):
    m = np.random.default_rng(0).random((4, 4))
    m[0, :] = m[:, 0] = np.nan  # layer 0: the EOS token's embedding, the same for every input
    fig = plots.cka_heatmap(m, names=("a", "b"), save=tmp_path / "cka")
    _assert_written(tmp_path / "cka")
    annotations = [t.get_text() for t in fig.axes[0].texts]
    assert len(annotations) == 9 and "nan" not in annotations
    assert any("undefined at layer 0" in t.get_text() for t in fig.texts)
    assert fig.axes[0].get_ylabel() == f"a: {plots.LAYER_AXIS}"


def test_every_layer_axis_says_how_layers_count():
    budget = plots.segment_budget({"image": [0.5, 0.4], "EOS": [0.5, 0.6]})
    assert budget.axes[0].get_xlabel().startswith(plots.LAYER_AXIS)
    assert [t.get_text() for t in budget.axes[0].get_xticklabels()] == ["1", "2"]  # block l's attention at layer l
    assert plots.lens_rank_heatmap(np.ones((3, 2)), ["a", "b"]).axes[0].get_ylabel() == plots.LAYER_AXIS


def test_attention_heatmap_labels_the_image_block_and_pairs_through_plots(tmp_path):
    roles = ["A"] * 6 + ["EOS", "B"]
    image = [False, True, True, True, True, False, False, False]
    fig = plots.attention_heatmap(_pattern(8), roles, image=image, title="x" * 100)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "image tokens" in texts
    assert "image tokens" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert all(len(line) <= 60 for line in fig.axes[0].get_title().split("\n"))  # wrapped, never cut off
    panels = [dict(pattern=_pattern(8, seed), roles=roles, image=image, title=f"run {seed}") for seed in (0, 1)]
    pair = plots.attention_pair(panels, title="pair", save=tmp_path / "pair")
    _assert_written(tmp_path / "pair")
    titles = [ax.get_title() for ax in pair.axes if ax.get_title()]
    assert titles[:2] == ["run 0", "run 1"]


def test_ablation_heatmap(tmp_path):
    table = {
        ("causal", 0.0): (0.62, 0.03), ("causal", 1.0): (0.55, 0.04),
        ("eos_bridged", 0.0): (0.60, 0.02), ("eos_bridged", 0.5): 0.64,
    }
    fig = plots.ablation_heatmap(table, save=tmp_path / "ablation")
    _assert_written(tmp_path / "ablation")
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"0.62±0.03", "0.64", "—"} <= texts
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0.0", "0.5", "1.0"]
    means = np.array([[0.5, np.nan], [0.7, 0.8]])
    sd = np.full((2, 2), 0.01)
    fig = plots.ablation_heatmap(means, row_labels=["causal", "bidirectional"], col_labels=[0.0, 1.0], sd=sd,
                                 save=tmp_path / "arr")
    _assert_written(tmp_path / "arr")
    assert sum(t.get_text() == "—" for t in fig.axes[0].texts) == 1


def test_loss_curves(tmp_path):
    curves = {"recon": [3.0, 2.0, 1.0], "infonce": ([0, 10, 20], [4.0, 3.5, 3.0])}
    fig = plots.loss_curves(curves, logy=True, save=tmp_path / "loss")
    _assert_written(tmp_path / "loss")
    np.testing.assert_array_equal(fig.axes[0].lines[1].get_xdata(), [0, 10, 20])


def test_save_failure_leaves_no_temp_file(tmp_path, monkeypatch):
    fig = plots.loss_curves({"a": [1.0, 0.5]})

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        plots._save(fig, tmp_path / "loss")
    assert os.listdir(tmp_path) == []


def test_probe_bars_heights_are_seed_means(tmp_path):
    rows = [dict(cell=c, attribute=a, seed=s, eos=0.1 * i + 0.05 * s, chance=0.25)
            for i, (c, a) in enumerate([(c, a) for a in ("colour", "shape") for c in ("causal", "bridged")])
            for s in (0, 1)]
    fig = plots.probe_bars(rows, save=tmp_path / "bars")
    _assert_written(tmp_path / "bars")
    heights = sorted(round(p.get_height(), 6) for p in fig.axes[0].patches if p.get_height() > 0)
    expected = sorted(round(0.1 * i + 0.025, 6) for i in range(4))  # mean over the two seeds
    assert heights == expected
    assert "chance" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    with pytest.raises(ValueError, match="run the eos_probing notebooks"):
        plots.probe_bars([])


def test_layerwise_curves_star_the_best_layer_by_the_tie_robust_score(tmp_path):
    results = {"causal": {"overall": [1.0, 0.3, 0.6, 0.5], "overall_tie_robust": [0.11, 0.3, 0.6, 0.5]},
               "bidirectional": {"overall": [1.0, 0.2, 0.4, 0.7], "overall_tie_robust": [0.11, 0.2, 0.4, 0.7]}}
    fig = plots.layerwise_curves(results, save=tmp_path / "layerwise")
    _assert_written(tmp_path / "layerwise")
    stars = [(line.get_xdata()[0], line.get_ydata()[0]) for line in fig.axes[0].lines if line.get_marker() == "*"]
    assert stars == [(2, 0.6), (3, 0.7)]  # not layer 0, where the MMEB rule scores a collapsed state 1.0
    with pytest.raises(ValueError, match="no layer-wise results"):
        plots.layerwise_curves({})


def test_patching_profile(tmp_path):
    profile = {"source": "bidirectional", "target": "causal", "recovery": [0.0, 0.2, 0.7, 1.0]}
    fig = plots.patching_profile({"EOS": profile}, save=tmp_path / "patching")
    _assert_written(tmp_path / "patching")
    assert len(fig.axes) == 1 and "bidirectional into causal" in fig.axes[0].get_title()
    assert fig.axes[0].get_legend().get_title().get_text() == "patched positions"
    by_cell = plots.patching_profile({"bridged-l1": profile, "strict-l1": profile}, legend="cell")
    assert by_cell.axes[0].get_legend().get_title().get_text() == "cell"
    retrieval = {"all": {"overall_tie_robust": [0.2, 0.3, 0.5, 0.6], "source_run": {"overall_tie_robust": 0.6},
                         "target_run": {"overall_tie_robust": 0.2}}}
    fig = plots.patching_profile({"EOS": profile, "all": profile}, retrieval=retrieval, save=tmp_path / "patching2")
    _assert_written(tmp_path / "patching2")
    assert len(fig.axes) == 2 and len(fig.axes[1].lines) == 3  # the curve and the two runs' levels


def test_lens_rank_heatmap(tmp_path):
    ranks = np.array([[40, 3], [2, 1], [1, 1]])
    fig = plots.lens_rank_heatmap(ranks, ["red", "circle"], save=tmp_path / "lens")
    _assert_written(tmp_path / "lens")
    assert [t.get_text() for t in fig.axes[0].texts] == ["40", "3", "2", "1", "1", "1"]
    with pytest.raises(ValueError, match="T = 3 tokens"):
        plots.lens_rank_heatmap(ranks, ["a", "red", "circle"])


def test_pc_shift_bars(tmp_path):
    shift = {"cosine": [0.9, 0.4], "variance_a": [0.5, 0.2], "variance_b": [0.6, 0.1], "shift_along_a": [0.7, 0.1]}
    fig = plots.pc_shift_bars(shift, names=("base", "tuned"), save=tmp_path / "pcs")
    _assert_written(tmp_path / "pcs")
    assert sorted(round(p.get_height(), 2) for p in fig.axes[0].patches) == sorted(sum(shift.values(), []))


def test_window_knockout_heatmap(tmp_path):
    sweep = {"mask_type": "causal", "windows": [[0, 1], [1, 2], [2, 3]],
             "base": {"overall": 0.5, "overall_tie_robust": 0.4},
             "flows": {"image->EOS": {"drop": [0.1, 0.0, -0.1], "drop_tie_robust": [0.2, 0.05, 0.0],
                                      "all_layers": {"overall": 0.3, "overall_tie_robust": 0.1}}}}
    fig = plots.window_knockout_heatmap(sweep, save=tmp_path / "windows")
    _assert_written(tmp_path / "windows")
    assert [t.get_text() for t in fig.axes[0].texts] == ["0.20", "0.05", "0.00", "0.30"]
    # blocks count from 1 (0 = embeddings)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["1-2", "2-3", "3-4", "all"]
    fig = plots.window_knockout_heatmap(sweep, value="drop")
    assert [t.get_text() for t in fig.axes[0].texts][-1] == "0.20"
