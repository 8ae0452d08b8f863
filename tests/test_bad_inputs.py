"""Nothing wrong passes silently (issue 12): every bad input of the issue, as a row run against the real CLI.

A row is `(argv, expected exit code, expected message fragment)`. Exit 2 with one line
`cocoa-lens <command>: ...` (or argparse's `usage` + error line) for a bad input, 1 for a study whose
jobs failed, never a traceback. `{name}` in an argv is filled from the fixtures below (tiny checkpoints
and recipes made once). Most rows run `analysis.cli.main` in-process; the last rows run the console
command in a subprocess, as a user would.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from analysis.cli import main
from analysis.train import Recipe, apply_overrides, train

ROOT = Path(__file__).resolve().parent.parent
BRIDGED = str(ROOT / "experiments/recipes/cocoa_bridged.yaml")
CAUSAL = str(ROOT / "experiments/recipes/contrastive_causal.yaml")
TINY = ["backbone.hidden_size=32", "backbone.vision_width=32", "device=cpu", "eval.n_per_dataset=2"]


def _write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def _read_only_dir(tmp: Path) -> str:
    """A directory nobody may write into (root ignores permission bits: /sys refuses even root)."""
    if os.geteuid() != 0:
        path = tmp / "read-only"
        path.mkdir()
        path.chmod(0o555)
        return str(path / "out")
    if os.access("/sys", os.W_OK) and not Path("/sys/class").is_dir():
        pytest.skip("no read-only location for root here")
    return "/sys/cocoa-lens-out"


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """Every file a row names: recipes, study configs and checkpoints (trained once, then damaged copies)."""
    tmp = tmp_path_factory.mktemp("bad")
    recipe = apply_overrides(Recipe(name="tiny"), [*TINY, "stages.bridged.steps=3", "stages.bridged.batch_size=4",
                                                   "stages.contrastive.steps=2", "stages.contrastive.batch_size=4"])
    p = {"tmp": str(tmp), "recipe": _write(tmp / "tiny.yaml", recipe.to_yaml())}
    trained = train(recipe, tmp / "trained", progress=False)
    p["trained"] = str(trained)
    for name in ("collapsed", "truncated", "bad_config", "tampered", "changing"):
        shutil.copytree(trained, tmp / name)
        p[name] = str(tmp / name)
    weights = load_file(str(trained / "model.safetensors"))
    save_file({k: torch.zeros_like(v) if k == "model.norm.weight" else v for k, v in weights.items()},
              str(tmp / "collapsed" / "model.safetensors"), metadata={"format": "pt"})
    data = (trained / "model.safetensors").read_bytes()
    (tmp / "truncated" / "model.safetensors").write_bytes(data[: len(data) // 2])
    (tmp / "bad_config" / "config.json").write_text("{not json")
    (tmp / "tampered" / "model.safetensors").write_bytes(data[:-64] + bytes(64))  # same size, other weights
    p["a_file"] = _write(tmp / "a_file.txt", "x")
    p["read_only"] = _read_only_dir(tmp)
    text = recipe.to_yaml()
    p["yaml_error"] = _write(tmp / "yaml_error.yaml", text + "stages: {contrastive: [1\n")
    p["inf_steps"] = _write(tmp / "inf_steps.yaml", text.replace("steps: 2", "steps: .inf"))
    p["recon_one"] = _write(tmp / "recon_one.yaml", text.replace("recon_weight: 1.0", "recon_weight: one"))
    p["no_stages"] = _write(tmp / "no_stages.yaml", "name: empty\n")

    def study(name, cells, **extra):
        spec = {"name": name, "cells": cells, "seeds": [0], "workers": 1, "out_dir": str(tmp / name / "runs"),
                "report_dir": str(tmp / name / "report"), "notebooks": [], **extra}
        p[f"study_{name}"] = _write(tmp / f"study_{name}.yaml", yaml.safe_dump(spec))

    study("key_typo", [{"name": "a", "recipie": CAUSAL}])
    study("unknown_mask", [{"name": "a", "recipe": CAUSAL, "mask_type": "bridged"}])
    study("bad_recipe", [{"name": "a", "recipe": str(tmp / "nowhere.yaml")}])
    study("inf_set", [{"name": "a", "recipe": CAUSAL, "set": ["stages.contrastive.steps=.inf"]}])
    study("mislabelled", [{"name": "a", "recipe": BRIDGED, "mask_type": "causal", "recon_weight": 0.5}])
    study("recon_one", [{"name": "a", "recipe": BRIDGED, "recon_weight": "one"}])
    study("escape", [{"name": "../trained", "recipe": CAUSAL}])
    p["injected"] = str(tmp / "injected")
    study("injection", [{"name": "a", "recipe": CAUSAL}],
          notebook_params={"eos_probing": {f"x = 1\nimport os; os.system('id > {p['injected']}')  #": 1}})
    study("failing", [{"name": "nan", "recipe": p["recipe"], "set": ["stages.bridged.lr=1e3"]},
                      {"name": "fine", "recipe": p["recipe"]}])
    p["study_yaml_error"] = _write(tmp / "study_yaml_error.yaml", "name: x\ncells: [{name: a\n")
    return p


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's errors
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
T = "train --recipe {recipe} --out {tmp}/{out}"
ROWS = [
    # evaluate and capture: opening a checkpoint
    ("evaluate --checkpoint {tmp}/missing --n 2", 2, "no checkpoint at"),
    ("evaluate --n 0", 2, "must be at least 1"),
    ("evaluate --dtype float99 --n 2", 2, "float99"),
    pytest.param("evaluate --device cuda --n 2", 2, "CUDA is not available", marks=NO_GPU),
    ("evaluate --checkpoint {truncated} --n 2", 2, "model.safetensors is truncated"),
    ("evaluate --checkpoint {bad_config} --n 2", 2, "config.json is not valid JSON"),
    ("capture --checkpoint {trained} --out {a_file} --n 2", 2, "a_file.txt"),
    ("capture --checkpoint {trained} --out {read_only} --n 2", 2, "cocoa-lens capture: "),
    ("capture --checkpoint {trained} --out {tmp}/cap --n 2 --batch-size 0", 2, "must be at least 1"),
    # train
    (T.format(recipe="{recipe}", tmp="{tmp}", out="nan") + " --set stages.bridged.lr=1e3", 2,
     "at stage bridged, step"),
    (T.format(recipe="{no_stages}", tmp="{tmp}", out="empty"), 2, "has no stage with steps > 0"),
    (T.format(recipe="{yaml_error}", tmp="{tmp}", out="y"), 2, "yaml_error.yaml is not valid YAML"),
    (T.format(recipe="{inf_steps}", tmp="{tmp}", out="inf"), 2, "stages.contrastive.steps must be an integer; got inf"),
    (T.format(recipe="{recon_one}", tmp="{tmp}", out="one"), 2, "recon_weight must be a number; got 'one'"),
    (T.format(recipe="{tmp}/nowhere.yaml", tmp="{tmp}", out="n"), 2, "no recipe at"),
    (T.format(recipe="{recipe}", tmp="{tmp}", out="k") + " --set k=[1", 2, "unknown key 'k'"),
    (T.format(recipe="{recipe}", tmp="{tmp}", out="k") + " --set data.tasks=[1", 2, "the value is not valid YAML"),
    (T.format(recipe="{recipe}", tmp="{tmp}", out="b") + " --set stages.contrastive.batch_size=0", 2,
     "stages.contrastive.batch_size must be >= 2"),
    (T.format(recipe="{recipe}", tmp="{tmp}", out="b") + " --set eval.batch_size=0", 2, "eval.batch_size must be > 0"),
    ("train --recipe {recipe} --out {a_file}", 2, "is a file, not a directory"),
    ("train --recipe {recipe} --out {read_only}", 2, "cannot write into"),
    ("train --recipe {recipe} --out {tampered} --quiet", 2, "changed after training finished"),
    ("train --recipe {recipe} --out {truncated} --quiet", 2, "is damaged"),
    # study: the whole config is checked before anything runs
    ("study --config {study_key_typo}", 2, "unknown key(s) recipie in cells[0]; valid keys: name, recipe"),
    ("study --config {study_unknown_mask}", 2, "unknown mask type 'bridged'"),
    ("study --config {study_bad_recipe}", 2, "nowhere.yaml, which does not exist"),
    ("study --config {study_yaml_error}", 2, "study_yaml_error.yaml is not valid YAML"),
    ("study --config {study_inf_set}", 2, "stages.contrastive.steps must be an integer; got inf"),
    ("study --config {study_mislabelled}", 2, "states mask_type causal, recon_weight 0.5, but its recipe"),
    ("study --config {study_recon_one}", 2, "recon_weight must be a number; got 'one'"),
    ("study --config {study_escape}", 2, "'../trained' is not a plain folder name"),
    ("study --config {study_injection}", 2, "is not a parameter of eos_probing"),
]


def _argv(row: str, paths: dict) -> list[str]:
    return [part.format(**paths) for part in row.split()]


@pytest.mark.parametrize("row, code, fragment", ROWS)
def test_bad_input_is_one_line(row, code, fragment, paths, capsys):
    got, out, err = _cli(_argv(row, paths), capsys)
    assert "Traceback" not in err
    assert got == code, (got, out, err)
    assert fragment in err, err
    command = row.split()[0]
    assert err.rstrip().splitlines()[-1].startswith(f"cocoa-lens {command}"), err


def test_injection_and_escape_run_nothing(paths, capsys):
    for name in ("study_injection", "study_escape"):
        assert _cli(["study", "--config", paths[name]], capsys)[0] == 2
        assert not Path(yaml.safe_load(Path(paths[name]).read_text())["out_dir"]).exists()
    assert not Path(paths["injected"]).exists()


def test_collapsed_checkpoint_is_flagged_never_a_silent_one(paths, capsys):
    """The final norm zeroed: every embedding is zero, MMEB's rule gives 1.0 on every dataset."""
    code, out, err = _cli(["evaluate", "--checkpoint", paths["collapsed"], "--n", "4"], capsys)
    assert "Traceback" not in err
    assert (code == 2 and "degenerate" in err) or (code == 0 and "degenerate" in out), (code, out, err)
    if code == 0:
        robust = next(line for line in out.splitlines() if "overall (ties split evenly)" in line)
        assert float(robust.split()[-1]) < 0.5


