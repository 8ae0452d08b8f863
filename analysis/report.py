"""The study's report: ablation table (mean ± sd over seeds), probe table, layer-wise retrieval and mask patching,
key figures, notebook links, failures.

Scores cannot lie: beside MMEB's P@1 (ties go to the positive, so a collapsed embedder scores 1.0) the
table shows the tie-robust P@1 (ties split evenly) and the number of tied queries, and flags runs whose
embeddings are degenerate. An sd needs two seeds: with one, tables show the mean alone and JSON holds
null (`mean_sd`). `collect_scores`, `ablation_table`, `markdown_table`, `grid_values`, `degenerate_notes`,
`collect_probes` and `probe_table` are shared with `notebooks/ablation_summary.ipynb`.

The report reads a study folder through `StudyDir` and a `RunLog` (what one run of the study did); it imports
nothing of the study runner.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from analysis.io import atomic_write_text, write_json
from analysis.metrics.retrieval import DEGENERATE_SPREAD, is_degenerate, mmeb_scores
from analysis.study_dir import STUDY_FILE, RunDir, StudyDir, run_name  # noqa: F401 - STUDY_FILE: re-exported

STATUSES = ("done", "skipped", "failed", "cancelled")
COLUMNS = (("overall", "overall"), ("overall, ties split", "overall_tie_robust"), ("tied queries", "ties"),
           ("IND", "split.ind"), ("IND, ties split", "split_tie_robust.ind"), ("OOD", "split.ood"),
           ("cls", "meta_task.classification"), ("vqa", "meta_task.vqa"), ("ret", "meta_task.retrieval"),
           ("grd", "meta_task.grounding"), ("IND hard", "ind.negatives.hard"), ("IND random", "ind.negatives.random"))
# (notebook, figure stem, per run): per-run figures are shown for the compared cells under each cell's own mask
KEY_FIGURES = (("attention_flow", "eos_budget", True), ("eos_probing", "probing_curves", True),
               ("embedding_umap", "umap", True), ("compare_checkpoints", "cka", False))


@dataclass
class Outcome:
    """What happened to one job of a study run."""

    step: str
    target: str
    status: str  # done | skipped | failed | cancelled (not started: an earlier job failed, no --keep-going)
    seconds: float = 0.0
    error: str = ""


@dataclass
class RunLog:
    """What one run of the study did, for its report.

    outcomes: every job's `Outcome`. steps: `{step: {busy, span, jobs}}`, the last measured time of each step that
    had work (busy: summed job seconds; span: first start to last end; steps overlap, they are pipelined).
    seconds: this run's wall time; wall: the wall time of the last run that had work. stopped: no job started
    after the first failure.
    """

    outcomes: list[Outcome] = field(default_factory=list)
    steps: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0
    stopped: bool = False
    wall: float | None = None
    workers: int = 1

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]


def summarise(records: list[dict]) -> dict[str, float]:
    """Per-dataset records of one checkpoint -> flat `{column key: score}` (see `COLUMNS`)."""
    flat: dict[str, float] = {}
    for prefix, recs in (("", records), ("ind.", [r for r in records if r["split"] == "ind"])):
        if not recs:
            continue
        for key, value in mmeb_scores(recs).items():
            if isinstance(value, dict):
                flat.update({f"{prefix}{key}.{k}": v for k, v in value.items()})
            elif key != "n_datasets":
                flat[f"{prefix}{key}"] = value
    return flat


def _study_dir(study_dir: StudyDir | str | Path) -> StudyDir:
    return study_dir if isinstance(study_dir, StudyDir) else StudyDir(study_dir)


def _runs(study_dir: StudyDir | str | Path) -> list[RunDir]:
    """Every run a study folder's `study.json` lists, cell by cell, seeds ascending."""
    return _study_dir(study_dir).runs()


