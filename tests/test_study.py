"""The quick study end to end on the tiny model: train, capture, papermill every notebook, report, resume."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from analysis.lens import Capture
from analysis.study import (
    PER_RUN_NOTEBOOKS,
    SUMMARY_NOTEBOOKS,
    Study,
    StudyConfig,
    _capture_complete,
    _capture_job,
    _execute_notebook,
    _notebook_done,
    share_cores,
)

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = PER_RUN_NOTEBOOKS + SUMMARY_NOTEBOOKS


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """experiments/quick.yaml redirected into a temporary directory, run once."""
    tmp = tmp_path_factory.mktemp("study")
    spec = yaml.safe_load((ROOT / "experiments" / "quick.yaml").read_text())
    spec.update(out_dir=str(tmp / "runs"), report_dir=str(tmp / "report"))
    for cell in spec["cells"]:
        cell["recipe"] = str(ROOT / cell["recipe"])
    path = tmp / "quick.yaml"
    path.write_text(yaml.safe_dump(spec))
    config = StudyConfig.load(path)
    cwd = os.getcwd()
    outcomes = Study(config, progress=False).run()
    assert os.getcwd() == cwd  # notebooks run in threads: none may move the process
    return path, config, outcomes


def test_quick_study_runs_every_notebook_and_reports(quick):
    _, config, outcomes = quick
    assert not [o for o in outcomes if o.status == "failed"], [o for o in outcomes if o.status == "failed"]
    root = Path(config.out_dir)
    executed = {p.stem for p in root.glob("notebooks/*/*/*.ipynb")}
    assert executed == set(NOTEBOOKS)
    for path in root.glob("notebooks/*/*/*.ipynb"):
        book = nbformat.read(path, as_version=4)
        assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
                   for c in book.cells if c.cell_type == "code" for o in c.outputs), f"{path} shows no figure"
        metrics = json.loads((path.parent / "metrics.json").read_text())
        assert metrics, f"{path.parent}/metrics.json is empty"
        assert list(path.parent.glob("*.png")) and list(path.parent.glob("*.svg"))
    flow = json.loads(next(root.glob("notebooks/*/attention_flow/metrics.json")).read_text())
    assert flow["b_to_a_max"]["eos_bridged"] == 0.0 and flow["b_to_a_max"]["causal"] > 0
    report = (Path(config.report_dir) / "report.md").read_text()
    assert "| cell | mask type | λ |" in report
    for cell in config.cells:
        assert f"| {cell.name} | {cell.mask_type} |" in report
    assert (Path(config.report_dir) / "ablation_heatmap.png").stat().st_size > 0
    assert "failed). Wall time of each step when it last had work: train " in report
    probes = report.split("## What the EOS state holds")[1].split("##")[0]
    assert all(f"| {cell.name} | {cell.mask_type} |" in probes for cell in config.cells)
    # key figures: each compared cell under its own mask type, every linked file present
    assert "(contrastive-causal-s0_eos_budget_causal.png)" in report
    assert "(bridged-l1-s0_probing_curves_eos_bridged.png)" in report
    images = [line.split("](")[1].rstrip(")") for line in report.splitlines() if line.startswith("![")]
    assert len(images) == 1 + 3 * 2 + 1 and all((Path(config.report_dir) / i).is_file() for i in images)


def test_second_run_redoes_nothing(quick):
    path, _, _ = quick
    outcomes = Study(StudyConfig.load(path), progress=False).run()
    assert outcomes and {o.status for o in outcomes} == {"skipped"}
    report = (Path(StudyConfig.load(path).report_dir) / "report.md").read_text()
    assert "0 jobs run" in report and "when it last had work: train " in report  # the first run's times stay


def test_broken_notebook_parameter_is_reported_and_the_rest_goes_on(quick, tmp_path):
    path, config, _ = quick
    spec = yaml.safe_load(path.read_text())
    spec["notebook_params"] = {"eos_probing": {"cv": "not-a-number"}}
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(spec))
    outcomes = Study(StudyConfig.load(broken), progress=False).run()
    failed = [o for o in outcomes if o.status == "failed"]
    assert failed and all("eos_probing" in o.target for o in failed)
    # the rest is not redone, except the ablation summary, which reads the probing results that are now gone
    assert {o.target for o in outcomes if o.status == "done"} == {"notebooks/summary/ablation_summary"}
    report = (Path(config.report_dir) / "report.md").read_text()
    assert "eos_probing" in report.split("## Failures")[1]


def test_capture_begun_under_other_settings_is_redone(quick, tmp_path):
    _, config, _ = quick
    checkpoint = str(Study(config, progress=False).captured_runs()[0].checkpoint)
    spec = dict(config.capture.settings(), n=4, flow_n=2, masks=["causal"])
    out = tmp_path / "capture"
    _capture_job(checkpoint, str(out), dict(spec, data_seed=5))
    assert _capture_complete(out, dict(spec, data_seed=5)) and not _capture_complete(out, spec)
    _capture_job(checkpoint, str(out), spec)  # resuming the seed-5 capture would raise
    assert _capture_complete(out, spec) and Capture.open(out / "probe", "causal").meta["seed"] == spec["data_seed"]


def test_bad_config_names_the_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "cells": [{"name": "a", "recipe": "nowhere.yaml",
                                                            "mask_type": "causal", "recon_weight": 0}]}))
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        StudyConfig.load(bad)
    bad.write_text(yaml.safe_dump({"name": "x", "cels": []}))
    with pytest.raises(ValueError, match="unknown key"):
        StudyConfig.load(bad)
    shutil.copy(ROOT / "experiments" / "quick.yaml", tmp_path / "q.yaml")
    spec = yaml.safe_load((tmp_path / "q.yaml").read_text())
    spec["cells"][0]["mask_type"] = "bridged"
    for cell in spec["cells"]:
        cell["recipe"] = str(ROOT / cell["recipe"])
    (tmp_path / "q.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match="valid mask types"):
        StudyConfig.load(tmp_path / "q.yaml")


def test_share_cores_gives_children_their_share_and_restores(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0))
    with share_cores(workers=cores):  # one thread per child
        child = subprocess.run([sys.executable, "-c", "import os, torch; print(torch.get_num_threads(), "
                                "os.environ['OPENBLAS_NUM_THREADS'])"], capture_output=True, text=True, check=True)
        assert child.stdout.split() == ["1", "1"]
    assert os.environ["OMP_NUM_THREADS"] == "7" and "OPENBLAS_NUM_THREADS" not in os.environ


def test_compare_checkpoints_defaults_to_the_studys_first_pair(quick, tmp_path):
    _, config, _ = quick
    out = tmp_path / "compare"
    _execute_notebook("compare_checkpoints", out, dict(study_dir=str(Path(config.out_dir).resolve()),
                                                       output_dir=str(out)), stamp={})
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["cka"]) == len(metrics["cka"][0]) > 1 and set(metrics["retrieval_delta"])


def test_an_edited_notebook_is_redone(quick, tmp_path, monkeypatch):
    _, config, _ = quick
    study = Study(config, progress=False)
    nb, out, params = next(job for job in study.notebook_jobs() if job[0] == "embedding_umap")
    assert _notebook_done(out, study.notebook_stamp(nb, params))
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    monkeypatch.setattr("analysis.study.NOTEBOOK_DIR", tmp_path / "notebooks")
    edited = tmp_path / "notebooks" / f"{nb}.ipynb"
    edited.write_text(edited.read_text().replace("n_neighbors = 15", "n_neighbors = 10"))
    assert not _notebook_done(out, study.notebook_stamp(nb, params))
