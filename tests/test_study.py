"""The quick study end to end on the tiny model: train, capture, papermill every notebook, report, resume."""

import json
import shutil
from pathlib import Path

import nbformat
import pytest
import yaml

from analysis.study import PER_RUN_NOTEBOOKS, SUMMARY_NOTEBOOKS, Study, StudyConfig

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
    return path, config, Study(config, progress=False).run()


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


def test_second_run_redoes_nothing(quick):
    path, _, _ = quick
    outcomes = Study(StudyConfig.load(path), progress=False).run()
    assert outcomes and {o.status for o in outcomes} == {"skipped"}


def test_broken_notebook_parameter_is_reported_and_the_rest_goes_on(quick, tmp_path):
    path, config, _ = quick
    spec = yaml.safe_load(path.read_text())
    spec["notebook_params"] = {"eos_probing": {"cv": "not-a-number"}}
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(spec))
    outcomes = Study(StudyConfig.load(broken), progress=False).run()
    failed = [o for o in outcomes if o.status == "failed"]
    assert failed and all("eos_probing" in o.target for o in failed)
    assert all(o.status == "skipped" for o in outcomes if "eos_probing" not in o.target)
    report = (Path(config.report_dir) / "report.md").read_text()
    assert "eos_probing" in report.split("## Failures")[1]


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
