"""The quick study end to end on the tiny model: train, capture, papermill every notebook, report, resume."""

import dataclasses
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
    Job,
    Study,
    StudyConfig,
    capture_complete,
    capture_job,
    execute_notebook,
    notebook_done,
    share_cores,
)
from analysis.study_dir import StudyDir

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = PER_RUN_NOTEBOOKS + SUMMARY_NOTEBOOKS
_QUICK: dict = {}


def quick_spec(tmp: Path, **changes) -> Path:
    """experiments/quick.yaml redirected into `tmp` (with `changes`), written to `tmp/quick.yaml`."""
    spec = yaml.safe_load((ROOT / "experiments" / "quick.yaml").read_text())
    spec.update(out_dir=str(tmp / "runs"), report_dir=str(tmp / "report"), **changes)
    for cell in spec["cells"]:
        cell["recipe"] = str(ROOT / cell["recipe"])
    path = tmp / "quick.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run_quick(tmp_path_factory):
    """The quick study on the local pool, run once per test session (tests/test_study_launchers.py reads it too)."""
    if not _QUICK:
        path = quick_spec(tmp_path_factory.mktemp("study"))
        config = StudyConfig.load(path)
        cwd = os.getcwd()
        started = time.perf_counter()
        study = Study(config, progress=False)
        outcomes = study.run()
        assert os.getcwd() == cwd  # notebooks run in threads: none may move the process
        _QUICK.update(path=path, config=config, outcomes=outcomes, seconds=time.perf_counter() - started)
    return _QUICK["path"], _QUICK["config"], _QUICK["outcomes"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """experiments/quick.yaml redirected into a temporary directory, run once."""
    return run_quick(tmp_path_factory)


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
    assert "failed). Busy time of each step when it last had work, on 2 worker(s): train " in report
    timings = json.loads((root / "timings.json").read_text())
    assert set(timings["steps"]) == {"train", "capture", "notebooks", "summaries"} and timings["wall"] > 0
    # pipelined: the notebooks of the run that finished first may start before the other run's capture ends,
    # the summaries only after everything else
    done = {(o.step, o.target): o for o in outcomes}
    assert all(o.status == "done" for o in done.values())
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
    # the bridged masks' probing set is also captured with B, and eos_probing probes it
    assert {p.relative_to(root / "captures").as_posix() for p in root.glob("captures/*/probe_b/*")} == {
        f"{r}-s0/probe_b/eos_bridged" for r in ("contrastive-causal", "bridged-l1")}
    probing = json.loads((root / "notebooks/bridged-l1-s0/eos_probing/metrics.json").read_text())
    assert set(probing["probes_with_b"]) == {"eos_bridged"} and probing["probes_with_b"]["eos_bridged"]
    # warm kernels: the executed notebooks look like papermill's, counting from 1 as in a fresh kernel
    for path in root.glob("notebooks/*/*/*.ipynb"):
        book = nbformat.read(path, as_version=4)
        assert book.metadata.papermill.parameters and any("injected-parameters" in c.metadata.get("tags", [])
                                                          for c in book.cells)
        counts = [c.execution_count for c in book.cells if c.cell_type == "code"]
        assert counts == list(range(1, len(counts) + 1)), (path, counts)


def test_the_study_passes_the_configured_compare_pair(quick):
    _, config, _ = quick
    study = Study(config, progress=False)
    (job,) = [j for j in study.notebook_jobs() if j.notebook == "compare_checkpoints"]
    a, b = StudyDir(config.out_dir).compare_pair()
    assert (a.name, b.name) == ("contrastive-causal-s0", "bridged-l1-s0")
    assert job.params["checkpoint_a"] == str(a.checkpoint) and job.params["capture_b"] == str(b.capture("probe"))


def test_second_run_redoes_nothing(quick):
    path, _, _ = quick
    outcomes = Study(StudyConfig.load(path), progress=False).run()
    assert outcomes and {o.status for o in outcomes} == {"skipped"}
    report = (Path(StudyConfig.load(path).report_dir) / "report.md").read_text()
    assert "0 jobs run" in report and "when it last had work, on 2 worker(s): train " in report  # the first run's times



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
    trained = Study(config, progress=False).captured_runs()[0]
    run = dataclasses.replace(trained, root=tmp_path)  # its captures in tmp_path, its checkpoint the trained one
    run.checkpoint.parent.mkdir()
    run.checkpoint.symlink_to(trained.checkpoint)
    spec = dict(config.capture.settings(), n=4, flow_n=2, masks=["causal", "eos_bridged"], probe_b=["eos_bridged"])
    capture_job(run, dict(spec, data_seed=5))
    assert capture_complete(run, dict(spec, data_seed=5)) and not capture_complete(run, spec)
    capture_job(run, spec)  # resuming the seed-5 capture would raise
    assert capture_complete(run, spec)
    assert Capture.open(run.capture("probe"), mask_type="causal").meta["seed"] == spec["data_seed"]
    with_b = Capture.open(run.capture("probe_b"), mask_type="eos_bridged")
    assert with_b.meta["n_with_b"] > 0 and not (run.capture("probe_b") / "causal").exists()
    (run.capture("probe_b") / "eos_bridged" / "index.json").unlink()
    assert not capture_complete(run, spec)  # the B capture counts for completeness


BRIDGED = str(ROOT / "experiments/recipes/cocoa_bridged.yaml")
CAUSAL = str(ROOT / "experiments/recipes/contrastive_causal.yaml")


def _load(tmp_path, cells, **extra):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "cells": cells, **extra}))
    return StudyConfig.load(path)


