"""Past one process: torchrun (2 CPU processes, gloo) capture / evaluate / train equal one process, a capture
killed on one rank resumes to the same result, `--device-map auto` captures like the plain path, and every
cocoa-lens option survives torchrun's own argument parser.

Run as a script (`python -m torch.distributed.run ... tests/test_distributed.py ARGS`) this file is the
cocoa-lens command line, with rank 1 killed after COCOA_LENS_TEST_KILL_AFTER shards when that is set.
"""

import argparse
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
KILL = "COCOA_LENS_TEST_KILL_AFTER"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args: str, script: str = "-m analysis.cli", env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(_free_port()), *script.split(), *args]
    environment = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300)


def _assert_same_capture(a_dir: Path, b_dir: Path) -> None:
    from analysis.lens.store import Capture

    a, b = Capture.open(a_dir), Capture.open(b_dir)
    assert len(a) == len(b) and a.meta["n"] == b.meta["n"] and b.meta["complete"]
    assert a.records == b.records
    for i in range(len(a)):
        x, y = a.sample(i), b.sample(i)
        for field in dataclasses.fields(x):
            value, other = getattr(x, field.name), getattr(y, field.name)
            if isinstance(value, np.ndarray):
                assert np.array_equal(value, other), (i, field.name)
            else:
                assert value == other, (i, field.name)
    for name in ("eos_resid", "content_mean", "eos_final", "embedding"):
        assert np.array_equal(a._stack(name), b._stack(name)), name


# -- slicing ------------------------------------------------------------------------------------------
def test_blocks_are_contiguous_disjoint_and_cover_in_order():
    from analysis.distributed import blocks, world

    for n in range(0, 12):
        for size in range(1, 5):
            parts = blocks(n, size)
            assert [i for p in parts for i in p] == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert world() == (0, 1)


# -- torchrun's parser ------------------------------------------------------------------------------------
def _options():
    from analysis.cli import COMMANDS, build_parser

    for name in COMMANDS:  # each command's parser is built with its options only when it is the one run
        parser = build_parser(name)
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        for action in subparsers.choices[name]._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                yield name, action


def test_torchrun_passes_every_option_through():
    """torchrun's argparse allows abbreviations, also after `-m module`: an option that abbreviates one of its own
    (`--n` for --nnodes / --nproc-per-node) would be taken or refused. Every option's primary (longest) name must
    reach cocoa-lens untouched; a shorter alias may only be refused loudly, never silently taken."""
    from torch.distributed.run import get_args_parser

    checked = 0
    for command, action in _options():
        value = [] if action.nargs == 0 else ["1"]
        for spelling in action.option_strings:
            argv = ["--nproc-per-node", "2", "-m", "analysis.cli", command, spelling, *value]
            primary = spelling == max(action.option_strings, key=len)
            try:
                parsed = get_args_parser().parse_args(argv)
            except SystemExit:
                assert not primary, f"torchrun refuses `{command} {spelling}`"
                continue
            assert parsed.training_script_args == [command, spelling, *value], (command, spelling)
            assert parsed.nproc_per_node == "2" and parsed.nnodes == "1:1"
            checked += 1
    assert checked > 20


# -- capture --------------------------------------------------------------------------------------------------
CAPTURE = ["capture", "--n-samples", "12", "--batch-size", "3", "--shard-size", "2", "--mask", "causal,eos_bridged",
           "--patterns", "eos+b", "--with-target", "--hooks", "blocks.0.hook_resid_mid"]


@pytest.fixture(scope="module")
def single_capture(tmp_path_factory):
    from analysis.cli import main

    out = tmp_path_factory.mktemp("single")
    assert main([*CAPTURE, "--out", str(out)]) == 0
    return out


