"""Every figure of the toolkit, one function each, in one house style.

Each function returns a ``matplotlib.figure.Figure`` built without pyplot (no global figure
state, nothing to close; it displays once in Jupyter when returned) and takes ``save``: a path
or path stem; when given, ``<stem>.png`` and ``<stem>.svg`` are written atomically.
"""

from __future__ import annotations

import os
import textwrap
import uuid
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from analysis.metrics.arrays import as_numpy

# Colours of roles and token labels (`analysis.lens.store.token_labels`: image / text / EOS / B), the same in
# every figure.
ROLE_COLOURS = {
    "A": "#4C72B0",
    "image": "#8172B3",
    "text": "#64B5CD",
    "EOS": "#C44E52",
    "B": "#55A868",
    "PAD": "#BBBBBB",
}

# How every figure counts layers: the residual stream's layer 0 is the embeddings, layer l the output of block l
# (1-based), so a model of L blocks has layers 0..L, and the attention of layer l is block l's.
LAYER_AXIS = "layer (0 = embeddings)"

HOUSE_STYLE = {
    **sns.axes_style("ticks"),
    **sns.plotting_context("notebook", font_scale=0.9),
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titleweight": "bold",
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "svg.fonttype": "none",
}


def house_style():
    """Context manager applying ``HOUSE_STYLE`` (every function here draws inside it)."""
    return mpl.rc_context(HOUSE_STYLE)


def _label_colours(labels: Sequence[Hashable]) -> dict[Hashable, str | tuple]:
    """Role/segment colours where known, else a seaborn palette in first-appearance order."""
    unknown = [lab for lab in dict.fromkeys(labels) if lab not in ROLE_COLOURS]
    palette = dict(zip(unknown, sns.color_palette("Set2", max(len(unknown), 1))))
    return {lab: ROLE_COLOURS.get(lab, palette.get(lab)) for lab in dict.fromkeys(labels)}


def _wrap(title: str, width: int) -> str:
    """A title wrapped to lines of at most `width` characters (a narrow figure never cuts it off)."""
    return "\n".join(textwrap.fill(line, width) for line in title.split("\n"))


def _figure(figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots()


def _save(fig: Figure, save: str | os.PathLike) -> None:
    """Write ``<stem>.png`` and ``<stem>.svg`` (a ``.png``/``.svg`` suffix on ``save`` is dropped),
    each to a temporary file in the target directory first, then ``os.replace``."""
    path = Path(save)
    stem = path.with_suffix("") if path.suffix.lower() in {".png", ".svg"} else path
    stem.parent.mkdir(parents=True, exist_ok=True)
    for fmt in ("png", "svg"):
        final = stem.with_name(f"{stem.name}.{fmt}")
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "xb") as fh:
                fig.savefig(fh, format=fmt, bbox_inches="tight")
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)


def _finish(fig: Figure, save: str | os.PathLike | None) -> Figure:
    if save is not None:
        _save(fig, save)
    return fig


