"""The study: a grid of recipes -> train -> capture -> notebooks -> figures -> report.

A study config (YAML, `config.StudyConfig`) lists cells of the ablation grid (a recipe file plus overrides; the
cell's mask type and recon weight λ are read from that recipe), the seeds, what to capture, which notebooks to
run and where the jobs run (`launcher:`). The study folder's layout belongs to `analysis.study_dir.StudyDir`.

    config.py     the config, its one strict loader and its checks
    plan.py       what runs for each run: training overrides, capture settings, notebooks and their parameters,
                  the stamps that say when finished work is redone
    jobs.py       the job bodies: train, capture, execute a notebook
    kernels.py    warm notebook kernels (one per worker, reused across notebooks)
    launchers.py  where jobs run: the local pool or submitit (SLURM, or its local executor)
    runner.py     `Study`: pipelined scheduling, outcomes, timings, the report
    command.py    `cocoa-lens study` (imports nothing heavy: `register` is called for `cocoa-lens --help`)

Importing this package is cheap; `StudyConfig`, `Study` and the rest load on first use.
"""

from __future__ import annotations

import importlib

from analysis.study.command import register

_EXPORTS = {
    "StudyConfig": "config", "Cell": "config", "CaptureSpec": "config", "RetrievalSpec": "config",
    "LauncherSpec": "config", "NOTEBOOK_DIR": "config", "LAYERWISE": "config", "PER_RUN_NOTEBOOKS": "config",
    "SUMMARY_NOTEBOOKS": "config", "notebook_parameters": "config",
    "NotebookJob": "plan", "Plan": "plan",
    "Study": "runner", "STEPS": "runner",
    "Job": "launchers", "share_cores": "launchers", "THREAD_VARS": "launchers",
    "train_job": "jobs", "capture_job": "jobs", "capture_complete": "jobs", "execute_notebook": "jobs",
    "notebook_done": "jobs",
    "Outcome": "analysis.report", "RunLog": "analysis.report",
}

__all__ = ["register", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module if "." in module else f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