def test_a_cells_mask_type_and_lambda_come_from_its_recipe(tmp_path):
    strict = "stages.bridged.mask=eos_bridged_strict"
    config = _load(tmp_path, [{"name": "b", "recipe": BRIDGED, "set": [strict]},
                              {"name": "m", "recipe": BRIDGED, "set": ["stages.bridged.recon_weight=0.5"]},
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


def test_a_cell_may_train_some_of_the_seeds(tmp_path):
    cells = [{"name": "a", "recipe": CAUSAL}, {"name": "b", "recipe": BRIDGED, "seeds": [2]}]
    study = Study(_load(tmp_path, cells, seeds=[2, 1]), progress=False)
    assert [r.name for r in study.runs] == ["a-s1", "a-s2", "b-s2"]
    with pytest.raises(UsageError, match=r"cells: b.seeds \[3\]; give a non-empty list of the study's seeds \[2, 1\]"):
        _load(tmp_path, [cells[0], {**cells[1], "seeds": [3]}], seeds=[2, 1])


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

    study.schedule([Job("train", f"t{i}", job, (i,), kind="thread") for i in range(5)])
    study.schedule([Job("capture", "c", job, (9,), kind="thread")])
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
    execute_notebook("compare_checkpoints", out, dict(study_dir=str(Path(config.out_dir).resolve()),
                                                      output_dir=str(out)), stamp={})
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["cka"]) == len(metrics["cka"][0]) > 1 and set(metrics["retrieval_delta"])


def test_an_edited_notebook_is_redone(quick, tmp_path, monkeypatch):
    _, config, _ = quick
    study = Study(config, progress=False)
    job = next(job for job in study.notebook_jobs() if job.notebook == "embedding_umap")
    assert notebook_done(job.out, study.notebook_stamp(job))
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    monkeypatch.setattr("analysis.study.config.NOTEBOOK_DIR", tmp_path / "notebooks")
    edited = tmp_path / "notebooks" / f"{job.notebook}.ipynb"
    edited.write_text(edited.read_text().replace("n_neighbors = 15", "n_neighbors = 10"))
    assert not notebook_done(job.out, study.notebook_stamp(job))


def test_a_runs_next_step_starts_while_other_runs_still_train(tmp_path):
    """Pipelined steps: the capture of a finished run takes the free worker while the other run still trains."""
    study = Study(_load(tmp_path, [{"name": "a", "recipe": CAUSAL}], workers=2), progress=False)
    ran = []

    def train(name):
        if name == "slow":  # finishes only once the fast run's capture has run beside it
            deadline = time.monotonic() + 5
            while "capture-fast" not in ran and time.monotonic() < deadline:
                time.sleep(0.01)
        ran.append(f"train-{name}")

    def follow(name):
        return lambda: [Job("capture", name, ran.append, (f"capture-{name}",), kind="thread")]

    study.schedule([Job("train", n, train, (n,), kind="thread", follow=follow(n)) for n in ("slow", "fast")],
                   last=lambda: [Job("summaries", "s", ran.append, ("summary",), kind="thread")])
    assert ran == ["train-fast", "capture-fast", "train-slow", "capture-slow", "summary"]
    assert {o.target: o.status for o in study.outcomes} == {"slow": "done", "fast": "done", "s": "done"}
    assert set(study.step_times) == {"train", "capture", "summaries"}
    assert study.step_times["train"]["jobs"] == 2 and study.step_times["train"]["busy"] > 0


def _notebook(tmp_path, name, *cells):
    book = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('output_dir = "."', metadata={
        "tags": ["parameters"]}), *(nbformat.v4.new_code_cell(c) for c in cells)])
    book.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    path = tmp_path / f"{name}.ipynb"
    nbformat.write(book, path)
    return path