def attention_heatmap(
    pattern, roles: Sequence[str], *, title: str = "Attention", ax: Axes | None = None, save=None,
    image: Sequence[bool] | None = None,
) -> Figure:
    """Heat map of one attention pattern ``[q, k]`` with role bands (``roles``: length ``q``; a captured
    sample's ``token_labels()``: image / text / EOS / B, or roles or segment names) along the keys (top) and
    queries (right), and a role legend.
    ``image`` (length ``q``, True at the image tokens) frames the image block: dashed lines around its keys and
    queries, labelled "image tokens"."""
    p = as_numpy(pattern)
    if p.ndim != 2 or p.shape[0] != p.shape[1] or len(roles) != p.shape[0]:
        raise ValueError(f"pattern must be [q, q] with q = len(roles); got {p.shape} and {len(roles)} roles")
    if image is not None and len(image) != p.shape[0]:
        raise ValueError(f"image flags must be length {p.shape[0]}, got {len(image)}")
    with house_style():
        if ax is None:
            fig, ax = _figure((5.6, 4.8))
        else:
            fig = ax.figure
        im = ax.imshow(p, cmap="viridis", vmin=0, aspect="auto", interpolation="nearest")
        fig.colorbar(im, ax=ax, label="attention", pad=0.08)
        colours = _label_colours(roles)
        band = np.array([to_rgb(colours[r]) for r in roles])[None]  # [1, q, 3]
        for bounds, strip in (([0, 1.01, 1, 0.035], band), ([1.01, 0, 0.035, 1], band.transpose(1, 0, 2))):
            band_ax = ax.inset_axes(bounds)
            band_ax.imshow(strip, aspect="auto", interpolation="nearest")
            band_ax.set_axis_off()
        ax.set_xlabel("key position")
        ax.set_ylabel("query position")
        ax.set_title(_wrap(title, 60), pad=14)
        handles = [Patch(color=c, label=r) for r, c in colours.items()]
        flags = np.flatnonzero(np.asarray(image if image is not None else [], dtype=bool))
        if flags.size:
            lo, hi = flags.min() - 0.5, flags.max() + 0.5
            for edge in (lo, hi):
                ax.axvline(edge, color="white", linestyle="--", linewidth=1.0)
                ax.axhline(edge, color="white", linestyle="--", linewidth=1.0)
            ax.text((lo + hi) / 2, hi + 0.3, "image tokens", color="white", ha="center", va="top", fontsize=8,
                    fontweight="bold")
            handles.append(Line2D([], [], color="grey", linestyle="--", label="image tokens"))
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=min(len(handles), 4),
                  frameon=False)
        return _finish(fig, save)


def attention_pair(panels: Sequence[Mapping], *, title: str | None = None, save=None) -> Figure:
    """Attention maps side by side, one per panel: ``{"pattern": [q, q], "roles", "title"}`` and optionally
    ``"image"`` (image-token flags), each drawn as `attention_heatmap` draws one."""
    if not panels:
        raise ValueError("no attention maps to draw")
    with house_style():
        fig = Figure(figsize=(6.2 * len(panels), 5.8), layout="constrained")
        for ax, panel in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
            attention_heatmap(panel["pattern"], panel["roles"], title=panel.get("title", "Attention"), ax=ax,
                              image=panel.get("image"))
        if title:
            fig.suptitle(_wrap(title, 110), fontweight="bold")
        return _finish(fig, save)


def rollout_on_image(
    scores, grid_hw: tuple[int, int], *, image=None, title: str = "EOS attention on image", save=None
) -> Figure:
    """EOS rollout/attention onto the image tokens ``[h * w]`` shown on the merged patch grid
    ``grid_hw = (h, w)``, overlaid on ``image`` (PIL image or ``[H, W(, C)]`` array) when given: the input
    image beside the same image under the rollout, so the picture is seen unobscured too."""
    s = as_numpy(scores).reshape(-1)
    h, w = grid_hw
    if s.size != h * w:
        raise ValueError(f"{s.size} scores do not fill a {h}x{w} grid")
    with house_style():
        if image is None:
            fig, ax = _figure((4.6, 4.4))
            im = ax.imshow(s.reshape(h, w), cmap="inferno", interpolation="nearest")
            ax.set_title(f"image-token grid {h}x{w} (no image at hand)", fontsize=8)
        else:
            fig = Figure(figsize=(7.6, 4.2), layout="constrained")
            bare, ax = fig.subplots(1, 2)
            pixels = np.asarray(image)
            extent = (0, pixels.shape[1], pixels.shape[0], 0)
            bare.imshow(pixels, extent=extent)
            bare.set_title("input image", fontsize=9)
            bare.set_axis_off()
            ax.imshow(pixels, extent=extent)
            im = ax.imshow(s.reshape(h, w), cmap="inferno", alpha=0.6, extent=extent, interpolation="nearest")
            ax.set_title(f"rollout on its {h}x{w} image-token grid", fontsize=9)
        fig.colorbar(im, ax=ax, label="share of EOS's final state").solids.set_alpha(1.0)
        ax.set_axis_off()
        fig.suptitle(_wrap(title, 70), fontweight="bold")
        return _finish(fig, save)


