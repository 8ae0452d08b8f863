"""The quick study end to end on the tiny model: train, capture, papermill every notebook, report, resume."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import yaml

from analysis.errors import UsageError
from analysis.lens import Capture
from analysis.study import (
    LAYERWISE,
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
    # key figures: each compared cell under its own mask type (the probing set has no B, so eos_bridged ran as
    # bidirectional and the notebooks name it so), every linked file present
    assert "(contrastive-causal-s0_eos_budget_causal.png)" in report
    assert ("![eos_probing: bridged-l1-s0 (eos_bridged ran as bidirectional: no B segment)]"
            "(bridged-l1-s0_probing_curves_bidirectional.png)") in report
    # layer by layer: a table row and a curve per cell (under its embed mask), mask patching at EOS and everywhere
    layerwise = report.split("## Layer by layer")[1].split("\n## ")[0]
    assert "| contrastive-causal | 0 | causal |" in layerwise and "| bridged-l1 | 0 | bidirectional |" in layerwise
    for figure in ("layerwise_p1", "mask_patching_EOS", "mask_patching_all"):
        assert f"]({figure}.png)" in layerwise
    images = [line.split("](")[1].rstrip(")") for line in report.splitlines() if line.startswith("![")]
    assert len(images) == 1 + 3 + 3 * 2 + 1 and all((Path(config.report_dir) / i).is_file() for i in images)
    # the notebook read the study's retrieval capture (every embed mask) and added nothing to it
    retrieval = {p.relative_to(root / "captures").as_posix() for p in root.glob("captures/*/retrieval/*/*")}
    assert retrieval == {f"{r}-s0/retrieval/{side}/{m}" for r in ("contrastive-causal", "bridged-l1")
                         for side in ("queries", "candidates") for m in ("causal", "bidirectional")}
    compare = json.loads((root / "notebooks/summary/compare_checkpoints/metrics.json").read_text())
    assert len(compare["principal_shift"]["cosine"]) == 3


def test_second_run_redoes_nothing(quick):
    path, _, _ = quick
    outcomes = Study(StudyConfig.load(path), progress=False).run()
    assert outcomes and {o.status for o in outcomes} == {"skipped"}
    report = (Path(StudyConfig.load(path).report_dir) / "report.md").read_text()
    assert "0 jobs run" in report and "when it last had work: train " in report  # the first run's times stay


def test_broken_notebook_parameter_is_reported_and_the_rest_goes_on(quick, tmp_path):
    path, config, _ = quick
    spec = yaml.safe_load(path.read_text())
    spec["notebook_params"]["eos_probing"] = {"cv": "not-a-number"}
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(spec))
    outcomes = Study(StudyConfig.load(broken), progress=False, keep_going=True).run()
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


BRIDGED = str(ROOT / "experiments/recipes/cocoa_bridged.yaml")
CAUSAL = str(ROOT / "experiments/recipes/contrastive_causal.yaml")


def _load(tmp_path, cells, **extra):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "cells": cells, **extra}))
    return StudyConfig.load(path)


def test_a_cells_mask_type_and_lambda_come_from_its_recipe(tmp_path):
    strict = "stages.bridged.mask=eos_bridged_strict"
    config = _load(tmp_path, [{"name": "b", "recipe": BRIDGED, "set": [strict]},
                              {"name": "m", "recipe": BRIDGED, "set": ["recon_weight=0.5"]},
                              {"name": "c", "recipe": CAUSAL, "mask_type": "causal", "recon_weight": 0}],
                   recipe_set=["stages.contrastive.steps=10"])
    assert [(c.mask_type, c.recon_weight) for c in config.cells] == [
        ("eos_bridged_strict", 1.0), ("eos_bridged", 0.5), ("causal", 0.0)]
    # a study-wide override that gives the causal recipe a stage 2 is caught, not reported as causal
    with pytest.raises(UsageError, match="cell 'c' states mask_type causal, recon_weight 0, but .* trains mask_type "
                                         "eos_bridged_strict, recon_weight 1"):
        _load(tmp_path, [{"name": "c", "recipe": CAUSAL, "mask_type": "causal", "recon_weight": 0}],
              recipe_set=[strict])


@pytest.mark.parametrize("cell, match", [
    ({"mask_type": "causal", "recon_weight": 0.5},
     r"cell 'a' states mask_type causal, recon_weight 0.5, but its recipe .*cocoa_bridged.yaml \(with the overrides\) "
     r"trains mask_type eos_bridged, recon_weight 1; drop"),
    ({"recon_weight": 0}, "states mask_type eos_bridged, recon_weight 0, but"),
    ({"recon_weight": "one"}, "cells\\[0\\].recon_weight must be a number; got 'one'"),
    ({"mask_type": "bridged"}, "unknown mask type 'bridged'; valid mask types"),
    ({"name": "../trained"}, "cell name '../trained' is not a plain folder name"),
    ({"name": ".hidden"}, "cell name '.hidden' is not a plain folder name"),
    ({"recipie": "x.yaml"}, r"unknown key\(s\) recipie in cells\[0\]; valid keys: name, recipe, mask_type"),
    ({"recipe": "nowhere.yaml"}, "cell 'a' names recipe nowhere.yaml, which does not exist"),
    ({"set": ["stages.contrastive.steps=.inf"]}, "cell 'a': stages.contrastive.steps must be an integer; got inf"),
    ({"set": ["stages.bridged=null", "stages.contrastive=null"]}, "cell 'a': recipe 'cocoa_bridged' has no stage"),
])
def test_a_bad_cell_is_one_line_before_anything_runs(tmp_path, cell, match):
    with pytest.raises(UsageError, match=match):
        _load(tmp_path, [{"name": "a", "recipe": BRIDGED, **cell}])


def test_notebook_params_cannot_inject_code(tmp_path):
    cells = [{"name": "a", "recipe": CAUSAL}]
    injection = "x = 1\nimport os; os.system('id > FILE')  #"
    with pytest.raises(UsageError, match=r"notebook_params.eos_probing: .x = 1\\nimport os.* is not a parameter of "
                                         r"eos_probing \(its parameters: capture_dir, "):
        _load(tmp_path, cells, notebook_params={"eos_probing": {injection: 1}})
    with pytest.raises(UsageError, match="notebook_params.eos_probing.cv: datetime.date.* is not a plain value"):
        _load(tmp_path, cells, notebook_params={"eos_probing": {"cv": __import__("datetime").date(2024, 1, 1)}})
    with pytest.raises(UsageError, match="not a parameter of eos_probing"):
        _load(tmp_path, cells, notebook_params={"eos_probing": {"n_sample": 3}})  # a typo
    config = _load(tmp_path, cells, notebook_params={"eos_probing": {"cv": 3, "attributes": ["colour"]}})
    assert config.notebook_params == {"eos_probing": {"cv": 3, "attributes": ["colour"]}}


def test_the_layerwise_notebook_reads_the_capture_the_study_sets(tmp_path):
    cells = [{"name": "a", "recipe": CAUSAL}]
    with pytest.raises(UsageError, match=r"notebook_params.layerwise_analyses.n: the study sets it from "
                                         r"capture.retrieval.n \(the notebook reads the run's retrieval capture\)"):
        _load(tmp_path, cells, notebook_params={LAYERWISE: {"window": 0, "n": 5}})
    with pytest.raises(UsageError, match=r"capture.retrieval: n must be >= 1 and splits a non-empty list of ind, "
                                         r"ood; got n=3, splits=\['test'\]"):
        _load(tmp_path, cells, capture={"retrieval": {"splits": ["test"]}})


def test_layerwise_analyses_run_for_each_cells_lowest_captured_seed(tmp_path):
    config = _load(tmp_path, [{"name": "a", "recipe": CAUSAL}, {"name": "b", "recipe": BRIDGED}], seeds=[2, 1, 3],
                   capture={"seeds": [3, 2, 7]})
    study = Study(config, progress=False)
    assert [r.name for r in study.runs if study.layerwise(r)] == ["a-s2", "b-s2"]
    config.notebooks.remove(LAYERWISE)
    assert not any(study.layerwise(r) for r in study.runs)


def test_bad_config_names_the_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "cels": []}))
    with pytest.raises(UsageError, match=r"bad.yaml: unknown key\(s\) cels in the study config; valid keys: name"):
        StudyConfig.load(bad)
    bad.write_text("name: x\ncells: [{name: a\n")
    with pytest.raises(UsageError, match=r"bad.yaml is not valid YAML: .* at line \d+, column \d+"):
        StudyConfig.load(bad)
    bad.write_text(yaml.safe_dump({"name": "x", "cells": [{"name": "a", "recipe": CAUSAL}], "seeds": 0}))
    with pytest.raises(UsageError, match="seeds must be a list"):
        StudyConfig.load(bad)
    with pytest.raises(UsageError, match="no study config at"):
        StudyConfig.load(tmp_path / "nowhere.yaml")


def test_repo_configs_load_and_state_what_their_recipes_train():
    for name in ("default", "full", "quick"):
        config = StudyConfig.load(ROOT / "experiments" / f"{name}.yaml")
        assert all(c.mask_type and c.recon_weight is not None for c in config.cells)


@pytest.mark.parametrize("keep_going", [False, True])
def test_a_failed_job_stops_new_ones_unless_keep_going(tmp_path, keep_going):
    study = Study(_load(tmp_path, [{"name": "a", "recipe": CAUSAL}], workers=2), progress=False,
                  keep_going=keep_going)
    ran = []

    def wait_for(condition):
        deadline = time.monotonic() + 0.5
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.01)

    def job(i):
        ran.append(i)
        if i == 0:  # fails while t1 holds the other worker
            wait_for(lambda: 1 in ran)
            raise RuntimeError("boom")
        if i in (1, 2):  # t2 may start on t0's worker before the failure is handled; t3 and t4 cannot
            wait_for(lambda: study.stopped)

    study._parallel("train", [(f"t{i}", False, job, (i,)) for i in range(5)], processes=False)
    study._parallel("capture", [("c", False, job, (9,))], processes=False)
    statuses = {o.target: o.status for o in study.outcomes}
    if keep_going:
        assert sorted(ran) == [0, 1, 2, 3, 4, 9] and not study.stopped
        assert statuses == {"t0": "failed", "t1": "done", "t2": "done", "t3": "done", "t4": "done", "c": "done"}
    else:
        assert set(ran) <= {0, 1, 2} and study.stopped
        assert statuses == {"t0": "failed", "t1": "done", "t2": "done" if 2 in ran else "cancelled",
                            "t3": "cancelled", "t4": "cancelled"}
    assert next(o.error for o in study.outcomes if o.target == "t0") == "RuntimeError: boom"


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
