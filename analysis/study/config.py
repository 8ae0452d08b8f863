"""The study config: the grid's cells, seeds, captures, notebooks and where the jobs run, loaded by the one strict
loader (`analysis.train.recipe.build_strict`: an unknown or mistyped key is one `UsageError` naming it) and
checked before anything runs: each cell's recipe loads, a cell that states a mask type or λ agrees with its
recipe, cell names are safe folder names, notebook parameters are identifiers the notebook declares with plain
JSON values, the launcher is one the study knows.
"""

from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from analysis.data.shapes import SPLITS
from analysis.errors import UsageError
from analysis.findings import ROLES
from analysis.io import read_yaml
from analysis.masks import MASK_TYPES, check_mask_type
from analysis.train.recipe import build_strict, load_recipe

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent.parent / "notebooks"
LAYERWISE = "layerwise_analyses"  # per run, but only for each cell's lowest captured seed (time budget)
PER_RUN_NOTEBOOKS = ("attention_flow", "eos_probing", "embedding_umap", LAYERWISE)
# the parameters of `layerwise_analyses` the study sets (from where), so that it reads the run's retrieval capture
FROM_CAPTURE = {"checkpoint": "the run", "capture_dir": "the run's capture", "data_seed": "capture.data_seed",
                "n": "capture.retrieval.n", "splits": "capture.retrieval.splits", "mask_types": "the embed masks"}
SUMMARY_NOTEBOOKS = ("ablation_summary", "compare_checkpoints")
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # a cell name is a folder name: no "/", "..", spaces
LAUNCHERS = ("local", "submitit", "submitit-local")


@dataclass
class Cell:
    """One cell of the ablation grid: a recipe plus overrides (`set`, after the study's `recipe_set`).

    Its mask type and λ are the recipe's (`Recipe.grid_point`), filled in when the config loads; a cell
    may state them as a check, and a disagreement is an error before anything runs. `seeds`: the training
    seeds of this cell, some of the study's (null: all of them).
    """

    name: str
    recipe: str
    mask_type: str | None = None
    recon_weight: float | None = None
    set: list[str] = field(default_factory=list)
    note: str = ""
    seeds: list[int] | None = None


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
    all_masks_seeds: the capture seeds captured under every mask in `masks`, with the flow set (null: all of
        them); the other capture seeds are captured under their cell's own mask only, without the flow set
        (what the report's probe table and the paper's questions read), so extra seeds cost little.
    """

    dataset: str = "mini-mmeb"
    n: int = 400
    flow_n: int = 8
    masks: list[str] = field(default_factory=lambda: list(MASK_TYPES))
    seeds: list[int] = field(default_factory=lambda: [0])
    data_seed: int = 0
    retrieval: RetrievalSpec = field(default_factory=RetrievalSpec)
    all_masks_seeds: list[int] | None = None

    def settings(self) -> dict:
        """What fixes the probe and flow captures' content (everything but which checkpoints are captured)."""
        return {k: v for k, v in asdict(self).items() if k not in ("seeds", "retrieval", "all_masks_seeds")}

    def all_masks(self, seed: int) -> bool:
        """Whether checkpoints of `seed` are captured under every mask (with the flow set)."""
        return self.all_masks_seeds is None or seed in self.all_masks_seeds


