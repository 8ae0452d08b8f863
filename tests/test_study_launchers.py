"""The study's jobs dispatched through submitit (its local executor here; SLURM on a cluster) instead of the
local pool: the same tables, failures reported the same way."""

import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("submitit")

from test_study import CAUSAL, quick_spec, run_quick  # noqa: E402 - the session's one quick study on the local pool

from analysis.report import ablation_table, collect_probes, collect_scores  # noqa: E402
from analysis.study import Job, Study, StudyConfig  # noqa: E402


def test_the_quick_grid_through_submitit_gives_the_local_pools_table(tmp_path_factory, tmp_path):
    _, local, _ = run_quick(tmp_path_factory)
    path = quick_spec(tmp_path, launcher={"kind": "submitit-local", "folder": str(tmp_path / "submitit")},
                      notebooks=["eos_probing", "ablation_summary"])
    config = StudyConfig.load(path)
    outcomes = Study(config, progress=False).run()
    assert not [o for o in outcomes if o.status != "done"], outcomes
    assert sorted((o.step, o.target) for o in outcomes if o.step != "notebooks") == [
        ("capture", "bridged-l1-s0"), ("capture", "contrastive-causal-s0"),
        ("summaries", "notebooks/summary/ablation_summary"), ("train", "bridged-l1-s0"),
        ("train", "contrastive-causal-s0")]
    # every job ran as a submitit job (its pickles and logs in the launcher's folder)
    assert len(list((tmp_path / "submitit").glob("*_log.out"))) == len(outcomes)
    # the same scores, to the last digit, as the local pool's run of the same grid
    assert ablation_table(collect_scores(config.out_dir)) == ablation_table(collect_scores(local.out_dir))
    ours = json.loads((Path(config.report_dir) / "ablation.json").read_text())
    assert ours == json.loads((Path(local.report_dir) / "ablation.json").read_text())
    assert {r["cell"] for r in collect_probes(config.out_dir)} == {"contrastive-causal", "bridged-l1"}


def test_a_failed_submitit_job_is_one_line_and_the_others_go_on(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "cells": [{"name": "a", "recipe": CAUSAL}], "out_dir": str(tmp_path),
                                    "launcher": {"kind": "submitit-local"}}))
    study = Study(StudyConfig.load(path), progress=False, keep_going=True)
    study.schedule([Job("train", "bad", json.loads, ("{",)), Job("train", "good", json.loads, ("1",))])
    outcomes = {o.target: o for o in study.outcomes}
    assert outcomes["good"].status == "done" and outcomes["bad"].status == "failed"
    assert outcomes["bad"].error.startswith("JSONDecodeError: Expecting property name enclosed in double quotes")
    assert "_log.err" in outcomes["bad"].error and (tmp_path / "submitit").is_dir()  # the default folder


def test_slurm_parameters_reach_submitit(monkeypatch):
    import submitit

    from analysis.errors import UsageError
    from analysis.study.config import LauncherSpec
    from analysis.study.launchers import SubmititLauncher

    spec = LauncherSpec(kind="submitit", slurm={"partition": "dev", "gpus_per_node": 1, "timeout_min": 30})
    spec.validate("launcher")
    with pytest.raises(UsageError, match="launcher kind submitit needs a SLURM cluster"):  # no srun here
        SubmititLauncher(spec, Path("/tmp/never-written"), workers=2)
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # as on a cluster
    launcher = SubmititLauncher(spec, Path("/tmp/never-written"), workers=2)
    parameters = launcher.executor._executor.parameters
    assert parameters["partition"] == "dev" and parameters["gpus_per_node"] == 1 and parameters["time"] == 30
    assert launcher.slots == 2
    launcher.close()
    with pytest.raises(UsageError, match="launcher.slurm: .*partitio"):
        SubmititLauncher(LauncherSpec(kind="submitit", slurm={"partitio": "dev"}), Path("/tmp/never-written"), 2)