def test_a_capture_refuses_to_resume_after_its_checkpoint_changed(paths, capsys):
    out = f"{paths['tmp']}/changing-capture"
    argv = ["capture", "--checkpoint", paths["changing"], "--out", out, "--mask", "causal", "--n", "2"]
    assert _cli(argv, capsys)[0] == 0
    weights = load_file(f"{paths['changing']}/model.safetensors")
    save_file({k: v + 1 for k, v in weights.items()}, f"{paths['changing']}/model.safetensors",
              metadata={"format": "pt"})  # retrained into the same folder
    code, _, err = _cli(argv, capsys)
    assert code == 2 and "changed since the capture" in err and "Traceback" not in err, err


def _console(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "analysis.cli", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)


def test_console_bad_input_exits_2_with_one_line(paths):
    run = _console("train", "--recipe", paths["no_stages"], "--out", f"{paths['tmp']}/console")
    assert run.returncode == 2 and run.stderr.strip().splitlines() == [
        "cocoa-lens train: recipe 'empty' has no stage with steps > 0; give one, e.g. --set "
        "stages.contrastive.steps=100 (pretrain, warmup, bridged, contrastive)"]


def test_console_study_with_a_failed_job_stops_and_exits_1(paths):
    run = _console("study", "--config", paths["study_failing"])
    assert run.returncode == 1, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert "FAILED train nan-s0: NonFiniteTraining" in run.stderr and "at stage bridged, step" in run.stderr
    assert "stopped after the first failure" in run.stderr
    report = Path(yaml.safe_load(Path(paths["study_failing"]).read_text())["report_dir"]) / "report.md"
    assert "nan-s0" in report.read_text().split("## Failures")[1]
