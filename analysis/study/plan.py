"""What the study runs for each run: its training overrides, its capture settings, which notebooks with which
parameters, and the stamps that say when a finished job must be redone. Every path comes from `StudyDir` /
`RunDir`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

from analysis.digest import weights_digest
from analysis.io import read_json
from analysis.study import config as config_module
from analysis.study.config import LAYERWISE, PER_RUN_NOTEBOOKS, StudyConfig
from analysis.study_dir import RunDir, StudyDir


class NotebookJob(NamedTuple):
    """A notebook the study executes: its name, the folder of the executed copy, its parameters, and the run it
    belongs to (None for a summary)."""

    notebook: str
    out: Path
    params: dict
    run: RunDir | None = None


class Plan:
    """The jobs a `StudyConfig` asks for in a `StudyDir`."""

    def __init__(self, config: StudyConfig, study_dir: StudyDir):
        self.config = config
        self.dir = study_dir
        self.cells = {c.name: c for c in config.cells}
        # the layer-wise analyses' seed, fixed by the config: a failed lower seed does not move them (and the
        # retrieval capture) to another seed
        self.layerwise_seed = min(set(config.seeds) & set(config.capture.seeds), default=None)

    def runs(self) -> list[RunDir]:
        return self.dir.runs()

    def overrides(self, run: RunDir) -> list[str]:
        """The recipe overrides that train `run`: the study's, the cell's, its seed and name."""
        return [*self.config.recipe_set, *self.cells[run.cell].set, f"seed={run.seed}", f"name={run.name}"]

    def recipe(self, run: RunDir) -> str:
        return self.cells[run.cell].recipe

    def captures(self, run: RunDir) -> bool:
        """Whether `run` is captured (and gets the per-run notebooks) once trained."""
        return run.seed in self.config.capture.seeds

    def layerwise(self, run: RunDir) -> bool:
        """Whether `layerwise_analyses` runs for `run` (and its retrieval set is captured)."""
        return LAYERWISE in self.config.notebooks and run.seed == self.layerwise_seed

    def capture_spec(self, run: RunDir) -> dict:
        """What fixes a trained run's capture: the capture settings, the bridged masks whose probing set is also
        captured with B (`probe_b`), the retrieval set where the layer-wise analyses run, and its checkpoint's
        weights (retrained: redone)."""
        from analysis.lens.store import BRIDGED  # EOS reads B under these: without B they are bidirectional
        from analysis.train.recipe import EMBED_MASKS

        spec = dict(self.config.capture.settings(), checkpoint_digest=weights_digest(run.checkpoint))
        if not self.config.capture.all_masks(run.seed):
            spec.update(masks=[run.mask_type], flow_n=0)
        bridged = [m for m in spec["masks"] if m in BRIDGED]
        if bridged:
            spec["probe_b"] = bridged
        if self.layerwise(run):
            spec["retrieval"] = dict(asdict(self.config.capture.retrieval), masks=list(EMBED_MASKS))
        return spec

    def run_notebooks(self, run: RunDir, spec: dict) -> list[NotebookJob]:
        """The per-run notebooks of a run captured with `spec`."""
        jobs = []
        for nb in PER_RUN_NOTEBOOKS:
            if nb not in self.config.notebooks or (nb == LAYERWISE and "retrieval" not in spec):
                continue
            if run.seed not in self.config.notebook_seeds.get(nb, [run.seed]) or (nb == "attention_flow"
                                                                                  and not spec["flow_n"]):
                continue
            out = run.notebook(nb)
            if nb == LAYERWISE:
                retrieval = spec["retrieval"]
                params = dict(checkpoint=str(run.checkpoint), capture_dir=str(run.capture("retrieval")),
                              data_seed=spec["data_seed"], n=retrieval["n"], splits=retrieval["splits"],
                              mask_types=retrieval["masks"], output_dir=str(out))
            else:
                params = dict(capture_dir=str(run.capture("probe")), mask_types=spec["masks"],
                              seed=run.seed, output_dir=str(out))
            if nb == "attention_flow":
                params.update(checkpoint=str(run.checkpoint), flow_dir=str(run.capture("flow")))
            if nb == "eos_probing" and spec.get("probe_b"):
                params.update(bridged_dir=str(run.capture("probe_b")))
            jobs.append(NotebookJob(nb, out, self._with_config_params(nb, params), run))
        return jobs

    def summary_notebooks(self) -> list[NotebookJob]:
        """The summaries, run last: they read every run's results."""
        jobs = []
        if "ablation_summary" in self.config.notebooks:
            out = self.dir.summary("ablation_summary")
            jobs.append(NotebookJob("ablation_summary", out, dict(study_dir=str(self.dir.root), output_dir=str(out))))
        if ("compare_checkpoints" in self.config.notebooks and self.config.compare
                and len(self.dir.first_captured(self.config.compare)) == 2):
            a, b = self.dir.compare_pair()
            out = self.dir.summary("compare_checkpoints")
            jobs.append(NotebookJob("compare_checkpoints", out, dict(
                checkpoint_a=str(a.checkpoint), checkpoint_b=str(b.checkpoint),
                capture_a=str(a.capture("probe")), capture_b=str(b.capture("probe")),
                flow_a=str(a.capture("flow")), flow_b=str(b.capture("flow")),
                mask_type=self.config.capture.masks[0], output_dir=str(out))))
        return [job._replace(params=self._with_config_params(job.notebook, job.params)) for job in jobs]

    def _with_config_params(self, notebook: str, params: dict) -> dict:
        return {**params, **self.config.notebook_params.get(notebook, {})}

    def notebook_stamp(self, job: NotebookJob) -> dict:
        """What an executed notebook's result depends on; it is redone when this changes: its parameters, the
        notebook's source (an edited notebook reruns), for a per-run notebook the captures it reads (their
        settings and checkpoint: recaptured, redone) and, for the ablation summary, the trained runs and probing
        results it reads (a resumed study that finishes more of them redoes it)."""
        source = hashlib.sha256((config_module.NOTEBOOK_DIR / f"{job.notebook}.ipynb").read_bytes()).hexdigest()[:16]
        if job.run is not None:
            capture = read_json(job.run.capture_stamp) or {}
            inputs = [hashlib.sha256(json.dumps(capture, sort_keys=True).encode()).hexdigest()[:16]]
        elif job.notebook == "ablation_summary":
            inputs = [r.name for r in self.runs() if r.trained] + [
                f"{r.name}/eos_probing" for r in self.runs()
                if self.captures(r) and r.trained and r.metrics("eos_probing") is not None]
        else:
            inputs = []
        return {"params": job.params, "source": source, "inputs": inputs}


__all__ = ["NotebookJob", "Plan"]