@dataclass
class LauncherSpec:
    """Where the study's jobs (train, capture, notebooks) run.

    kind: `local` (default): a pool of `workers` processes (training, capture) and `workers` warm notebook
        kernels on this machine. `submitit`: each job is a SLURM job through submitit (`slurm` holds its
        submission parameters: submitit's generic ones such as `timeout_min`, `gpus_per_node`, `cpus_per_task`,
        `mem_gb`, or SLURM's own such as `partition`, `account`, `constraint`). `submitit-local`: submitit's
        local executor (a subprocess per job; the same path as SLURM, for tests).
    folder: submitit's logs and pickles (default `<out_dir>/submitit`).
    max_jobs: jobs in flight at once under submitit (default: `workers`).
    """

    kind: str = "local"
    folder: str | None = None
    max_jobs: int | None = None
    slurm: dict[str, Any] = field(default_factory=dict)

    def validate(self, path: str) -> None:
        if self.kind not in LAUNCHERS:
            raise UsageError(f"{path}.kind: unknown launcher {self.kind!r}; one of {', '.join(LAUNCHERS)}")
        if self.max_jobs is not None and self.max_jobs < 1:
            raise UsageError(f"{path}.max_jobs must be >= 1; got {self.max_jobs}")
        if self.kind == "local" and (self.folder or self.slurm or self.max_jobs):
            raise UsageError(f"{path}: folder, max_jobs and slurm apply to the submitit launchers; the local one "
                             f"takes none (it runs `workers` jobs at once)")
        if self.slurm and self.kind != "submitit":
            raise UsageError(f"{path}.slurm applies to kind: submitit; got kind: {self.kind}")
        for key, value in self.slurm.items():
            if not _plain_json(value):
                raise UsageError(f"{path}.slurm.{key}: {value!r} is not a plain value")


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
    roles: dict[str, str] = field(default_factory=dict)  # analysis.findings.ROLES -> cell: the paper's questions
    notebook_seeds: dict[str, list[int]] = field(default_factory=dict)  # per-run notebook -> the seeds it runs for
    recipe_set: list[str] = field(default_factory=list)
    launcher: LauncherSpec = field(default_factory=LauncherSpec)
    notebook_timeout: float | None = 3600  # seconds a notebook cell may run (its job fails; the kernel restarts)

    @classmethod
    def load(cls, path: str | Path) -> StudyConfig:
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
        self.launcher.validate("launcher")
        self.capture.retrieval.validate("capture.retrieval")
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
        for cell in self.cells:
            if cell.seeds is not None and (not cell.seeds or not set(cell.seeds) <= set(self.seeds)):
                raise UsageError(f"cells: {cell.name}.seeds {cell.seeds}; give a non-empty list of the study's seeds "
                                 f"{self.seeds}, or leave it out for all of them")
        if self.workers < 1 or self.capture.n < 1 or self.capture.flow_n < 1:
            raise UsageError(f"workers, capture.n and capture.flow_n must be >= 1; got {self.workers}, "
                             f"{self.capture.n}, {self.capture.flow_n}")
        for m in self.capture.masks:
            check_mask_type(m)
        every = self.capture.all_masks_seeds
        if every is not None and (not set(every) <= set(self.capture.seeds) or min(self.capture.seeds) not in every):
            raise UsageError(f"capture.all_masks_seeds: {every}; list capture seeds ({self.capture.seeds}), the lowest "
                             f"among them (the figures and the comparison read its captures under every mask)")
        valid = PER_RUN_NOTEBOOKS + SUMMARY_NOTEBOOKS
        bad = [n for n in [*self.notebooks, *self.notebook_params] if n not in valid]
        if bad:
            raise UsageError(f"unknown notebook(s) {bad}; valid: {', '.join(valid)}")
        for notebook, params in self.notebook_params.items():
            _check_params(notebook, params)
        for key in sorted(set(FROM_CAPTURE) & set(self.notebook_params.get(LAYERWISE, {}))):
            raise UsageError(f"notebook_params.{LAYERWISE}.{key}: the study sets it from {FROM_CAPTURE[key]} (the "
                             f"notebook reads the run's retrieval capture); drop it here")
        if self.notebook_timeout is not None and self.notebook_timeout <= 0:
            raise UsageError(f"notebook_timeout must be a positive number of seconds or null; got "
                             f"{self.notebook_timeout}")
        bad = [n for n in self.compare if n not in names]
        if bad or len(self.compare) not in (0, 2) or len(set(self.compare)) != len(self.compare):
            raise UsageError(f"compare must name two cells from {names}; got {self.compare}")
        for notebook, seeds in self.notebook_seeds.items():
            if notebook not in PER_RUN_NOTEBOOKS or not seeds or not set(seeds) <= set(self.seeds):
                raise UsageError(f"notebook_seeds.{notebook}: {seeds}; give a per-run notebook "
                                 f"({', '.join(PER_RUN_NOTEBOOKS)}) and a non-empty list of the study's seeds "
                                 f"{self.seeds}")
        for role, cell in self.roles.items():
            if role not in ROLES or cell not in names:
                raise UsageError(f"roles.{role}: {cell!r}; roles are {', '.join(ROLES)}, each naming a cell from "
                                 f"{names}")

    def as_json(self) -> dict:
        """The config as run (`study.json`: what `StudyDir` reads)."""
        return asdict(self)


def _place(cell: Cell, recipe_set: list[str]) -> None:
    """Load the cell's recipe with its overrides; set the cell's mask type and λ from it (or check them)."""
    where = f"cell {cell.name!r}"
    if not Path(cell.recipe).is_file():
        raise UsageError(f"{where} names recipe {cell.recipe}, which does not exist (paths are relative to "
                         f"{Path.cwd()})")
    try:
        recipe = load_recipe(cell.recipe, overrides=[*recipe_set, *cell.set])
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