def segment_budget(
    budget: Mapping[str, Sequence[float]] | np.ndarray,
    *, names: Sequence[str] | None = None,
    title: str = "EOS attention budget",
    save=None,
) -> Figure:
    """Stacked bars per layer of how the EOS attention splits over segments.

    budget: ``{segment: [blocks]}`` (e.g. ``SegmentMass.budget("EOS")``) or ``[blocks, n_segments]``
    with ``names`` (length ``n_segments``); entry ``i`` is block ``i``'s attention, drawn at layer ``i + 1``
    (``LAYER_AXIS``: layer 0 is the embeddings, which attend nowhere).
    """
    if isinstance(budget, Mapping):
        names = list(budget)
        values = np.stack([as_numpy(budget[k]).reshape(-1) for k in names])
    else:
        values = as_numpy(budget).T
        if names is None or len(names) != values.shape[0]:
            raise ValueError(f"an array budget [layers, n_segments={values.shape[0]}] needs as many names")
    values = np.nan_to_num(values)  # [n_segments, layers]
    layers = np.arange(1, values.shape[1] + 1)
    colours = _label_colours(names)
    with house_style():
        fig, ax = _figure((5.6, 3.6))
        bottom = np.zeros(len(layers))
        for name, row in zip(names, values):
            ax.bar(layers, row, bottom=bottom, color=colours[name], label=name, width=0.8)
            bottom += row
        ax.set_xticks(layers)
        ax.set_xlabel(f"{LAYER_AXIS}: its attention")
        ax.set_ylabel("share of attention")
        ax.set_ylim(0, max(1.0, float(bottom.max())))
        ax.set_title(_wrap(title, 60))
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        return _finish(fig, save)


def probing_curves(results: Mapping[str, Mapping], *, title: str = "Linear probes per layer", save=None) -> Figure:
    """Cross-validated probe accuracy per layer (line, ±1 sd band), control-task accuracy (dashed) and
    chance, the majority-class rate (dotted, where the results give ``chance``), for each entry of ``results``
    (``{attribute or checkpoint: LayerProbe results}``); entries ``{"skipped": reason}`` are listed under
    the plot. Layers as ``LAYER_AXIS`` counts them (0 = embeddings)."""
    shown = {k: r for k, r in results.items() if "skipped" not in r}
    if not shown:
        raise ValueError("no probe results to plot: every entry was skipped")
    with house_style():
        fig, ax = _figure((5.6, 3.8))
        for (name, res), colour in zip(shown.items(), sns.color_palette("tab10", len(shown))):
            acc, sd = np.asarray(res["accuracy"]), np.asarray(res["accuracy_std"])
            layers = np.arange(len(acc))
            ax.plot(layers, acc, marker="o", color=colour, label=name)
            ax.fill_between(layers, acc - sd, acc + sd, color=colour, alpha=0.2, linewidth=0)
            ax.plot(layers, np.asarray(res["control"]), linestyle="--", color=colour)
            if res.get("chance") is not None:
                ax.axhline(float(res["chance"]), linestyle=":", color=colour, linewidth=1.2)
        handles, _ = ax.get_legend_handles_labels()
        handles.append(Line2D([], [], color="grey", linestyle="--", label="control task"))
        if any(r.get("chance") is not None for r in shown.values()):
            handles.append(Line2D([], [], color="grey", linestyle=":", label="chance (majority class)"))
        ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        ax.set_xticks(np.arange(max(len(r["accuracy"]) for r in shown.values())))
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(LAYER_AXIS)
        ax.set_ylabel("CV accuracy")
        ax.set_title(_wrap(title, 60))
        skipped = [f"{k} ({r['skipped']})" for k, r in results.items() if "skipped" in r]
        if skipped:
            fig.text(0.01, -0.02, "skipped: " + "; ".join(skipped), fontsize=7, va="top")
        return _finish(fig, save)


