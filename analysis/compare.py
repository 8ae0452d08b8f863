"""Two checkpoints side by side: which pair, what is compared, and the widgets that pick another pair.

A `Side` is one checkpoint with its probing and flow captures; `resolve_pair` takes the pair the compare
notebook is given, or a study's configured `compare:` pair (`StudyDir.compare_pair`: never two seeds of one
cell). `compare` measures (CKA of the EOS states layer by layer, probes of one attribute) and draws (the
attention maps, the CKA map, the probe curves) one pair under one mask; `retrieval_deltas` reads the two
checkpoints' mini-MMEB scores. `CompareWidgets` runs all of it again for the pair, mask, layer and sample
picked in JupyterLab: every figure is a `matplotlib.figure.Figure` (no pyplot state, so the first click after
a kernel start draws like every other) shown in an `ipywidgets.Output`, and nothing is written to disk unless
the widgets are given a folder.

Layers are counted as everywhere in the toolkit (`analysis.plots.LAYER_AXIS`): 0 = the embeddings, l = the
output of block l; the attention shown at layer l is block l's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analysis import plots
from analysis.errors import UsageError
from analysis.io import read_json
from analysis.lens.store import Capture
from analysis.metrics.flow import attention_layer, retrieval_delta
from analysis.metrics.geometry import cka_matrix
from analysis.study_dir import SCORES_FILE, RunDir, StudyDir


@dataclass(frozen=True)
class Side:
    """One checkpoint of a comparison: its name, checkpoint folder (None: no scores) and captures (one
    subfolder per mask type)."""

    name: str
    capture: Path
    flow: Path
    checkpoint: Path | None = None

    @classmethod
    def of_run(cls, run: RunDir) -> "Side":
        return cls(run.name, run.capture("probe"), run.capture("flow"), run.checkpoint)

    @classmethod
    def of_paths(cls, capture: str, flow: str, *, checkpoint: str = "") -> "Side":
        """A side given by paths (the notebook's parameters); named after the folder holding the capture (a
        study's `captures/<run>/probe`) or the checkpoint."""
        name = Path(checkpoint).name if checkpoint else Path(capture).resolve().parent.name
        return cls(name, Path(capture), Path(flow), Path(checkpoint) if checkpoint else None)


def resolve_pair(study_dir: str = "", *, capture_a: str = "", capture_b: str = "", flow_a: str = "", flow_b: str = "",
                 checkpoint_a: str = "", checkpoint_b: str = "") -> tuple[Side, Side]:
    """The pair to compare: the given captures when both are set, else the configured pair of `study_dir`."""
    if capture_a and capture_b:
        return (Side.of_paths(capture_a, flow_a, checkpoint=checkpoint_a),
                Side.of_paths(capture_b, flow_b, checkpoint=checkpoint_b))
    if not study_dir:
        raise UsageError("set capture_a and capture_b (and flow_*, checkpoint_*), or study_dir to a study folder")
    a, b = StudyDir(study_dir).compare_pair()
    return Side.of_run(a), Side.of_run(b)


def study_sides(study_dir: str, *pair: Side) -> dict[str, Side]:
    """Every captured run of `study_dir` (none without one) and the sides of `pair`, by name, pair first."""
    sides = {s.name: s for s in pair}
    if study_dir:
        for run in StudyDir(study_dir).captured_runs():
            sides.setdefault(run.name, Side.of_run(run))
    return sides


def capture_masks(side: Side) -> list[str]:
    """The mask types `side` was captured under."""
    return sorted(p.parent.name for p in side.capture.glob("*/index.json"))


def lined_up(a: Capture, b: Capture) -> int:
    """How many leading samples the two captures share (the same keys in the same order); raises when they
    hold different samples."""
    n = min(len(a), len(b))
    if [r.key for r in a.records[:n]] != [r.key for r in b.records[:n]]:
        raise ValueError("the two captures hold different samples: capture both on the same dataset, n and seed")
    return n


def attention_pair(sides: tuple[Side, Side], mask: str, layer: int, sample: int, *, save=None):
    """The two checkpoints' attention maps of flow sample `sample` at `layer` (heads averaged), side by side,
    image blocks framed."""
    panels = []
    for side in sides:
        s = Capture.open(side.flow, mask_type=mask).sample(sample)
        pattern = np.asarray(s.pattern)
        block = attention_layer(layer, len(pattern))
        panels.append(dict(pattern=pattern[block].mean(axis=0), roles=s.token_labels(), image=s.is_image,
                           title=f"{side.name}: {mask}, layer {block + 1}, heads averaged"))
    return plots.attention_pair(panels, title=f"Attention, flow sample {sample}: {sides[0].name} vs {sides[1].name}",
                                save=save)


def pair_probes(caps: tuple[Capture, Capture], names: tuple[str, str], attribute: str, n: int) -> dict:
    """`{name: LayerProbe results}` of `attribute` from each checkpoint's EOS states (folds grouped by image),
    or `{"skipped": [reasons]}` when it cannot be probed."""
    from analysis.metrics.probing import probe_attributes  # scikit-learn: only when probing
    from analysis.probe_conditions import group_of

    labels = {attribute: caps[0].labels(attribute)[:n]}
    groups = [group_of(r) for r in caps[0].records[:n]]
    results = {nm: probe_attributes(c.eos_states()[:n], labels, groups=groups, cv=3)[attribute]
               for nm, c in zip(names, caps)}
    if any("skipped" in r for r in results.values()):
        return {"skipped": [r.get("skipped") for r in results.values()]}
    return {k: {m: np.asarray(v).tolist() for m, v in r.items()} for k, r in results.items()}


def compare(sides: tuple[Side, Side], mask: str, *, layer: int = -1, sample: int = 0, attribute: str = "colour",
            out: str | Path | None = None) -> dict:
    """Compare the pair under `mask`: `{"names", "cka" [La+1, Lb+1] (NaN where undefined), "probes" (or
    "skipped"), "figures": {"attention", "cka", "probes"}}`; figures saved into `out` when given."""
    caps = tuple(Capture.open(s.capture, mask_type=mask) for s in sides)
    n = lined_up(*caps)
    names = (sides[0].name, sides[1].name)
    save = (lambda stem: Path(out) / f"{stem}_{mask}") if out else (lambda stem: None)
    cka = cka_matrix(caps[0].eos_states()[:n], caps[1].eos_states()[:n])
    figures = {"attention": attention_pair(sides, mask, layer, sample, save=save("attention_pair")),
               "cka": plots.cka_heatmap(cka, names=names, title=f"Linear CKA of EOS states: {names[0]} vs {names[1]}, "
                                        f"{mask} (n={n})", save=save("cka"))}
    probes = pair_probes(caps, names, attribute, n)
    if "skipped" not in probes:
        figures["probes"] = plots.probing_curves(probes, title=f"{attribute} probes: {names[0]} vs {names[1]}, {mask}",
                                                 save=save("probes"))
    return {"names": names, "n": n, "cka": cka, "probes": probes, "figures": figures}


def cka_metrics(cka: np.ndarray) -> dict:
    """The notebook's CKA metrics: the matrix and its diagonal ([] for unequal depths), NaN written as null."""
    plain = np.where(np.isnan(cka), None, cka).tolist()
    diagonal = [plain[i][i] for i in range(len(plain))] if cka.shape[0] == cka.shape[1] else []
    return {"cka": plain, "cka_diagonal": diagonal}


def scores_of(side: Side) -> dict:
    """The checkpoint's mini-MMEB scores (`scores.json`)."""
    scores = read_json(side.checkpoint / SCORES_FILE) if side.checkpoint else None
    if scores is None:
        raise UsageError(f"{side.name}: no {SCORES_FILE} in {side.checkpoint} (is it a trained, scored checkpoint?)")
    return scores


def retrieval_deltas(sides: tuple[Side, Side]) -> dict:
    """Per mini-MMEB dataset both checkpoints score: `{"names", "delta": {dataset: b - a} (MMEB rule, via
    `retrieval_delta`), "delta_tie_robust", "rows": {dataset: (a's record, b's record)}, "degenerate": [names]}`."""
    scores = [scores_of(s) for s in sides]
    by_dataset = [{r["dataset"]: r for r in s["datasets"]} for s in scores]
    shared = [d for d in by_dataset[0] if d in by_dataset[1]]

    def delta(key: str) -> dict[str, float]:
        return retrieval_delta({d: by_dataset[0][d].get(key, np.nan) for d in shared},
                               {d: by_dataset[1][d].get(key, np.nan) for d in shared})

    return {"names": (sides[0].name, sides[1].name), "delta": delta("score"),
            "delta_tie_robust": delta("score_tie_robust"),
            "rows": {d: (by_dataset[0][d], by_dataset[1][d]) for d in shared},
            "degenerate": [(s.name, sc["embedding_spread"]) for s, sc in zip(sides, scores) if sc.get("degenerate")]}


class CompareWidgets:
    """Dropdowns for checkpoints A and B (starting at the given pair), the mask type, a layer slider counted
    as everywhere (0 = embeddings; attention at 1..L), the flow sample, a "Run Interact" button, and an
    `Output` the comparison is drawn into: attention maps, CKA, probes and the retrieval deltas. Figures are
    saved only into `out` when it is given."""

    def __init__(self, sides: dict[str, Side], pair: tuple[Side, Side], mask: str, attribute: str = "colour",
                 out: str | Path | None = None):
        import ipywidgets as widgets

        self.sides, self.attribute, self.out = sides, attribute, out
        masks = capture_masks(pair[0])
        first = Capture.open(pair[0].flow, mask_type=masks[0])
        n_blocks = first.meta["n_layers"]
        names = list(sides)
        self.a = widgets.Dropdown(options=names, value=pair[0].name, description="checkpoint A")
        self.b = widgets.Dropdown(options=names, value=pair[1].name, description="checkpoint B")
        self.mask = widgets.Dropdown(options=masks, value=mask if mask in masks else masks[0], description="mask type")
        self.layer = widgets.IntSlider(min=1, max=n_blocks, value=n_blocks, description="layer")
        self.sample = widgets.IntSlider(min=0, max=len(first) - 1, value=0, description="flow sample")
        self.button = widgets.Button(description="Run Interact", button_style="primary")
        self.output = widgets.Output()
        self.button.on_click(lambda _: self.run())
        for w in (self.a, self.b, self.mask, self.layer, self.sample):
            w.style.description_width = "initial"
        note = widgets.HTML(f"<i>layers count as in CKA and probes: 0 = embeddings, l = block l's output; the "
                            f"attention of layers 1–{n_blocks} is drawn</i>")
        self.box = widgets.VBox([widgets.HBox([self.a, self.b, self.mask]), widgets.HBox([self.layer, note]),
                                 self.sample, self.button, self.output])

    def _ipython_display_(self):
        from IPython.display import display

        display(self.box)

    def pair(self) -> tuple[Side, Side]:
        return self.sides[self.a.value], self.sides[self.b.value]

    def run(self) -> dict:
        """Compare the picked pair into the output (cleared first); returns `compare`'s result."""
        from IPython.display import Markdown, display

        from analysis.tables import retrieval_delta_table

        with self.output:
            self.output.clear_output(wait=True)
            sides = self.pair()
            display(Markdown(f"Comparing {sides[0].name} (A) with {sides[1].name} (B) under {self.mask.value}, "
                             f"attention at layer {self.layer.value}, flow sample {self.sample.value}"))
            result = compare(sides, self.mask.value, layer=self.layer.value, sample=self.sample.value,
                             attribute=self.attribute, out=self.out)
            for fig in result["figures"].values():
                display(fig)
            if "skipped" in result["probes"]:
                display(Markdown(f"{self.attribute} probes skipped: {result['probes']['skipped']}"))
            display(Markdown(retrieval_delta_table(retrieval_deltas(sides))))
        return result
