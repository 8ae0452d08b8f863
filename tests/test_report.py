"""Report tables from hand-made study folders: the numbers are checked against the statistics module."""

import json
import statistics

import pytest

from analysis.io import write_json
from analysis.report import (
    STUDY_FILE,
    ablation_table,
    collect_layerwise,
    collect_probes,
    collect_scores,
    degenerate_notes,
    grid_values,
    layerwise_table,
    markdown_table,
    mean_sd,
    probe_table,
)


def _probe(accuracy: list[float], chance: float = 0.25) -> dict:
    return dict(accuracy=accuracy, selectivity=[a - chance for a in accuracy], chance=chance)


def test_probe_table_reads_the_last_layer_under_the_cells_own_mask(tmp_path):
    cells = [dict(name="bridged", mask_type="eos_bridged", recon_weight=1.0)]
    write_json(tmp_path / STUDY_FILE, dict(cells=cells, seeds=[0, 1, 2]))
    last = {0: 0.6, 1: 0.7}  # seed 2 has no probing notebook: it is left out
    for seed, value in last.items():
        probes = {"eos_bridged": {"colour": _probe([0.1, value])},
                  "eos_bridged/content_mean": {"colour": _probe([0.2, value + 0.1])},
                  "causal": {"colour": _probe([0.9, 0.9])}}  # another mask type: must not be read
        write_json(tmp_path / "notebooks" / f"bridged-s{seed}" / "eos_probing" / "metrics.json", {"probes": probes})
    rows = collect_probes(tmp_path)
    assert [(r["seed"], r["eos"]) for r in rows] == [(0, 0.6), (1, 0.7)]
    assert [r["content"] for r in rows] == pytest.approx([0.7, 0.8])
    table = probe_table(rows)
    mean, sd = statistics.mean(last.values()), statistics.stdev(last.values())
    assert f"| bridged | eos_bridged | 1 | colour | 2 | {mean:.3f} ± {sd:.3f} |" in table


def test_ablation_table_mean_and_sample_sd():
    rows = [dict(cell="c", mask_type="causal", recon_weight=0, note="", seed=s, overall=v, **{"split.ind": v / 2})
            for s, v in enumerate([0.2, 0.5, 0.8])]
    (entry,) = ablation_table(rows)
    assert entry["n_seeds"] == 3
    assert entry["overall"] == (statistics.mean([0.2, 0.5, 0.8]), statistics.stdev([0.2, 0.5, 0.8]))
    assert entry["split.ood"] == (None, None)  # a column no row has is undefined, not zero


def test_one_seed_has_no_sd_in_tables_or_json(tmp_path):
    assert mean_sd([0.4]) == (0.4, None) and mean_sd([]) == (None, None)
    rows = [dict(cell="c", mask_type="causal", recon_weight=0, note="", seed=0, overall=0.4)]
    table = ablation_table(rows)
    assert table[0]["overall"] == (0.4, None)
    line = markdown_table(table).splitlines()[2]
    assert line.startswith("| c | causal | 0 | 1 | 0.400 | — |") and "±" not in line
    text = write_json(tmp_path / "ablation.json", table).read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))[0]["overall"] == [0.4, None]


def _dataset(name, split, score, robust, ties):
    return dict(dataset=name, meta_task="vqa", split=split, negatives="hard", score=score, score_tie_robust=robust,
                ties=ties, n=10, n_candidates=5)


def test_ties_and_degenerate_runs_are_reported_beside_the_mmeb_rule(tmp_path):
    cells = [dict(name="healthy", mask_type="causal", recon_weight=0.0),
             dict(name="collapsed", mask_type="eos_bridged", recon_weight=1.0)]
    write_json(tmp_path / STUDY_FILE, dict(cells=cells, seeds=[0, 1]))
    for seed in (0, 1):
        write_json(tmp_path / "checkpoints" / f"healthy-s{seed}" / "scores.json", dict(
            embedding_spread=0.6, datasets=[_dataset("a", "ind", 0.5, 0.5, 0), _dataset("b", "ood", 0.3, 0.3, 0)]))
    write_json(tmp_path / "checkpoints" / "collapsed-s1" / "scores.json", dict(
        embedding_spread=0.0, datasets=[_dataset("a", "ind", 1.0, 0.2, 10), _dataset("b", "ood", 1.0, 0.2, 10)]))
    rows = collect_scores(tmp_path)
    assert [(r["cell"], r["seed"], r["degenerate"]) for r in rows] == [
        ("healthy", 0, False), ("healthy", 1, False), ("collapsed", 1, True)]
    table = ablation_table(rows)
    collapsed = table[1]
    assert collapsed["overall"] == (1.0, None) and collapsed["overall_tie_robust"] == (0.2, None)
    assert collapsed["ties"] == (20, None) and collapsed["degenerate_seeds"] == [1]
    text = markdown_table(table)
    assert "| collapsed ⚠ | eos_bridged | 1 | 1 | 1.000 | 0.200 | 20.0 | 1.000 | 0.200 |" in text
    assert "| healthy | causal | 0 | 2 | 0.400 ± 0.000 | 0.400 ± 0.000 | 0.0 ± 0.0 | 0.500 ± 0.000 |" in text
    (note,) = degenerate_notes(table)
    assert "`collapsed` seed(s) 1: degenerate embeddings" in note
    heat = grid_values(table, "split.ind")
    assert heat[("eos_bridged", 1.0)] == (0.2, None) and heat[("causal", 0.0)] == (0.5, 0.0)