def umap_scatter(
    embeddings, labels: Sequence[Hashable], *, title: str = "UMAP", seed: int = 0, n_neighbors: int = 15, save=None,
    coords=None,
) -> Figure:
    """2-D UMAP (cosine metric) of ``embeddings [N, d]`` coloured by ``labels [N]``.
    The coordinates ``[N, 2]`` are stored on the figure as ``fig.cocoa_coords``; pass them back as
    ``coords`` to colour the same map by other labels without fitting UMAP again."""
    x = as_numpy(embeddings)
    labels = [str(v) for v in (labels.tolist() if hasattr(labels, "tolist") else labels)]
    if len(labels) != len(x):
        raise ValueError(f"{len(x)} embeddings but {len(labels)} labels")
    if coords is None:
        import umap  # slow to import; only here

        reducer = umap.UMAP(n_neighbors=min(n_neighbors, len(x) - 1), metric="cosine", random_state=seed, n_jobs=1)
        coords = reducer.fit_transform(x)
    elif np.shape(coords) != (len(x), 2):
        raise ValueError(f"coords must be [{len(x)}, 2] (a figure's cocoa_coords), got {np.shape(coords)}")
    with house_style():
        fig, ax = _figure((5.2, 4.2))
        palette = "tab10" if len(set(labels)) <= 10 else "husl"
        sns.scatterplot(x=coords[:, 0], y=coords[:, 1], hue=labels, ax=ax, s=18, linewidth=0, palette=palette)
        sns.move_legend(ax, "center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("UMAP 1")
        ax.set_ylabel("UMAP 2")
        ax.set_title(title)
        fig.cocoa_coords = coords
        return _finish(fig, save)


def cka_heatmap(matrix, *, names: tuple[str, str] = ("a", "b"), title: str = "Linear CKA", save=None) -> Figure:
    """Layer-by-layer CKA ``[La, Lb]`` between checkpoints ``names[0]`` (rows) and ``names[1]``
    (columns), layers as ``LAYER_AXIS`` counts them; cells annotated when both sides have at most 12 layers.
    Undefined cells (NaN: a layer constant across the inputs, such as the EOS token's embedding at layer 0) are
    left blank, and a note under the map says which layers."""
    m = as_numpy(matrix)
    with house_style():
        fig, ax = _figure((5.4, 4.6))
        annotate = max(m.shape) <= 12
        sns.heatmap(m, ax=ax, vmin=0, vmax=1, cmap="magma", annot=annotate, fmt=".2f", cbar_kws={"label": "CKA"},
                    mask=np.isnan(m))
        ax.set_ylabel(f"{names[0]}: {LAYER_AXIS}")
        ax.set_xlabel(f"{names[1]}: {LAYER_AXIS}")
        ax.set_title(_wrap(title, 55))
        blank_rows = [i for i in range(m.shape[0]) if np.isnan(m[i]).all()]
        blank_cols = [j for j in range(m.shape[1]) if np.isnan(m[:, j]).all()]
        if blank_rows or blank_cols:
            which = sorted(set(blank_rows) | set(blank_cols))
            fig.text(0.01, -0.01, f"blank: CKA undefined at layer {', '.join(map(str, which))} (the same state for "
                     "every input: nothing to compare)", fontsize=7, va="top")
        return _finish(fig, save)


def ablation_heatmap(
    table: Mapping[tuple[str, float], float | tuple[float, float]] | np.ndarray,
    *, row_labels: Sequence | None = None,
    col_labels: Sequence | None = None,
    sd=None,
    value_name: str = "P@1",
    title: str = "Ablation",
    save=None,
) -> Figure:
    """Mask type x recon weight grid annotated ``mean±sd``; NaN or missing cells grey with "—".

    table: ``{(mask_type, recon_weight): mean or (mean, sd)}`` (rows in first-appearance order,
    columns sorted), or a ``[rows, cols]`` array of means with ``row_labels``, ``col_labels``
    and optionally ``sd [rows, cols]``.
    """
    if isinstance(table, Mapping):
        row_labels = list(dict.fromkeys(k[0] for k in table))
        col_labels = sorted(dict.fromkeys(k[1] for k in table))
        cells = {k: tuple(v) if isinstance(v, (tuple, list)) else (v, np.nan) for k, v in table.items()}
        missing_cell = (np.nan, np.nan)
        pairs = np.array([[cells.get((r, c), missing_cell) for c in col_labels] for r in row_labels], dtype=np.float64)
        means, sds = pairs[..., 0], pairs[..., 1]
    else:
        means = as_numpy(table)
        sds = np.full_like(means, np.nan) if sd is None else as_numpy(sd)
        row_labels = list(range(means.shape[0])) if row_labels is None else list(row_labels)
        col_labels = list(range(means.shape[1])) if col_labels is None else list(col_labels)
    text = np.array([
        [f"{m:.2f}" + ("" if np.isnan(s) else f"±{s:.2f}") for m, s in zip(mrow, srow)]
        for mrow, srow in zip(means, sds)
    ])
    missing = np.isnan(means)
    with house_style():
        fig, ax = _figure((1.3 * len(col_labels) + 2.4, 0.6 * len(row_labels) + 1.6))
        ax.set_facecolor("#DDDDDD")
        sns.heatmap(
            means, mask=missing, annot=text, fmt="", cmap="crest", ax=ax,
            xticklabels=col_labels, yticklabels=row_labels, cbar_kws={"label": value_name},
        )
        for i, j in zip(*np.nonzero(missing)):
            ax.text(j + 0.5, i + 0.5, "—", ha="center", va="center", color="#555555")
        ax.set_xlabel("recon weight λ")
        ax.set_ylabel("mask type")
        ax.set_title(title)
        return _finish(fig, save)


def loss_curves(
    curves: Mapping[str, Sequence[float] | tuple[Sequence[float], Sequence[float]]],
    *, title: str = "Training loss",
    logy: bool = False,
    save=None,
) -> Figure:
    """One line per curve: ``{name: values}`` (steps 0, 1, ...) or ``{name: (steps, values)}``."""
    with house_style():
        fig, ax = _figure((5.6, 3.6))
        for name, curve in curves.items():
            if isinstance(curve, tuple) and len(curve) == 2 and np.ndim(curve[0]) == 1:
                steps, values = as_numpy(curve[0]), as_numpy(curve[1])
            else:
                values = as_numpy(curve)
                steps = np.arange(len(values))
            ax.plot(steps, values, label=name)
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(title)
        ax.legend(frameon=False)
        return _finish(fig, save)


def probe_bars(
    rows: Sequence[Mapping], *, value: str = "eos", title: str = "Probe accuracy", ylabel: str = "accuracy", save=None
) -> Figure:
    """Grouped bars: probe ``value`` per attribute (x) and cell (hue), mean with sd over seeds as error
    bars, each attribute's chance level as a black tick. rows: dicts with ``cell``, ``attribute``,
    ``value`` and ``chance`` (`analysis.report.collect_probes`)."""
    if not rows:
        raise ValueError("no probe rows to plot: run the eos_probing notebooks first")
    attributes = list(dict.fromkeys(r["attribute"] for r in rows))
    with house_style():
        fig, ax = _figure((1.4 * len(attributes) + 3.2, 3.8))
        sns.barplot(x=[r["attribute"] for r in rows], y=[r[value] for r in rows], hue=[r["cell"] for r in rows],
                    order=attributes, errorbar="sd", ax=ax)
        for i, attribute in enumerate(attributes):
            chance = np.mean([r["chance"] for r in rows if r["attribute"] == attribute])
            ax.hlines(chance, i - 0.45, i + 0.45, colors="black", linewidth=1.5, label="chance" if i == 0 else None)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        ax.set_ylim(0, 1)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        return _finish(fig, save)


def _layer_axis(ax: Axes, n_layers: int) -> None:
    ax.set_xticks(np.arange(n_layers))
    ax.set_xlabel(LAYER_AXIS)


def layerwise_curves(results: Mapping[str, Mapping], *, title: str = "Retrieval by layer", save=None) -> Figure:
    """P@1 of the EOS state at every layer, one colour per entry of ``results`` (``{cell or mask type:
    analysis.metrics.layerwise.layerwise_retrieval(...)}``): tie-robust P@1 solid, MMEB-rule P@1 dashed,
    the best layer (by tie-robust P@1) starred."""
    if not results:
        raise ValueError("no layer-wise results to plot")
    with house_style():
        fig, ax = _figure((5.6, 3.8))
        for (name, res), colour in zip(results.items(), sns.color_palette("tab10", len(results))):
            robust = np.asarray(res["overall_tie_robust"], dtype=float)
            layers = np.arange(len(robust))
            ax.plot(layers, robust, marker="o", color=colour, label=name)
            ax.plot(layers, np.asarray(res["overall"], dtype=float), linestyle="--", color=colour)
            best = int(np.argmax(robust))
            ax.plot([best], [robust[best]], marker="*", markersize=15, color=colour, markeredgecolor="black")
        handles, _ = ax.get_legend_handles_labels()
        handles += [Line2D([], [], color="grey", linestyle="--", label="MMEB rule (ties to the positive)"),
                    Line2D([], [], color="grey", marker="*", markersize=12, linestyle="", label="best layer")]
        ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        _layer_axis(ax, max(len(r["overall_tie_robust"]) for r in results.values()))
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("P@1 (ties split)")
        ax.set_title(title)
        return _finish(fig, save)


def patching_profile(profiles: Mapping[str, Mapping], *, retrieval: Mapping[str, Mapping] | None = None,
                     title: str = "Mask patching", legend: str = "patched positions", save=None) -> Figure:
    """Mask-patching profile per layer: the share of the source run's embedding recovered by patching
    layer r, one line per entry of ``profiles`` (``{positions: analysis.lens.patching.mask_patching(...)}``, or
    one entry per checkpoint with ``legend="cell"``);
    with ``retrieval`` (``{positions: patching_retrieval(...)}``) a second panel shows P@1 (ties split) per
    patched layer beside the unpatched target run's (dotted) and source run's (dash-dotted)."""
    if not profiles:
        raise ValueError("no patching profiles to plot")
    with house_style():
        fig = Figure(figsize=(10.4 if retrieval else 5.6, 3.8), layout="constrained")
        axes = fig.subplots(1, 2 if retrieval else 1, squeeze=False)[0]
        colours = dict(zip(dict.fromkeys([*profiles, *(retrieval or {})]), sns.color_palette("tab10", 10)))
        first = next(iter(profiles.values()))
        for name, res in profiles.items():
            axes[0].plot(np.arange(len(res["recovery"])), res["recovery"], marker="o", color=colours[name], label=name)
        axes[0].set_ylim(-0.05, 1.05)
        axes[0].set_ylabel("recovery of the source embedding")
        axes[0].set_title(f"{title}: {first['source']} into {first['target']}")
        for name, res in (retrieval or {}).items():
            scores = np.asarray(res["overall_tie_robust"], dtype=float)
            axes[1].plot(np.arange(len(scores)), scores, marker="o", color=colours[name], label=name)
        if retrieval:
            runs = next(iter(retrieval.values()))  # the unpatched runs: the same whatever the positions
            axes[1].axhline(runs["target_run"]["overall_tie_robust"], color="grey", linestyle=":",
                            label=f"{first['target']} run")
            axes[1].axhline(runs["source_run"]["overall_tie_robust"], color="grey", linestyle="-.",
                            label=f"{first['source']} run")
            axes[1].set_ylim(0, 1.02)
            axes[1].set_ylabel("P@1 (ties split)")
            axes[1].set_title("Retrieval with layer r patched")
        for ax in axes:
            _layer_axis(ax, len(first["recovery"]))
            ax.legend(title=legend, frameon=False)
        return _finish(fig, save)


def lens_rank_heatmap(ranks, tokens: Sequence[str], *, title: str = "EOS lens: rank of the target tokens",
                      save=None) -> Figure:
    """Rank (1 = top) of each target token (columns, ``tokens``) in the EOS lens at every layer (rows):
    ``ranks [layers, T]`` (`EosLens.target_ranks`), coloured on a log scale, annotated when T <= 20."""
    r = as_numpy(ranks)
    if r.ndim != 2 or r.shape[1] != len(tokens):
        raise ValueError(f"ranks must be [layers, T] with T = {len(tokens)} tokens; got {r.shape}")
    with house_style():
        fig, ax = _figure((0.55 * len(tokens) + 2.6, 0.4 * r.shape[0] + 1.6))
        sns.heatmap(np.log10(r), ax=ax, cmap="rocket", annot=r.astype(int) if len(tokens) <= 20 else False, fmt="d",
                    xticklabels=list(tokens), cbar_kws={"label": "log10 rank"}, vmin=0)
        ax.set_xlabel("target token")
        ax.set_ylabel(LAYER_AXIS)
        ax.set_title(title)
        return _finish(fig, save)


def pc_shift_bars(shift: Mapping, *, names: tuple[str, str] = ("a", "b"), title: str = "Principal-direction shift",
                  save=None) -> Figure:
    """Per principal component of ``names[0]``'s states: ``|cos|`` with the same PC of ``names[1]``, the
    variance each carries, and the share of the per-input shift along it
    (``analysis.metrics.geometry.principal_shift``)."""
    bars = {f"|cos| PC {names[0]} / {names[1]}": shift["cosine"], f"variance {names[0]}": shift["variance_a"],
            f"variance {names[1]}": shift["variance_b"], f"shift along {names[0]}'s PC": shift["shift_along_a"]}
    k = len(shift["cosine"])
    width = 0.8 / len(bars)
    with house_style():
        fig, ax = _figure((1.1 * k + 3.6, 3.6))
        for i, ((label, values), colour) in enumerate(zip(bars.items(), sns.color_palette("Set2", len(bars)))):
            ax.bar(np.arange(k) + (i - (len(bars) - 1) / 2) * width, values, width, color=colour, label=label)
        ax.set_xticks(np.arange(k), [f"PC {i + 1}" for i in range(k)])
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("cosine / share")
        ax.set_title(title)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        return _finish(fig, save)


def window_knockout_heatmap(sweep: Mapping, *, value: str = "drop_tie_robust",
                            title: str = "P@1 drop by knockout window", save=None) -> Figure:
    """Drop in P@1 when each flow (rows) is cut in each layer window (columns, and every layer: "all"),
    from ``analysis.lens.knockout.window_knockout``; ``value`` "drop_tie_robust" or "drop" (MMEB rule)."""
    flows = list(sweep["flows"])
    robust = value == "drop_tie_robust"
    key = "overall_tie_robust" if robust else "overall"
    table = np.array([[*sweep["flows"][f][value], sweep["base"][key] - sweep["flows"][f]["all_layers"][key]]
                      for f in flows])
    # windows hold 0-based block indices; shown as LAYER_AXIS counts layers (block i is layer i + 1)
    columns = [f"{w[0] + 1}-{w[-1] + 1}" if len(w) > 1 else str(w[0] + 1) for w in sweep["windows"]] + ["all"]
    limit = max(float(np.abs(table).max()), 1e-3)
    with house_style():
        fig, ax = _figure((0.9 * len(columns) + 2.6, 0.6 * len(flows) + 1.8))
        sns.heatmap(table, ax=ax, cmap="vlag", vmin=-limit, vmax=limit, annot=True, fmt=".2f", xticklabels=columns,
                    yticklabels=flows, cbar_kws={"label": f"P@1 drop{' (ties split)' if robust else ''}"})
        ax.set_xlabel(f"layers cut ({LAYER_AXIS}, so blocks count from 1)")
        ax.set_ylabel("flow cut")
        ax.set_title(f"{title} ({sweep['mask_type']})")
        return _finish(fig, save)
