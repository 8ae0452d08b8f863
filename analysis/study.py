"""The study: a grid of recipes -> train -> capture -> notebooks -> figures -> report.

A study config (YAML) lists cells of the ablation grid (a recipe file plus overrides; the cell's mask
type and recon weight λ are read from that recipe), the seeds, what to capture and which notebooks to
run. The whole config is checked before anything runs: each cell's recipe loads, a cell that states a
mask type or λ agrees with its recipe, cell names are safe folder names, notebook parameters are
identifiers the notebook declares with plain JSON values.

Every step is idempotent: a second run trains, captures and executes nothing that already finished.
A failing job is reported and the study stops starting new ones (the running ones finish), writes the
report and exits 1; with `--keep-going` it runs everything it can and still exits 1 at the end.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterator

from tqdm.auto import tqdm

from analysis.data.shapes import SPLITS
from analysis.digest import weights_digest
from analysis.errors import UsageError
from analysis.io import read_json, read_yaml, write_json
from analysis.masks import MASK_TYPES, check_mask_type
from analysis.report import STUDY_FILE, write_report
from analysis.train.recipe import EMBED_MASKS, build_strict, load_recipe

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
LAYERWISE = "layerwise_analyses"  # per run, but only for each cell's lowest captured seed (time budget)
PER_RUN_NOTEBOOKS = ("attention_flow", "eos_probing", "embedding_umap", LAYERWISE)
# the parameters of `layerwise_analyses` the study sets (from where), so that it reads the run's retrieval capture
FROM_CAPTURE = {"checkpoint": "the run", "capture_dir": "the run's capture", "data_seed": "capture.data_seed",
                "n": "capture.retrieval.n", "splits": "capture.retrieval.splits", "mask_types": "the embed masks"}
SUMMARY_NOTEBOOKS = ("ablation_summary", "compare_checkpoints")
STEPS = ("train", "capture", "notebooks", "summaries")
TIMINGS_FILE = "timings.json"  # in the study folder: the last measured wall time of each step
STAMP_FILE = "stamp.json"  # in a capture or notebook folder: the settings (and inputs) it was made with
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # a cell name is a folder name: no "/", "..", spaces


@dataclass
class Cell:
    """One cell of the ablation grid: a recipe plus overrides (`set`, after the study's `recipe_set`).

    Its mask type and λ are the recipe's (`Recipe.grid_point`), filled in when the config loads; a cell
    may state them as a check, and a disagreement is an error before anything runs.
    """

    name: str
    recipe: str
    mask_type: str | None = None
    recon_weight: float | None = None
    set: list[str] = field(default_factory=list)
    note: str = ""


@dataclass
class RetrievalSpec:
    """The mini-MMEB queries and candidates captured for `layerwise_analyses`: `n` queries per dataset of
    `splits`, drawn with the capture's `data_seed` (every cell on the same queries), under every embed mask
    (a bridged mask over inputs without B is bidirectional)."""

    n: int = 3
    splits: list[str] = field(default_factory=lambda: ["ind"])

    def validate(self, path: str) -> None:
        if self.n < 1 or not self.splits or not set(self.splits) <= set(SPLITS):
            raise UsageError(f"{path}: n must be >= 1 and splits a non-empty list of {', '.join(SPLITS)}; got "
                             f"n={self.n}, splits={self.splits}")


@dataclass
class CaptureSpec:
    """What each checkpoint is captured on: probing set (EOS rows) and a small full-pattern flow set.

    seeds: the training seeds whose checkpoints are captured (and get the per-run notebooks).
    data_seed: draws the captured samples, the same for every checkpoint, so that any two captures line up
        sample by sample (CKA and side-by-side comparisons need that).
    retrieval: captured for the lowest of these seeds only, when `layerwise_analyses` runs.
    """

    dataset: str = "mini-mmeb"
    n: int = 400
    flow_n: int = 8
    masks: list[str] = field(default_factory=lambda: list(MASK_TYPES))
    seeds: list[int] = field(default_factory=lambda: [0])
    data_seed: int = 0
    retrieval: RetrievalSpec = field(default_factory=RetrievalSpec)

    def settings(self) -> dict:
        """What fixes the probe and flow captures' content (everything but which checkpoints are captured)."""
        return {k: v for k, v in asdict(self).items() if k not in ("seeds", "retrieval")}


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
        """Read and check a study config (YAML); every problem is one `UsageError` naming the file."""
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"no study config at {path} (see experiments/default.yaml)")
        data = read_yaml(path)
        try:
            config = build_strict(cls, {} if data is None else data, "the study config", top=True)
            config.validate()
        except ValueError as err:
            raise UsageError(f"{path}: {err}") from None
        return config

    def validate(self) -> None:
        """Check everything that can be checked before anything runs; fill in each cell's mask type and λ."""
        if not self.cells:
            raise UsageError("no cells; list at least one under `cells:`")
        names = [c.name for c in self.cells]
        for name in names:
            if not SAFE_NAME.fullmatch(name):
                raise UsageError(f"cell name {name!r} is not a plain folder name (letters, digits, '.', '_', '-'; "
                                 f"not starting with '.' or '-'); rename the cell")
        if len(set(names)) != len(names):
            raise UsageError(f"cell names repeat: {names}")
        for cell in self.cells:
            _place(cell, self.recipe_set)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise UsageError(f"seeds must be distinct and at least one; got {self.seeds}")
        if self.workers < 1 or self.capture.n < 1 or self.capture.flow_n < 1:
            raise UsageError(f"workers, capture.n and capture.flow_n must be >= 1; got {self.workers}, "
                             f"{self.capture.n}, {self.capture.flow_n}")
        for m in self.capture.masks:
            check_mask_type(m)
        valid = PER_RUN_NOTEBOOKS + SUMMARY_NOTEBOOKS
        bad = [n for n in [*self.notebooks, *self.notebook_params] if n not in valid]
        if bad:
            raise UsageError(f"unknown notebook(s) {bad}; valid: {', '.join(valid)}")
        for notebook, params in self.notebook_params.items():
            _check_params(notebook, params)
        for key in sorted(set(FROM_CAPTURE) & set(self.notebook_params.get(LAYERWISE, {}))):
            raise UsageError(f"notebook_params.{LAYERWISE}.{key}: the study sets it from {FROM_CAPTURE[key]} (the "
                             f"notebook reads the run's retrieval capture); drop it here")
        bad = [n for n in self.compare if n not in names]
        if bad or len(self.compare) not in (0, 2):
            raise UsageError(f"compare must name two cells from {names}; got {self.compare}")