def collect_scores(study_dir: StudyDir | str | Path) -> list[dict]:
    """One row per trained and scored checkpoint of a study (a `StudyDir` or its path): cell, mask type, λ, seed,
    its score summary, its `embedding_spread` (NaN when not recorded) and whether that spread says `degenerate`."""
    rows = []
    for run in _runs(study_dir):
        scores = run.scores()
        if scores is not None and "datasets" in scores:
            spread = scores.get("embedding_spread", math.nan)
            rows.append(dict(cell=run.cell, mask_type=run.mask_type, recon_weight=run.recon_weight, note=run.note,
                             seed=run.seed, embedding_spread=spread, degenerate=is_degenerate(spread),
                             **summarise(scores["datasets"])))
    return rows


def collect_probes(study_dir: StudyDir | str | Path) -> list[dict]:
    """One row per (captured checkpoint, attribute) from the `eos_probing` notebooks, read under the cell's
    own mask type at the last layer: `{cell, seed, mask_type, recon_weight, attribute, eos, selectivity,
    content, chance, selectivity_by_layer}` (`eos`: EOS-state probe accuracy; `content`: the mean-pooled A-token
    reference; `selectivity_by_layer`: [layers+1], layer 0 = the embeddings)."""
    rows = []
    for run in _runs(study_dir):
        metrics = run.metrics("eos_probing")
        if metrics is None:
            continue
        probes, mask = metrics["probes"], run.mask_type
        for attribute, eos in probes.get(mask, {}).items():
            content = probes.get(f"{mask}/content_mean", {}).get(attribute, {"accuracy": [math.nan]})
            rows.append(dict(cell=run.cell, seed=run.seed, mask_type=mask, recon_weight=run.recon_weight,
                             attribute=attribute, eos=eos["accuracy"][-1], selectivity=eos["selectivity"][-1],
                             content=content["accuracy"][-1], chance=eos["chance"],
                             selectivity_by_layer=list(eos["selectivity"])))
    return rows


def collect_losses(study_dir: StudyDir | str | Path, rows: list[dict]) -> dict[str, tuple[list, list]]:
    """`{"<cell>/<stage>": (steps, losses)}` of each cell's lowest seed among `rows` (`collect_scores` rows)."""
    study_dir = _study_dir(study_dir)
    first: dict[str, int] = {}
    for r in rows:
        first[r["cell"]] = min(first.get(r["cell"], r["seed"]), r["seed"])
    curves = {}
    for cell, seed in first.items():
        for stage, points in study_dir.run(run_name(cell, seed)).losses().items():
            curves[f"{cell}/{stage}"] = ([p["step"] for p in points], [p["loss"] for p in points])
    return curves


def probe_table(rows: list[dict]) -> str:
    """Markdown table of `collect_probes` rows: mean ± sd over seeds per (cell, attribute)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["cell"], r["attribute"]), []).append(r)
    lines = ["| cell | mask type | λ | attribute | seeds | EOS probe | EOS selectivity | mean-pooled A | chance |",
             "|" + "---|" * 9]
    for (cell, attribute), group in groups.items():
        stats = [_fmt(mean_sd([g[k] for g in group])) for k in ("eos", "selectivity", "content", "chance")]
        lines.append(f"| {cell} | {group[0]['mask_type']} | {group[0]['recon_weight']:g} | {attribute} | "
                     f"{len(group)} | " + " | ".join(stats) + " |")
    return "\n".join(lines)


def collect_layerwise(study_dir: StudyDir | str | Path) -> dict[str, dict]:
    """`{cell: metrics}` of the `layerwise_analyses` notebook of each cell's lowest seed that has one (the study
    runs it for one seed per cell), with `seed` added; cells in the study's order."""
    found: dict[str, dict] = {}
    for run in _runs(study_dir):
        metrics = run.metrics("layerwise_analyses")
        if metrics is not None and run.seed < found.get(run.cell, {}).get("seed", math.inf):
            found[run.cell] = dict(metrics, seed=run.seed)
    return found