def test_scores_recorded_before_ties_were_keep_the_mmeb_rule(tmp_path):
    write_json(tmp_path / STUDY_FILE, dict(cells=[dict(name="old", mask_type="causal", recon_weight=0.0)], seeds=[0]))
    old = [{k: v for k, v in _dataset("a", "ind", 0.5, 0, 0).items() if k not in ("score_tie_robust", "ties")}]
    write_json(tmp_path / "checkpoints" / "old-s0" / "scores.json", dict(datasets=old))
    table = ablation_table(collect_scores(tmp_path))
    assert table[0]["overall_tie_robust"] == (None, None) and table[0]["degenerate_seeds"] == []
    assert grid_values(table, "split.ind")[("causal", 0.0)] == (0.5, None)


def _layerwise(embed_mask: str, best_layer: int, robust: list[float]) -> dict:
    scores = dict(best_layer=best_layer, best=robust[best_layer], last=robust[-1], gain=robust[best_layer] - robust[-1],
                  best_mmeb=1.0, last_mmeb=0.5)
    other = dict(scores, best=0.0, last=0.0, gain=0.0)  # the other mask type: must not be read
    return dict(embed_mask=embed_mask, n_queries=33, patching={"profile": {}},
                layerwise={embed_mask: scores, "causal" if embed_mask != "causal" else "bidirectional": other})


def test_layerwise_table_reads_each_cells_lowest_seed_under_its_embed_mask(tmp_path):
    cells = [dict(name="late", mask_type="eos_bridged", recon_weight=1.0),
             dict(name="early", mask_type="causal", recon_weight=0.0)]
    write_json(tmp_path / STUDY_FILE, dict(cells=cells, seeds=[1, 0, 2]))
    notebook = "layerwise_analyses/metrics.json"
    write_json(tmp_path / "notebooks" / "late-s1" / notebook, _layerwise("bidirectional", 2, [0.1, 0.4, 0.6, 0.5]))
    write_json(tmp_path / "notebooks" / "late-s2" / notebook, _layerwise("bidirectional", 0, [0.9, 0.1]))
    write_json(tmp_path / "notebooks" / "early-s0" / notebook, _layerwise("causal", 1, [0.2, 0.3, 0.3]))
    found = collect_layerwise(tmp_path)
    assert [(cell, m["seed"]) for cell, m in found.items()] == [("late", 1), ("early", 0)]
    table = layerwise_table(found).splitlines()
    assert table[2:] == ["| late | 1 | bidirectional | 2 | 0.600 | 0.500 | +0.100 | 1.000 / 0.500 |",
                         "| early | 0 | causal | 1 | 0.300 | 0.300 | +0.000 | 1.000 / 0.500 |"]


def test_the_report_is_written_from_a_study_folder_and_a_run_log(tmp_path):
    from analysis.report import Outcome, RunLog, write_report
    from analysis.study_dir import StudyDir

    cells = [dict(name="healthy", mask_type="causal", recon_weight=0.0, note="the baseline")]
    write_json(tmp_path / "runs" / STUDY_FILE, dict(name="hand-made", cells=cells, seeds=[0, 1]))
    for seed in (0, 1):
        write_json(tmp_path / "runs" / "checkpoints" / f"healthy-s{seed}" / "scores.json", dict(
            embedding_spread=0.6, datasets=[_dataset("a", "ind", 0.5 + seed / 10, 0.5, 0)]))
    study_dir = StudyDir(tmp_path / "runs")
    assert collect_scores(study_dir) == collect_scores(str(tmp_path / "runs"))  # a StudyDir or its path
    log = RunLog([Outcome("train", "healthy-s0", "done", 60.0), Outcome("train", "healthy-s1", "skipped"),
                  Outcome("notebooks", "notebooks/healthy-s0/eos_probing", "failed", 3.0, "ValueError: boom")],
                 steps={"train": dict(busy=90.0, span=60.0, jobs=1), "notebooks": dict(busy=30.0, span=30.0, jobs=1)},
                 seconds=95.0, stopped=True, wall=95.0, workers=2)
    report = write_report(study_dir, log, tmp_path / "report").read_text()
    assert report.startswith("# cocoa-lens study `hand-made`")
    assert ("this run took 1.6 min (1 jobs run, 1 already done, 1 failed). Busy time of each step when it last had "
            "work, on 2 worker(s): train 1.5 min (75%, 1 jobs), notebooks 0.5 min (25%, 1 jobs); wall time of the "
            "last run with work 1.6 min") in report
    assert "**The run stopped after the first failure**" in report
    assert "| healthy | causal | 0 | 2 | 0.550 ± 0.071 |" in report and "- `healthy`: the baseline" in report
    assert "- notebooks `notebooks/healthy-s0/eos_probing`: ValueError: boom" in report.split("## Failures")[1]
    assert json.loads((tmp_path / "report" / "ablation.json").read_text())[0]["n_seeds"] == 2