def test_two_process_capture_killed_on_one_rank_resumes_to_the_single_process_capture(single_capture, tmp_path):
    out = tmp_path / "dp"
    killed = _torchrun(*CAPTURE, "--out", str(out), script=__file__, env={KILL: "1"})
    assert killed.returncode != 0, killed.stdout + killed.stderr
    rank1 = json.loads((out / "causal" / "rank-00001" / "index.json").read_text())
    assert not rank1["complete"] and 0 < rank1["n_done"] < rank1["n"]
    assert not (out / "causal" / "index.json").exists()  # no merged index before every rank is done
    done = _torchrun(*CAPTURE, "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("causal ") == 1  # rank 0 alone reports
    for mask in ("causal", "eos_bridged"):
        _assert_same_capture(single_capture / mask, out / mask)
    index = json.loads((out / "causal" / "index.json").read_text())
    assert index["world_size"] == 2 and index["shards"][0]["name"] == "rank-00000/shard-00000"
    records = json.loads((out / "causal" / "rank-00000" / "shard-00000" / "records.json").read_text())
    assert all(r["image_grid"] is None or len(r["image_grid"]) == 3 for r in records)
    assert any(r["image_grid"] for r in records)


def test_device_map_auto_captures_like_the_plain_path(single_capture, tmp_path):
    from analysis.cli import main
    from analysis.models import build_tiny, save_checkpoint

    model, processor = build_tiny("tiny-qwen2.5-vl", seed=0)
    save_checkpoint(model, processor, tmp_path / "ckpt")
    common = [*CAPTURE[:5], "--mask", "causal", "--checkpoint", str(tmp_path / "ckpt")]
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert main([*common, "--out", str(tmp_path / "auto"), "--device-map", "auto"]) == 0
    _assert_same_capture(tmp_path / "plain" / "causal", tmp_path / "auto" / "causal")
    assert main([*common, "--out", str(tmp_path / "x"), "--device-map", "auto", "--device", "cpu"]) == 2


# -- evaluate ---------------------------------------------------------------------------------------------------
def test_two_process_evaluate_equals_single_process(tmp_path):
    from analysis.cli import main

    args = ["evaluate", "--n-samples", "6", "--batch-size", "8"]
    assert main([*args, "--json", str(tmp_path / "single.json")]) == 0
    run = _torchrun(*args, "--json", str(tmp_path / "dp.json"))
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("P@1 of") == 1  # rank 0 alone reports
    assert json.loads((tmp_path / "dp.json").read_text()) == json.loads((tmp_path / "single.json").read_text())


# -- train -------------------------------------------------------------------------------------------------------
RECIPE = """\
name: dp
backbone: {name: tiny-qwen2.5-vl, hidden_size: 32, vision_width: 32}
stages:
  warmup: {steps: 2, lr: 1.0e-4, batch_size: 6, mae_weight: 0.5}
  bridged: {steps: 2, lr: 1.0e-4, batch_size: 6, recon_weight: 0.5, temperature: 0.5}
  contrastive: {steps: 2, lr: 1.0e-4, batch_size: 6, chunk_size: 2, temperature: 0.5}
device: cpu
eval: {n_per_dataset: 0}
"""


def test_two_process_training_equals_single_process(tmp_path):
    """Every stage (MNTP + MAE, λ-mixed stage 2, InfoNCE with gradient caching) on 2 gloo ranks, each half of
    each global batch: the loss curves equal one process's within 1e-5, the final weights within 5e-5."""
    import torch
    from safetensors.torch import load_file

    from analysis.train import train

    recipe = tmp_path / "dp.yaml"
    recipe.write_text(RECIPE)
    run = _torchrun("train", "--recipe", str(recipe), "--out", str(tmp_path / "dp"), "--quiet")
    assert run.returncode == 0, run.stdout + run.stderr
    torch.set_num_threads(1)
    train(recipe, tmp_path / "single", progress=False)
    single, dp = (json.loads((tmp_path / d / "losses.json").read_text()) for d in ("single", "dp"))
    assert single.keys() == dp.keys() == {"warmup", "bridged", "contrastive"}
    for stage in single:
        for a, b in zip(single[stage], dp[stage], strict=True):
            for key in a:
                assert a[key] == pytest.approx(b[key], abs=1e-5), (stage, a["step"], key)
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("single", "dp"))
    assert a.keys() == b.keys()
    # each rank cuts its rows to their own longest (`PairBatch.parts`): other matrix shapes, other float rounding,
    # which Adam carries through the steps (a wrong gradient sum moves weights by ~1e-3)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 5e-5, worst
    assert not (tmp_path / "dp" / "stages" / "contrastive.partial.pt").exists()


if __name__ == "__main__":  # a cocoa-lens command line whose rank 1 dies after KILL shards (see the docstring)
    if os.environ.get(KILL) and os.environ.get("RANK") == "1":
        from analysis.lens.store import ShardWriter

        flush, budget = ShardWriter.flush, [int(os.environ[KILL])]

        def flush_then_die(self):
            flush(self)
            budget[0] -= 1
            if budget[0] <= 0:
                os.kill(os.getpid(), signal.SIGKILL)

        ShardWriter.flush = flush_then_die
    from analysis.cli import main

    sys.exit(main())