def layerwise_table(found: dict[str, dict]) -> str:
    """Markdown table of `collect_layerwise`: each cell's best layer against its last, under its embed mask."""
    lines = ["| cell | seed | embed mask | best layer | P@1 there (ties split) | last layer | gain | "
             "MMEB rule at best / last |", "|" + "---|" * 8]
    for cell, m in found.items():
        r = m["layerwise"][m["embed_mask"]]
        lines.append(f"| {cell} | {m['seed']} | {m['embed_mask']} | {r['best_layer']} | {r['best']:.3f} | "
                     f"{r['last']:.3f} | {r['gain']:+.3f} | {r['best_mmeb']:.3f} / {r['last_mmeb']:.3f} |")
    return "\n".join(lines)


def mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample sd (ddof 1) of the finite values; None where undefined (no values; one value's sd)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def ablation_table(rows: list[dict]) -> list[dict]:
    """Rows grouped by cell: `{cell, mask_type, recon_weight, note, n_seeds, degenerate_seeds, <key>: (mean, sd)}`
    (see `mean_sd`)."""
    cells: dict[str, list[dict]] = {}
    for r in rows:
        cells.setdefault(r["cell"], []).append(r)
    out = []
    for name, group in cells.items():
        entry = {k: group[0][k] for k in ("cell", "mask_type", "recon_weight", "note")}
        entry["n_seeds"] = len(group)
        entry["degenerate_seeds"] = [g["seed"] for g in group if g.get("degenerate")]
        for _, key in COLUMNS:
            entry[key] = mean_sd([g[key] for g in group if key in g])
        out.append(entry)
    return out


def _fmt(stat: tuple[float | None, float | None], spec: str = ".3f") -> str:
    mean, sd = stat
    if mean is None or math.isnan(mean):
        return "—"
    return f"{mean:{spec}}" if sd is None else f"{mean:{spec}} ± {sd:{spec}}"


def markdown_table(table: list[dict]) -> str:
    """The ablation table in markdown; a cell with degenerate seeds is marked ⚠ (see `degenerate_notes`)."""
    head = "| cell | mask type | λ | seeds | " + " | ".join(c for c, _ in COLUMNS) + " |"
    rule = "|" + "---|" * (4 + len(COLUMNS))
    lines = [head, rule]
    for e in table:
        name = e["cell"] + (" ⚠" if e["degenerate_seeds"] else "")
        cells = [name, e["mask_type"], f"{e['recon_weight']:g}", str(e["n_seeds"])]
        lines.append("| " + " | ".join(cells + [_fmt(e[key], ".1f" if key == "ties" else ".3f")
                                                for _, key in COLUMNS]) + " |")
    return "\n".join(lines)


def grid_values(table: list[dict], key: str) -> dict[tuple[str, float], tuple]:
    """`{(mask type, λ): (mean, sd)}` of column `key` for a heatmap, ties split where the scores have it
    (`split.ind` -> `split_tie_robust.ind`; checkpoints scored before that was recorded keep MMEB's rule)."""
    group, _, value = key.rpartition(".")
    robust = f"{group}_tie_robust.{value}"
    return {(e["mask_type"], e["recon_weight"]): e[robust] if e.get(robust, (None,))[0] is not None else e[key]
            for e in table}


def degenerate_notes(table: list[dict]) -> list[str]:
    """One markdown line per cell with degenerate seeds."""
    return [f"- ⚠ `{e['cell']}` seed(s) {', '.join(map(str, e['degenerate_seeds']))}: degenerate embeddings (spread "
            f"below {DEGENERATE_SPREAD:g}): every input embeds to nearly the same vector, so its MMEB-rule P@1 "
            f"counts ties as hits; read the `ties split` columns" for e in table if e["degenerate_seeds"]]


def _link(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def write_report(study_dir: StudyDir, log: RunLog, report_dir: str | Path) -> Path:
    """Write `<report_dir>/report.md` (and its figures, `ablation.json`) for a study folder after a run (`log`)."""
    from analysis import plots

    study_dir = _study_dir(study_dir)
    report_dir = Path(report_dir).resolve()
    report_dir.mkdir(parents=True, exist_ok=True)
    scores = collect_scores(study_dir)
    table = ablation_table(scores)
    lines = [f"# cocoa-lens study `{study_dir.config['name']}`", "", _run_line(study_dir, log), "",
             "## Ablation: mini-MMEB Precision@1 (mean ± sd over seeds)", "",
             "Mask type and λ are read from each cell's recipe (steps: see each cell's note). "
             "MMEB's rule gives ties to the positive; `ties split` shares a tied query's hit among the tied "
             "candidates, and `tied queries` counts them (summed over datasets). With one seed a value has no "
             "sd. `IND hard` / `IND random`: in-distribution datasets whose negatives differ from the positive in "
             "one attribute / are random.", "",
             markdown_table(table), ""]
    notes = degenerate_notes(table) + [f"- `{e['cell']}`: {e['note']}" for e in table if e["note"]]
    lines += notes + ([""] if notes else [])
    if table:
        plots.ablation_heatmap(grid_values(table, "split.ind"), value_name="IND P@1 (ties split)",
                               title="mini-MMEB IND P@1, ties split: mask type × λ",
                               save=report_dir / "ablation_heatmap")
        lines += ["![ablation heatmap](ablation_heatmap.png)", ""]
    probes = collect_probes(study_dir)
    if probes:
        lines += ["## What the EOS state holds: linear probes at the last layer (mean ± sd over seeds)", "",
                  "Under each cell's own mask type; `mean-pooled A` probes the mean of the input's token states "
                  "(the pooling CoCoA's EOS replaces); selectivity is accuracy minus a control task's.", "",
                  probe_table(probes), ""]
    layerwise = collect_layerwise(study_dir)
    if layerwise:
        lines += _layerwise_section(layerwise, report_dir)
    lines += _findings_section(study_dir, scores, probes, layerwise)
    figures = _key_figures(study_dir, report_dir)
    if figures:
        lines += ["## Key figures", "", *figures, ""]
    lines += ["## Executed notebooks", ""]
    lines += [f"- [{nb.parent.parent.name} / {nb.stem}]({_link(nb, report_dir)})"
              for nb in study_dir.executed_notebooks()] or ["- none"]
    lines += ["", "## Failures", ""]
    lines += [f"- {o.step} `{o.target}`: {o.error}" for o in log.failed] or ["- none"]
    write_json(report_dir / "ablation.json", table)
    return atomic_write_text(report_dir / "report.md", "\n".join(lines) + "\n")


def _run_line(study_dir: StudyDir, log: RunLog) -> str:
    """What this run did and how long each step took (busy worker time and its share; steps overlap)."""
    count = {s: log.count(s) for s in STATUSES}
    line = (f"Checkpoints in `{study_dir.root}`; this run took {log.seconds / 60:.1f} min "
            f"({count['done']} jobs run, {count['skipped']} already done, {count['failed']} failed"
            + (f", {count['cancelled']} not started after the failure" if count["cancelled"] else "") + ").")
    busy = sum(t["busy"] for t in log.steps.values())
    if busy > 0:
        steps = ", ".join(f"{step} {t['busy'] / 60:.1f} min ({t['busy'] / busy:.0%}, {t['jobs']} jobs)"
                          for step, t in log.steps.items())
        line += (f" Busy time of each step when it last had work, on {log.workers} worker(s): {steps}"
                 + (f"; wall time of the last run with work {log.wall / 60:.1f} min" if log.wall else "")
                 + " (the steps are pipelined: a run's capture starts when its training ends).")
    if log.stopped:
        line += " **The run stopped after the first failure** (`--keep-going` runs everything else)."
    return line


def _findings_section(study_dir: StudyDir, scores: list[dict], probes: list[dict],
                      layerwise: dict[str, dict]) -> list[str]:
    """The paper's questions (a)-(d) answered from the tables above, for the cells the config's `roles` names."""
    from analysis.findings import answers

    curves: dict[str, list[list[float]]] = {}
    for row in probes:
        curves.setdefault(row["cell"], []).append(row["selectivity_by_layer"])
    mean_curves = {cell: np.mean(found, axis=0).tolist() for cell, found in curves.items()}
    return answers(scores, study_dir.config.get("roles") or {}, mean_curves, layerwise) if scores else []


def _layerwise_section(found: dict[str, dict], report_dir: Path) -> list[str]:
    """The layer-wise P@1 curves and mask-patching profiles of every cell (figures drawn into `report_dir`)."""
    from analysis import plots

    curves = {f"{cell} ({m['embed_mask']})": m["layerwise"][m["embed_mask"]] for cell, m in found.items()}
    plots.layerwise_curves(curves, title="Retrieval by layer, each cell under its embed mask",
                           save=report_dir / "layerwise_p1")
    lines = ["## Layer by layer: retrieval and mask patching", "",
             f"P@1 of the EOS state at every layer (through the final norm, so the last layer scores the embedding) "
             f"on {next(iter(found.values()))['n_queries']} mini-MMEB queries, one seed per cell, under the mask the "
             "cell embeds with. Solid: ties split; dashed: MMEB's rule; the star marks the best layer (ties split); "
             "`gain` = best − last.", "", layerwise_table(found), "", "![layer-wise P@1](layerwise_p1.png)", "",
             "Mask patching: each query runs under two mask types (each figure's title names them: source into "
             "target), and the residual stream of layer r (0 = the embeddings) at the EOS position, or at all "
             "positions, is copied from the source run into the target run. Recovery 1 is the source run's "
             "embedding, 0 the target run's: the layer where it rises is where the source mask's restructuring "
             "takes effect.", ""]
    for positions in dict.fromkeys(p for m in found.values() for p in m["patching"]["profile"]):
        profiles = {cell: m["patching"]["profile"][positions] for cell, m in found.items()
                    if positions in m["patching"]["profile"]}
        plots.patching_profile(profiles, title=f"Mask patching at {positions}", legend="cell",
                               save=report_dir / f"mask_patching_{positions}")
        lines += [f"![mask patching at {positions}](mask_patching_{positions}.png)", ""]
    return lines


def _key_figures(study_dir: StudyDir, report_dir: Path) -> list[str]:
    """Copy the key figures into `report_dir`; returns their markdown lines. Per-run figures come from the
    lowest captured seed of each compared cell (or of the first cell), under that cell's own mask type, or
    the mask it ran as where a notebook folds equal conditions (its metrics' `same_as`: a bridged mask over
    inputs without B is bidirectional)."""
    config = study_dir.config
    runs = study_dir.first_captured(config.get("compare") or [config["cells"][0]["name"]])
    lines = []
    for notebook, stem, per_run in KEY_FIGURES:
        sources = [(study_dir.summary(notebook), "summary", stem, "")]
        if per_run:
            sources = []
            for r in runs:
                metrics = r.metrics(notebook) or {}
                ran = metrics.get("same_as", {}).get(r.mask_type, r.mask_type)
                sources.append((r.notebook(notebook), r.name, f"{stem}_{ran}", "" if ran == r.mask_type else
                                f" ({r.mask_type} ran as {ran}: no B segment)"))
        for folder, label, prefix, note in sources:
            found = sorted(folder.glob(f"{prefix}*.png"))
            if found:
                target = report_dir / f"{label}_{found[0].name}"
                shutil.copyfile(found[0], target)
                lines.append(f"![{notebook}: {label}{note}]({target.name})")
    return lines