def _place(cell: Cell, recipe_set: list[str]) -> None:
    """Load the cell's recipe with its overrides; set the cell's mask type and λ from it (or check them)."""
    where = f"cell {cell.name!r}"
    if not Path(cell.recipe).is_file():
        raise UsageError(f"{where} names recipe {cell.recipe}, which does not exist (paths are relative to "
                         f"{Path.cwd()})")
    try:
        recipe = load_recipe(cell.recipe, [*recipe_set, *cell.set])
        recipe.require_stages()
    except ValueError as err:
        raise UsageError(f"{where}: {err}") from None
    mask_type, recon_weight = recipe.grid_point()
    if cell.mask_type is not None:
        check_mask_type(cell.mask_type)
    stated = (cell.mask_type or mask_type, recon_weight if cell.recon_weight is None else cell.recon_weight)
    if stated[0] != mask_type or not math.isclose(stated[1], recon_weight, abs_tol=1e-9):
        raise UsageError(f"{where} states mask_type {stated[0]}, recon_weight {stated[1]:g}, but its recipe "
                         f"{cell.recipe} (with the overrides) trains mask_type {mask_type}, recon_weight "
                         f"{recon_weight:g}; drop mask_type / recon_weight from the cell (they are read from the "
                         f"recipe) or change its recipe or `set`")
    cell.mask_type, cell.recon_weight = mask_type, recon_weight


