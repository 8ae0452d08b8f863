"""The study's job bodies: train a run, capture it, execute a notebook. Top-level functions of plain arguments
(`RunDir`s, paths, dicts), so that a spawned worker, a submitit job or a warm kernel's thread can run them;
every path comes from `RunDir` / `StudyDir`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from analysis.io import read_json, write_json
from analysis.study_dir import METRICS_FILE, STAMP_FILE, RunDir


def train_job(recipe: str, overrides: list[str], run: RunDir) -> None:
    """Train the run; a checkpoint left by another recipe or base (`train_current`) is derived data: retrained."""
    from analysis.train import train

    if run.checkpoint.exists() and not train_current(recipe, overrides, run):
        shutil.rmtree(run.checkpoint)
    train(recipe, run.checkpoint, progress=False, overrides=overrides)


def train_current(recipe: str, overrides: list[str], run: RunDir) -> bool:
    """Whether the run's checkpoint is complete and trained by this recipe (with the overrides) from its base."""
    from analysis.train.recipe import load_recipe
    from analysis.train.runner import is_current

    return is_current(run.checkpoint, load_recipe(recipe, overrides=overrides))


def capture_masks(spec: dict) -> dict[str, list[str]]:
    """`{capture kind: mask types}` a capture spec (`Study.capture_spec`) asks for."""
    masks = {"probe": spec["masks"], "probe_b": spec.get("probe_b", []),
             "flow": spec["masks"] if spec["flow_n"] else []}
    if "retrieval" in spec:
        masks["retrieval"] = spec["retrieval"]["masks"]
    return masks


def capture_job(run: RunDir, spec: dict) -> None:
    """Capture the run's checkpoint into `probe` (the probing set, EOS rows), `probe_b` (the same samples with
    their target as B, under the bridged masks: without B a bridged mask is bidirectional), `flow` (a small
    full-pattern set with B) and, when `spec` has `retrieval`, mini-MMEB queries and candidates into
    `retrieval`. A capture begun with the same `spec` resumes; one begun with other settings is derived data
    and is captured afresh."""
    from analysis.data import build_mini_mmeb
    from analysis.lens.eos_lens import capture_retrieval
    from analysis.lens.recorder import capture

    if run.captures.exists() and read_json(run.capture_stamp) != spec:
        shutil.rmtree(run.captures)
    write_json(run.capture_stamp, spec)
    checkpoint, seed = run.checkpoint, spec["data_seed"]
    capture(checkpoint, spec["dataset"], spec["masks"], run.capture("probe"), n=spec["n"], seed=seed, patterns="eos")
    if spec.get("probe_b"):
        capture(checkpoint, spec["dataset"], spec["probe_b"], run.capture("probe_b"), n=spec["n"], seed=seed,
                patterns="eos", with_target=True)
    if spec["flow_n"]:  # 0: a seed captured under its own mask only (`CaptureSpec.all_masks_seeds`)
        capture(checkpoint, spec["dataset"], spec["masks"], run.capture("flow"), n=spec["flow_n"], seed=seed,
                patterns="full", with_target=True)
    if "retrieval" in spec:
        retrieval = spec["retrieval"]
        datasets = build_mini_mmeb(retrieval["n"], seed=seed, splits=tuple(retrieval["splits"]))
        capture_retrieval(checkpoint, datasets, retrieval["masks"], run.capture("retrieval"))


def capture_complete(run: RunDir, spec: dict) -> bool:
    """Whether the run's captures were made with `spec` and every one of them finished."""
    return read_json(run.capture_stamp) == spec and all(
        (read_json(index) or {}).get("complete") for index in run.capture_indices(capture_masks(spec)))


def notebook_done(out: Path, stamp: dict) -> bool:
    """Whether the notebook executed into `out` succeeded with this stamp (`plan.notebook_stamp`)."""
    return (out / METRICS_FILE).is_file() and read_json(out / STAMP_FILE) == stamp


def execute_notebook(name: str, out: Path, params: dict, stamp: dict, *, kernel=None, timeout: float | None = None,
                     source: Path | None = None) -> None:
    """Execute `notebooks/<name>.ipynb` (or `source`) with `params` into `out/<name>.ipynb` through papermill;
    metrics land in `out/metrics.json`, and `stamp` in `out/stamp.json` once it has succeeded.

    kernel: a `kernels.WarmKernel` to run in (its namespace is cleared afterwards; a failure or a timeout
        restarts it), else a fresh kernel for this notebook. timeout: seconds per cell.
    A failing cell raises papermill's `PapermillExecutionError` (its `ename` / `evalue` name the notebook's error).
    """
    import papermill

    from analysis.study import config

    source = source or config.NOTEBOOK_DIR / f"{name}.ipynb"
    out.mkdir(parents=True, exist_ok=True)
    (out / METRICS_FILE).unlink(missing_ok=True)
    engine = {} if kernel is None else dict(engine_name=kernel.ENGINE, km=kernel.manager())
    # every path is absolute and no `cwd=`: papermill would chdir this whole process, racing the other threads
    try:
        papermill.execute_notebook(str(source), str(out / f"{name}.ipynb"), parameters=params, kernel_name="python3",
                                   progress_bar=False, execution_timeout=timeout, **engine)
    except BaseException:
        if kernel is not None:
            kernel.shutdown()  # in whatever state the failure or timeout left it: the next notebook starts afresh
        raise
    if kernel is not None:
        kernel.reset()
    if not (out / METRICS_FILE).is_file():
        raise RuntimeError(f"{name} ran but wrote no {METRICS_FILE} in {out}")
    write_json(out / STAMP_FILE, stamp)
