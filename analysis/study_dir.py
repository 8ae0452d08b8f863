"""The study folder: the one place that knows its layout.

    <root>/study.json                      the study config as run (cells with their mask type and λ filled in)
    <root>/timings.json                    the last measured wall time of each step
    <root>/checkpoints/<run>/              a trained checkpoint (`<cell>-s<seed>`), complete once scores.json exists
    <root>/captures/<run>/stamp.json       the settings the run's captures were made with
    <root>/captures/<run>/{probe,probe_b,flow,retrieval}/   its captures (`analysis.lens.store` layouts; `probe_b`:
                                           the probing set with its target as B, under the bridged masks)
    <root>/notebooks/<run>/<notebook>/     an executed per-run notebook: <notebook>.ipynb, metrics.json, figures
    <root>/notebooks/summary/<notebook>/   an executed summary notebook (ablation_summary, compare_checkpoints)

Everything that reads or writes a study folder (the study runner, the report, the notebooks, the compare
widgets) asks a `StudyDir`; nothing else spells these paths. Reading one imports neither torch nor the study
runner.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from analysis.errors import UsageError
from analysis.io import read_json
from analysis.lens.store import INDEX

STUDY_FILE = "study.json"
TIMINGS_FILE = "timings.json"
STAMP_FILE = "stamp.json"  # in a capture or notebook folder: the settings (and inputs) it was made with
METRICS_FILE = "metrics.json"  # in a notebook folder: what the notebook measured
SCORES_FILE = "scores.json"  # in a checkpoint: its mini-MMEB scores (written last: the checkpoint is complete)
LOSSES_FILE = "losses.json"  # in a checkpoint: {stage: [{"step", "loss", ...}, ...]}
SUMMARY = "summary"  # the notebooks folder of the summary notebooks
CAPTURE_KINDS = ("probe", "probe_b", "flow", "retrieval")
RETRIEVAL_SIDES = ("queries", "candidates")


@dataclass(frozen=True)
class RunDir:
    """One run of a study (a cell at a seed) and where its files lie."""

    cell: str
    seed: int
    mask_type: str
    recon_weight: float
    note: str
    root: Path

    @property
    def name(self) -> str:
        return run_name(self.cell, self.seed)

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoints" / self.name

    @property
    def captures(self) -> Path:
        return self.root / "captures" / self.name

    def capture(self, kind: str) -> Path:
        """The run's `probe`, `probe_b`, `flow` or `retrieval` capture folder (one subfolder per mask type; the
        retrieval capture one per side, then per mask type)."""
        if kind not in CAPTURE_KINDS:
            raise ValueError(f"unknown capture kind {kind!r}; one of {', '.join(CAPTURE_KINDS)}")
        return self.captures / kind

    @property
    def capture_stamp(self) -> Path:
        """The settings the run's captures were made with (`stamp.json`)."""
        return self.captures / STAMP_FILE

    def capture_indices(self, masks: dict[str, list[str]]) -> list[Path]:
        """The `index.json` of every capture `{kind: mask types}` names (a capture is complete when each says so)."""
        return [self.capture(kind) / side / m / INDEX for kind, kinds_masks in masks.items()
                for side in (RETRIEVAL_SIDES if kind == "retrieval" else ("",)) for m in kinds_masks]

    def notebook(self, notebook: str) -> Path:
        """The folder of this run's executed `notebook`."""
        return self.root / "notebooks" / self.name / notebook

    def notebook_stamp(self, notebook: str) -> Path:
        """What this run's executed `notebook` was made from (`stamp.json`)."""
        return self.notebook(notebook) / STAMP_FILE

    def metrics(self, notebook: str) -> dict | None:
        """The `metrics.json` of this run's executed `notebook`, or None when it has not run."""
        return read_json(self.notebook(notebook) / METRICS_FILE)

    def scores(self) -> dict | None:
        """The checkpoint's `scores.json`, or None when it is not trained (or not scored) yet."""
        return read_json(self.checkpoint / SCORES_FILE)

    def losses(self) -> dict:
        """The checkpoint's loss curves `{stage: [{"step", "loss", ...}]}` ({} when not trained yet)."""
        return read_json(self.checkpoint / LOSSES_FILE) or {}

    @property
    def trained(self) -> bool:
        return (self.checkpoint / SCORES_FILE).is_file()

    @property
    def captured(self) -> bool:
        """Whether the run's probe capture exists (its completeness is the study runner's to check)."""
        return (self.captures / STAMP_FILE).is_file()