def notebook_parameters(notebook: str) -> list[str]:
    """The names the notebook's `parameters` cell assigns."""
    book = json.loads((NOTEBOOK_DIR / f"{notebook}.ipynb").read_text())
    cell = next(c for c in book["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    tree = ast.parse("".join(cell["source"]))
    targets = [t for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
               for t in (node.targets if isinstance(node, ast.Assign) else [node.target])]
    return [t.id for t in targets if isinstance(t, ast.Name)]


def _check_params(notebook: str, params: dict[str, Any]) -> None:
    """Parameters are written into a notebook's code: names must be identifiers it declares, values plain JSON."""
    declared = notebook_parameters(notebook)
    for key, value in params.items():
        if key not in declared:
            raise UsageError(f"notebook_params.{notebook}: {key!r} is not a parameter of {notebook} "
                             f"(its parameters: {', '.join(declared)})")
        if not _plain_json(value):
            raise UsageError(f"notebook_params.{notebook}.{key}: {value!r} is not a plain value (give a number, "
                             f"string, true/false, null, or a list / mapping of those)")


def _plain_json(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_plain_json(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_json(v) for k, v in value.items())
    return False


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
    status: str  # done | skipped | failed | cancelled (not started: an earlier job failed, no --keep-going)
    seconds: float = 0.0
    error: str = ""


# -- workers (top level so a spawned process can import them) -------------------------------------

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@contextmanager
def share_cores(workers: int) -> Iterator[None]:
    """Within the block, child processes (spawned workers, notebook kernels) each get cores // workers
    threads for torch and BLAS. Without it every child's BLAS pool spins over all cores:
    two probing kernels on 2 cores ran 35x slower than one (643 s against 19 s)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    share = str(max(1, cores // max(1, workers)))
    saved = {var: os.environ.get(var) for var in THREAD_VARS}
    os.environ.update(dict.fromkeys(THREAD_VARS, share))
    try:
        yield
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


def _train_job(recipe: str, overrides: list[str], out: str) -> None:
    from analysis.train import train

    train(recipe, out, progress=False, overrides=overrides)


def _capture_job(checkpoint: str, out: str, spec: dict) -> None:
    """Capture `checkpoint` into `out/probe` and `out/flow` (and, when `spec` has `retrieval`, mini-MMEB queries
    and candidates into `out/retrieval`), resuming a capture begun with the same `spec` (`Study.capture_spec`);
    one begun with other settings is derived data and is captured afresh."""
    import shutil

    from analysis.data import build_mini_mmeb
    from analysis.lens.eos_lens import capture_retrieval
    from analysis.lens.recorder import capture

    out = Path(out)
    if out.exists() and read_json(out / STAMP_FILE) != spec:
        shutil.rmtree(out)
    write_json(out / STAMP_FILE, spec)
    seed = spec["data_seed"]
    capture(checkpoint, spec["dataset"], spec["masks"], out / "probe", n=spec["n"], seed=seed, patterns="eos")
    capture(checkpoint, spec["dataset"], spec["masks"], out / "flow", n=spec["flow_n"], seed=seed,
            patterns="full", with_target=True)
    if "retrieval" in spec:
        retrieval = spec["retrieval"]
        datasets = build_mini_mmeb(retrieval["n"], seed=seed, splits=tuple(retrieval["splits"]))
        capture_retrieval(checkpoint, datasets, retrieval["masks"], out / "retrieval")


def _capture_complete(out: Path, spec: dict) -> bool:
    indices = [out / kind / m / "index.json" for kind in ("probe", "flow") for m in spec["masks"]]
    if "retrieval" in spec:
        indices += [out / "retrieval" / side / m / "index.json" for side in ("queries", "candidates")
                    for m in spec["retrieval"]["masks"]]
    return read_json(out / STAMP_FILE) == spec and all((read_json(i) or {}).get("complete") for i in indices)


# -- the study ------------------------------------------------------------------------------------

class Study:
    """Runs a `StudyConfig`; `run()` returns the outcomes and writes the report.

    After a failed job no new job starts (`stopped`), unless `keep_going`.
    """

    def __init__(self, config: StudyConfig, progress: bool = True, keep_going: bool = False):
        self.config = config
        self.root = Path(config.out_dir).resolve()  # notebooks get absolute paths
        self.report_dir = Path(config.report_dir).resolve()
        self.progress = progress
        self.keep_going = keep_going
        self.stopped = False
        self.runs = [Run(c, s, self.root) for c in config.cells for s in config.seeds]
        # the layer-wise analyses' seed, fixed by the config: a failed lower seed does not move them (and the
        # retrieval capture) to another seed
        self.layerwise_seed = min(set(config.seeds) & set(config.capture.seeds), default=None)
        self.outcomes: list[Outcome] = []
        self.step_times: dict[str, dict] = {}  # step -> {seconds, jobs} for the steps that had work to do

    def run(self) -> list[Outcome]:
        os.environ.setdefault("NUMBA_CACHE_DIR", str(self.root.parent / ".numba_cache"))
        write_json(self.root / STUDY_FILE, asdict(self.config))
        start = time.perf_counter()
        with share_cores(self.config.workers):
            self.train()
            self.capture()
            self.notebooks()
        # the last measured time of every step, kept across runs: a resumed run that does nothing keeps it
        merged = {**(read_json(self.root / TIMINGS_FILE) or {}), **self.step_times}
        self.step_times = {step: merged[step] for step in STEPS if step in merged}
        write_json(self.root / TIMINGS_FILE, self.step_times)
        write_report(self, time.perf_counter() - start)
        return self.outcomes

    # each step: a list of (target, is_done, job) run in parallel, outcomes recorded
    def _parallel(self, step: str, jobs: list[tuple[str, bool, Callable, tuple]], processes: bool) -> None:
        if self.stopped:
            return
        todo = []
        for target, done, fn, args in jobs:
            if done:
                self.outcomes.append(Outcome(step, target, "skipped"))
            else:
                todo.append((target, fn, args))
        if not todo:
            return
        t_step = time.perf_counter()
        pool = (ProcessPoolExecutor(self.config.workers, mp_context=get_context("spawn")) if processes
                else ThreadPoolExecutor(self.config.workers))
        with pool, tqdm(total=len(todo), desc=step, disable=not self.progress) as bar:
            started = {pool.submit(fn, *args): (target, time.perf_counter()) for target, fn, args in todo}
            for future in as_completed(started):
                target, t0 = started[future]
                if future.cancelled():
                    self.outcomes.append(Outcome(step, target, "cancelled"))
                    continue
                try:
                    future.result()
                    self.outcomes.append(Outcome(step, target, "done", time.perf_counter() - t0))
                except Exception as exc:  # noqa: BLE001 - report it; stop starting jobs unless keep_going
                    detail = getattr(exc, "ename", type(exc).__name__) + ": " + str(getattr(exc, "evalue", exc))
                    detail = " ".join(detail.split())
                    self.outcomes.append(Outcome(step, target, "failed", time.perf_counter() - t0, detail))
                    tqdm.write(f"{step} {target} FAILED: {detail}")
                    if not self.keep_going and not self.stopped:
                        self.stopped = True
                        for other in started:
                            other.cancel()
                bar.update()
        self.step_times[step] = {"seconds": time.perf_counter() - t_step, "jobs": len(todo)}

    def train(self) -> None:
        from analysis.train import is_complete

        jobs = [(run.name, is_complete(run.checkpoint), _train_job,
                 (run.cell.recipe, [*self.config.recipe_set, *run.overrides], str(run.checkpoint)))
                for run in self.runs]
        self._parallel("train", jobs, processes=True)

    def trained(self) -> list[Run]:
        from analysis.train import is_complete

        return [r for r in self.runs if is_complete(r.checkpoint)]

    def captured_runs(self) -> list[Run]:
        return [r for r in self.trained() if r.seed in self.config.capture.seeds]

    def first_captured(self, names: list[str], captured: list[Run] | None = None) -> list[Run]:
        """The captured run of the lowest seed of each named cell, in `names` order (cells without one left
        out); `captured` saves looking the captured runs up again."""
        first: dict[str, Run] = {}
        for run in sorted(self.captured_runs() if captured is None else captured, key=lambda r: r.seed):
            first.setdefault(run.cell.name, run)
        return [first[name] for name in names if name in first]

    def layerwise(self, run: Run) -> bool:
        """Whether `layerwise_analyses` runs for `run` (and its retrieval set is captured)."""
        return LAYERWISE in self.config.notebooks and run.seed == self.layerwise_seed

    def capture_spec(self, run: Run) -> dict:
        """What fixes a run's capture: the capture settings, the retrieval set where the layer-wise analyses
        run, and its checkpoint's weights (retrained: redone)."""
        spec = dict(self.config.capture.settings(), checkpoint_digest=weights_digest(run.checkpoint))
        if self.layerwise(run):
            spec["retrieval"] = dict(asdict(self.config.capture.retrieval), masks=list(EMBED_MASKS))
        return spec

    def capture(self) -> None:
        jobs = []
        for run in self.captured_runs():
            spec = self.capture_spec(run)
            jobs.append((run.name, _capture_complete(run.captures, spec), _capture_job,
                         (str(run.checkpoint), str(run.captures), spec)))
        self._parallel("capture", jobs, processes=True)

    # -- notebooks ---------------------------------------------------------------------------------
    def notebook_jobs(self) -> list[tuple[str, Path, dict]]:
        """(notebook, executed copy, parameters) for everything the config asks for."""
        jobs = []
        masks = self.config.capture.masks
        captured = self.captured_runs()
        for run in captured:
            spec = self.capture_spec(run)
            if not _capture_complete(run.captures, spec):
                continue
            for nb in PER_RUN_NOTEBOOKS:
                if nb not in self.config.notebooks or (nb == LAYERWISE and "retrieval" not in spec):
                    continue
                out = self.root / "notebooks" / run.name / nb
                if nb == LAYERWISE:
                    retrieval = spec["retrieval"]
                    params = dict(checkpoint=str(run.checkpoint), capture_dir=str(run.captures / "retrieval"),
                                  data_seed=spec["data_seed"], n=retrieval["n"], splits=retrieval["splits"],
                                  mask_types=retrieval["masks"], output_dir=str(out))
                else:
                    params = dict(capture_dir=str(run.captures / "probe"), mask_types=masks, seed=run.seed,
                                  output_dir=str(out))
                if nb == "attention_flow":
                    params.update(checkpoint=str(run.checkpoint), flow_dir=str(run.captures / "flow"))
                jobs.append((nb, out, params))
        if "ablation_summary" in self.config.notebooks:
            out = self.root / "notebooks" / "summary" / "ablation_summary"
            jobs.append(("ablation_summary", out, dict(study_dir=str(self.root), output_dir=str(out))))
        if "compare_checkpoints" in self.config.notebooks and self.config.compare:
            pair = self.first_captured(self.config.compare, captured)
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
        """Per-run notebooks first, then the summaries, which read their results."""
        jobs = self.notebook_jobs()
        for step, names in (("notebooks", PER_RUN_NOTEBOOKS), ("summaries", SUMMARY_NOTEBOOKS)):
            todo = []
            for nb, out, params in jobs:
                if nb in names:
                    stamp = self.notebook_stamp(nb, params)
                    todo.append((str(out.relative_to(self.root)), _notebook_done(out, stamp), _execute_notebook,
                                 (nb, out, params, stamp)))
            self._parallel(step, todo, processes=False)

    def notebook_stamp(self, notebook: str, params: dict) -> dict:
        """What an executed notebook's result depends on; it is redone when this changes: its parameters,
        the notebook's source (an edited notebook reruns), for a per-run notebook the capture it reads (a
        retrained checkpoint is captured afresh) and, for the ablation summary, the trained runs and probing
        results it reads (a resumed study that finishes more of them redoes it)."""
        source = hashlib.sha256((NOTEBOOK_DIR / f"{notebook}.ipynb").read_bytes()).hexdigest()[:16]
        if notebook in PER_RUN_NOTEBOOKS:
            inputs = [(read_json(Path(params["capture_dir"]).parent / STAMP_FILE) or {}).get("checkpoint_digest")]
        elif notebook == "ablation_summary":
            inputs = [r.name for r in self.trained()] + [
                f"{r.name}/eos_probing" for r in self.captured_runs()
                if (self.root / "notebooks" / r.name / "eos_probing" / "metrics.json").is_file()]
        else:
            inputs = []
        return {"params": params, "source": source, "inputs": inputs}


def _notebook_done(out: Path, stamp: dict) -> bool:
    return (out / "metrics.json").is_file() and read_json(out / STAMP_FILE) == stamp


def _execute_notebook(name: str, out: Path, params: dict, stamp: dict) -> None:
    """papermill-execute `notebooks/<name>.ipynb` into `out/<name>.ipynb`; metrics land in `out/metrics.json`,
    and `stamp` (parameters and inputs) in `out/stamp.json` once it has succeeded."""
    import papermill

    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").unlink(missing_ok=True)
    # every path is absolute and no `cwd=`: papermill would chdir this whole process, racing the other threads
    papermill.execute_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"), str(out / f"{name}.ipynb"), parameters=params,
                               kernel_name="python3", progress_bar=False)
    if not (out / "metrics.json").is_file():
        raise RuntimeError(f"{name} ran but wrote no metrics.json in {out}")
    write_json(out / STAMP_FILE, stamp)


def _study_command(args) -> int:
    config = StudyConfig.load(args.config)
    study = Study(config, keep_going=args.keep_going)
    outcomes = study.run()
    failed = [o for o in outcomes if o.status == "failed"]
    summary = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed", "cancelled")}
    print(f"study finished: {summary}; report in {config.report_dir}/report.md")
    for o in failed:
        print(f"cocoa-lens study: FAILED {o.step} {o.target}: {o.error}", file=sys.stderr)
    if study.stopped:
        print("cocoa-lens study: stopped after the first failure; fix it and rerun (finished work is kept), or "
              "rerun with --keep-going to run everything that does not depend on it", file=sys.stderr)
    return 1 if failed else 0


def register(subparsers) -> None:
    p = subparsers.add_parser("study", help="train the grid, capture, run the notebooks and write the report",
                              description="Train the grid, capture, run the notebooks and write the report. "
                                          "Resumes: finished work is kept. Exits 1 when any job failed.")
    p.add_argument("--config", default="experiments/default.yaml")
    p.add_argument("--keep-going", action="store_true",
                   help="after a failed job, go on with every other job (still exits 1 at the end); by default "
                        "no new job starts after a failure, the running ones finish and the report is written")
    p.set_defaults(func=_study_command)

