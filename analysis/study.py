"""The study: a grid of recipes -> train -> capture -> notebooks -> figures -> report.

A study config (YAML) lists cells of the ablation grid (a recipe file plus overrides, placed at a
mask type and a recon weight λ), the seeds, what to capture and which notebooks to run. Every step is
idempotent: a second run trains, captures and executes nothing that already finished; a failing step is
reported and the rest goes on.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable

import yaml
from tqdm.auto import tqdm

from analysis.io import write_json
from analysis.masks import MASK_TYPES, check_mask_type
from analysis.report import STUDY_FILE, write_report

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
PER_RUN_NOTEBOOKS = ("attention_flow", "eos_probing", "embedding_umap")
SUMMARY_NOTEBOOKS = ("ablation_summary", "compare_checkpoints")


@dataclass
class Cell:
    """One cell of the ablation grid: a recipe (plus overrides) at (mask type, λ)."""

    name: str
    recipe: str
    mask_type: str
    recon_weight: float
    set: list[str] = field(default_factory=list)
    note: str = ""


@dataclass
class CaptureSpec:
    """What each checkpoint is captured on: probing set (EOS rows) and a small full-pattern flow set."""

    dataset: str = "mini-mmeb"
    n: int = 400
    flow_n: int = 8
    masks: list[str] = field(default_factory=lambda: list(MASK_TYPES))
    seeds: list[int] = field(default_factory=lambda: [0])


@dataclass
class StudyConfig:
    name: str
    cells: list[Cell]
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    out_dir: str = "experiments/runs/default"
    report_dir: str = "figures"
    workers: int = 2
    capture: CaptureSpec = field(default_factory=CaptureSpec)
    notebooks: list[str] = field(default_factory=lambda: list(PER_RUN_NOTEBOOKS + SUMMARY_NOTEBOOKS))
    notebook_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    compare: list[str] = field(default_factory=list)
    recipe_set: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path) -> "StudyConfig":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no study config at {path}")
        data = yaml.safe_load(path.read_text()) or {}
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {unknown}; valid keys: {', '.join(sorted(known))}")
        cells = [Cell(**c) for c in data.pop("cells", [])]
        capture = CaptureSpec(**data.pop("capture", {}))
        config = cls(cells=cells, capture=capture, **data)
        config.validate(path)
        return config

    def validate(self, source: Path | str = "config") -> None:
        if not self.cells:
            raise ValueError(f"{source}: no cells; list at least one under `cells:`")
        names = [c.name for c in self.cells]
        if len(set(names)) != len(names):
            raise ValueError(f"{source}: cell names repeat: {names}")
        for c in self.cells:
            check_mask_type(c.mask_type)
            if not Path(c.recipe).is_file():
                raise FileNotFoundError(f"{source}: cell {c.name!r} names recipe {c.recipe}, which does not exist")
        for m in self.capture.masks:
            check_mask_type(m)
        valid = PER_RUN_NOTEBOOKS + SUMMARY_NOTEBOOKS
        bad = [n for n in [*self.notebooks, *self.notebook_params] if n not in valid]
        if bad:
            raise ValueError(f"{source}: unknown notebook(s) {bad}; valid: {', '.join(valid)}")
        bad = [n for n in self.compare if n not in names]
        if bad or len(self.compare) not in (0, 2):
            raise ValueError(f"{source}: compare must name two cells from {names}; got {self.compare}")


@dataclass
class Run:
    """One trained checkpoint: a cell at a seed."""

    cell: Cell
    seed: int
    root: Path

    @property
    def name(self) -> str:
        return f"{self.cell.name}-s{self.seed}"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoints" / self.name

    @property
    def captures(self) -> Path:
        return self.root / "captures" / self.name

    @property
    def overrides(self) -> list[str]:
        return [*self.cell.set, f"seed={self.seed}", f"name={self.name}"]


@dataclass
class Outcome:
    """What happened to one unit of work."""

    step: str
    target: str
    status: str  # done | skipped | failed
    seconds: float = 0.0
    error: str = ""


# -- workers (top level so a spawned process can import them) -------------------------------------

def _threads(workers: int) -> None:
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, workers)))


def _train_job(recipe: str, overrides: list[str], out: str, workers: int) -> None:
    _threads(workers)
    from analysis.train import train

    train(recipe, out, progress=False, overrides=overrides)


def _capture_job(checkpoint: str, out: str, spec: dict, seed: int, workers: int) -> None:
    _threads(workers)
    from analysis.lens.recorder import capture

    capture(checkpoint, spec["dataset"], spec["masks"], Path(out) / "probe", n=spec["n"], seed=seed, patterns="eos")
    capture(checkpoint, spec["dataset"], spec["masks"], Path(out) / "flow", n=spec["flow_n"], seed=seed,
            patterns="full", with_target=True)


def _capture_complete(out: Path, masks: list[str]) -> bool:
    return all((out / kind / m / "index.json").is_file() and
               json.loads((out / kind / m / "index.json").read_text()).get("complete")
               for kind in ("probe", "flow") for m in masks)


# -- the study ------------------------------------------------------------------------------------

class Study:
    """Runs a `StudyConfig`; `run()` returns the outcomes and writes the report."""

    def __init__(self, config: StudyConfig, progress: bool = True):
        self.config = config
        self.root = Path(config.out_dir).resolve()  # notebooks run in their own folder: pass absolute paths
        self.progress = progress
        self.runs = [Run(c, s, self.root) for c in config.cells for s in config.seeds]
        self.outcomes: list[Outcome] = []

    def run(self) -> list[Outcome]:
        os.environ.setdefault("NUMBA_CACHE_DIR", str(self.root.parent / ".numba_cache"))
        write_json(self.root / STUDY_FILE, asdict(self.config))
        start = time.perf_counter()
        self.train()
        self.capture()
        self.notebooks()
        write_report(self, time.perf_counter() - start)
        return self.outcomes

    # each step: a list of (target, is_done, job) run in parallel, outcomes recorded
    def _parallel(self, step: str, jobs: list[tuple[str, bool, Callable, tuple]], processes: bool) -> None:
        todo = []
        for target, done, fn, args in jobs:
            if done:
                self.outcomes.append(Outcome(step, target, "skipped"))
            else:
                todo.append((target, fn, args))
        if not todo:
            return
        pool = (ProcessPoolExecutor(self.config.workers, mp_context=get_context("spawn")) if processes
                else ThreadPoolExecutor(self.config.workers))
        with pool, tqdm(total=len(todo), desc=step, disable=not self.progress) as bar:
            started = {pool.submit(fn, *args): (target, time.perf_counter()) for target, fn, args in todo}
            for future in as_completed(started):
                target, t0 = started[future]
                try:
                    future.result()
                    self.outcomes.append(Outcome(step, target, "done", time.perf_counter() - t0))
                except Exception as exc:  # noqa: BLE001 - report and go on
                    detail = getattr(exc, "ename", type(exc).__name__) + ": " + str(getattr(exc, "evalue", exc))
                    self.outcomes.append(Outcome(step, target, "failed", time.perf_counter() - t0, detail.strip()))
                    tqdm.write(f"{step} {target} FAILED: {detail.strip()}")
                bar.update()

    def train(self) -> None:
        from analysis.train import is_complete

        jobs = [(run.name, is_complete(run.checkpoint), _train_job,
                 (run.cell.recipe, [*self.config.recipe_set, *run.overrides], str(run.checkpoint),
                  self.config.workers)) for run in self.runs]
        self._parallel("train", jobs, processes=True)

    def trained(self) -> list[Run]:
        from analysis.train import is_complete

        return [r for r in self.runs if is_complete(r.checkpoint)]

    def captured_runs(self) -> list[Run]:
        return [r for r in self.trained() if r.seed in self.config.capture.seeds]

    def capture(self) -> None:
        spec = asdict(self.config.capture)
        jobs = [(run.name, _capture_complete(run.captures, spec["masks"]), _capture_job,
                 (str(run.checkpoint), str(run.captures), spec, run.seed, self.config.workers))
                for run in self.captured_runs()]
        self._parallel("capture", jobs, processes=True)

    # -- notebooks ---------------------------------------------------------------------------------
    def notebook_jobs(self) -> list[tuple[str, Path, dict]]:
        """(notebook, executed copy, parameters) for everything the config asks for."""
        jobs = []
        masks = self.config.capture.masks
        for run in self.captured_runs():
            if not _capture_complete(run.captures, masks):
                continue
            for nb in PER_RUN_NOTEBOOKS:
                if nb in self.config.notebooks:
                    out = self.root / "notebooks" / run.name / nb
                    params = dict(capture_dir=str(run.captures / "probe"), mask_types=masks, seed=run.seed,
                                  output_dir=str(out))
                    if nb == "attention_flow":
                        params.update(checkpoint=str(run.checkpoint), flow_dir=str(run.captures / "flow"))
                    jobs.append((nb, out, params))
        if "ablation_summary" in self.config.notebooks:
            out = self.root / "notebooks" / "summary" / "ablation_summary"
            jobs.append(("ablation_summary", out, dict(study_dir=str(self.root), output_dir=str(out))))
        if "compare_checkpoints" in self.config.notebooks and self.config.compare:
            pair = [r for name in self.config.compare for r in self.captured_runs() if r.cell.name == name][:2]
            if len(pair) == 2:
                out = self.root / "notebooks" / "summary" / "compare_checkpoints"
                jobs.append(("compare_checkpoints", out, dict(
                    checkpoint_a=str(pair[0].checkpoint), checkpoint_b=str(pair[1].checkpoint),
                    capture_a=str(pair[0].captures / "probe"), capture_b=str(pair[1].captures / "probe"),
                    flow_a=str(pair[0].captures / "flow"), flow_b=str(pair[1].captures / "flow"),
                    mask_type=masks[0], output_dir=str(out))))
        for nb, _, params in jobs:
            params.update(self.config.notebook_params.get(nb, {}))
        return jobs

    def notebooks(self) -> None:
        jobs = []
        for nb, out, params in self.notebook_jobs():
            target = str(out.relative_to(self.root))
            jobs.append((target, _notebook_done(out, params), _execute_notebook, (nb, out, params)))
        self._parallel("notebooks", jobs, processes=False)


def _notebook_done(out: Path, params: dict) -> bool:
    stamp = out / "params.json"
    return (out / "metrics.json").is_file() and stamp.is_file() and json.loads(stamp.read_text()) == params


def _execute_notebook(name: str, out: Path, params: dict) -> None:
    """papermill-execute `notebooks/<name>.ipynb` into `out/<name>.ipynb`; metrics land in `out/metrics.json`."""
    import papermill

    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").unlink(missing_ok=True)
    papermill.execute_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"), str(out / f"{name}.ipynb"), parameters=params,
                               kernel_name="python3", progress_bar=False, cwd=str(out))
    if not (out / "metrics.json").is_file():
        raise RuntimeError(f"{name} ran but wrote no metrics.json in {out}")
    write_json(out / "params.json", params)


def _study_command(args) -> int:
    config = StudyConfig.load(args.config)
    outcomes = Study(config).run()
    failed = [o for o in outcomes if o.status == "failed"]
    summary = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed")}
    print(f"study finished: {summary}; report in {config.report_dir}/report.md")
    for o in failed:
        print(f"  FAILED {o.step} {o.target}: {o.error}")
    return 1 if failed and args.strict else 0


def register(subparsers) -> None:
    p = subparsers.add_parser("study", help="train the grid, capture, run the notebooks and write the report")
    p.add_argument("--config", default="experiments/default.yaml")
    p.add_argument("--strict", action="store_true", help="exit non-zero when any step failed")
    p.set_defaults(func=_study_command)

