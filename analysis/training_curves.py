"""The training-loss curves of a study's runs, read through `StudyDir` (each checkpoint's `losses.json`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from analysis.io import read_json
from analysis.study_dir import StudyDir

LOSSES_FILE = "losses.json"  # in a checkpoint: {stage: [{"step", "loss", ...}, ...]}


def first_seed_losses(study: StudyDir, rows: Sequence[Mapping]) -> dict[str, tuple[list, list]]:
    """`{"<cell>/<stage>": (steps, losses)}` of each cell's lowest seed among `rows` (`report.collect_scores`)."""
    first = {}
    for r in rows:
        first[r["cell"]] = min(first.get(r["cell"], r["seed"]), r["seed"])
    curves = {}
    for cell, seed in first.items():
        losses = read_json(study.run(f"{cell}-s{seed}").checkpoint / LOSSES_FILE) or {}
        for stage, points in losses.items():
            curves[f"{cell}/{stage}"] = ([p["step"] for p in points], [p["loss"] for p in points])
    return curves