def run_name(cell: str, seed: int) -> str:
    return f"{cell}-s{seed}"


class StudyDir:
    """A study folder written by `cocoa-lens study` (or being written: `config` may be given before study.json
    exists)."""

    def __init__(self, root: str | Path, config: dict | None = None):
        self.root = Path(root).resolve()
        self._config = config

    def __repr__(self) -> str:
        return f"StudyDir({str(self.root)!r})"

    @property
    def config(self) -> dict:
        """The study config as run (`study.json`)."""
        if self._config is None:
            self._config = read_json(self.root / STUDY_FILE)
            if self._config is None:
                raise UsageError(f"{self.root / STUDY_FILE} is missing: is {self.root} a study folder written by "
                                 "`cocoa-lens study`? (set study_dir to the config's out_dir)")
        return self._config

    @property
    def study_file(self) -> Path:
        return self.root / STUDY_FILE

    @property
    def timings_file(self) -> Path:
        return self.root / TIMINGS_FILE

    @property
    def notebooks_dir(self) -> Path:
        """Where executed notebooks lie (`<run>/<notebook>/` and `summary/<notebook>/`)."""
        return self.root / "notebooks"

    @property
    def numba_cache(self) -> Path:
        """numba's compile cache, shared by the studies beside this one (kept outside the study folder)."""
        return self.root.parent / ".numba_cache"

    def runs(self) -> list[RunDir]:
        """Every run the config lists, cell by cell in config order, seeds ascending within a cell."""
        return [RunDir(c["name"], seed, c["mask_type"], c["recon_weight"], c.get("note", ""), self.root)
                for c in self.config["cells"] for seed in sorted(c.get("seeds") or self.config["seeds"])]

    def run(self, name: str) -> RunDir:
        """The run called `name` (`<cell>-s<seed>`)."""
        for r in self.runs():
            if r.name == name:
                return r
        raise UsageError(f"no run {name!r} in {self.root}; runs: {', '.join(r.name for r in self.runs())}")

    def captured_runs(self) -> list[RunDir]:
        """The runs whose checkpoints were captured (trained, among the capture seeds, with a capture stamp)."""
        seeds = set(self.config.get("capture", {}).get("seeds", self.config["seeds"]))
        return [r for r in self.runs() if r.seed in seeds and r.trained and r.captured]

    def first_captured(self, cells: list[str]) -> list[RunDir]:
        """The captured run of the lowest seed of each named cell, in `cells` order (cells without one left out)."""
        first: dict[str, RunDir] = {}
        for r in self.captured_runs():
            first.setdefault(r.cell, r)  # runs() lists seeds ascending
        return [first[c] for c in cells if c in first]

    def compare_pair(self) -> tuple[RunDir, RunDir]:
        """The pair the config's `compare:` names (lowest captured seed of each); without `compare:`, the first
        captured runs of the first two cells that have one. Never two seeds of one cell."""
        cells = list(self.config.get("compare") or []) or [c["name"] for c in self.config["cells"]]
        pair = self.first_captured(cells)[:2]
        if len(pair) < 2:
            raise UsageError(f"{self.root}: the comparison needs captures of two cells ({', '.join(cells[:2])}); "
                             f"captured: {', '.join(r.name for r in self.captured_runs()) or 'none'}")
        return pair[0], pair[1]

    def summary(self, notebook: str) -> Path:
        """The folder of an executed summary notebook."""
        return self.notebooks_dir / SUMMARY / notebook

    def executed_notebooks(self) -> list[Path]:
        """Every executed notebook file in the study, sorted."""
        return sorted(self.notebooks_dir.glob("*/*/*.ipynb"))