WRITE_METRICS = "import json, pathlib\npathlib.Path(output_dir, 'metrics.json').write_text(json.dumps(seen))"


def test_a_warm_kernel_runs_notebooks_apart_and_restarts_after_a_failure_or_timeout(tmp_path):
    from papermill.exceptions import PapermillExecutionError

    from analysis.study.kernels import WarmKernel

    first = _notebook(tmp_path, "first", "import numpy\nsecret = 42\nseen = {'first': True}", WRITE_METRICS)
    second = _notebook(tmp_path, "second", "seen = {'secret': 'secret' in dir(), 'numpy': 'numpy' in dir()}",
                       WRITE_METRICS)
    failing = _notebook(tmp_path, "failing", "secret = 1\nraise ValueError('no such attribute: colour')")
    hanging = _notebook(tmp_path, "hanging", "import time\ntime.sleep(60)")
    kernel = WarmKernel()
    try:
        def run(source, timeout=None):
            out = tmp_path / "out" / source.stem
            execute_notebook(source.stem, out, {"output_dir": str(out)}, {"n": 1}, kernel=kernel, timeout=timeout,
                             source=source)
            return json.loads((out / "metrics.json").read_text())

        assert run(first) == {"first": True}
        # neither the variable nor the import of the last notebook is visible
        assert run(second) == {"secret": False, "numpy": False}
        assert kernel.started == 1 and json.loads((tmp_path / "out/second/stamp.json").read_text()) == {"n": 1}
        with pytest.raises(PapermillExecutionError) as failed:
            run(failing)
        assert (failed.value.ename, failed.value.evalue) == ("ValueError", "no such attribute: colour")
        assert run(second) == {"secret": False, "numpy": False} and kernel.started == 2  # a new kernel now
        with pytest.raises(Exception, match="(?i)timed? ?out"):
            run(hanging, timeout=3)
        assert run(first) == {"first": True} and kernel.started == 3
        assert not (tmp_path / "out/failing/stamp.json").exists()
    finally:
        kernel.shutdown()


@pytest.mark.parametrize("extra, match", [
    ({"capture": {"retreival": {"n": 2}}}, r"unknown key\(s\) retreival in capture; valid keys: dataset"),
    ({"launcher": {"kind": "slurm"}}, r"launcher.kind: unknown launcher 'slurm'; one of local, submitit"),
    ({"launcher": {"kind": "submitit", "slurm": {"partition": "dev"}, "max_job": 4}},
     r"unknown key\(s\) max_job in launcher; valid keys: kind, folder, max_jobs, slurm"),
    ({"launcher": {"kind": "submitit-local", "slurm": {"partition": "dev"}}},
     "launcher.slurm applies to kind: submitit"),
    ({"launcher": {"folder": "x"}}, "the local one takes none"),
    ({"workers": "two"}, "workers must be an integer; got 'two'"),
])
def test_a_typo_anywhere_in_the_study_config_is_one_line_naming_the_key(tmp_path, extra, match):
    with pytest.raises(UsageError, match=match) as err:
        _load(tmp_path, [{"name": "a", "recipe": CAUSAL}], **extra)
    assert "\n" not in str(err.value)


def test_importing_the_study_command_loads_no_torch_and_the_report_no_study():
    command = ("import sys, argparse\nfrom analysis.study import register\nregister(argparse.ArgumentParser()"
               ".add_subparsers())\nheavy = [m for m in ('torch', 'transformers', 'papermill') if m in sys.modules]\n"
               "assert not heavy, heavy")
    report = "import sys, analysis.report\nassert 'analysis.study' not in sys.modules, 'the report imports the study'"
    for code in (command, report):
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
