"""The markdown tables the notebooks display: one function per table, from the results the analyses return.

Layers are counted as in every figure (`analysis.plots.LAYER_AXIS`: 0 = the embeddings, l = block l's output).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence


def markdown(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    """A markdown table of `header` and `rows` (cells already formatted as text, or anything `str` takes)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def _score(record: Mapping) -> str:
    robust = record.get("score_tie_robust", math.nan)
    return f"{record['score']:.2f} ({robust:.2f}, {record.get('ties', '?')} tied)"


def retrieval_delta_table(deltas: Mapping) -> str:
    """`analysis.compare.retrieval_deltas` as a table: each dataset's P@1 under MMEB's rule (ties split, tied
    queries) for both checkpoints and the delta b − a, then a warning per degenerate checkpoint."""
    a, b = deltas["names"]
    rows = [(d, _score(ra), _score(rb), f"{deltas['delta'][d]:+.2f}", f"{deltas['delta_tie_robust'][d]:+.2f}")
            for d, (ra, rb) in deltas["rows"].items()]
    lines = [f"**Retrieval deltas ({b} − {a})**", "",
             markdown(["dataset", a, b, "delta", "delta (ties split)"], rows)]
    lines += [f"\n⚠ **{name}: degenerate embeddings** (spread {spread:.1e}): every input embeds to nearly the same "
              "vector, so its MMEB-rule P@1 counts ties as hits" for name, spread in deltas["degenerate"]]
    return "\n".join(lines)


def truncation_table(checks: Sequence) -> str:
    """`analysis.metrics.truncation.TruncationCheck`s as a table: the largest B→A and EOS→B mass per mask and
    whether the mask's promise holds."""
    verdict = {True: "holds", False: "**BROKEN**", None: "—"}
    return markdown(["mask", "max B→A mass", "max EOS→B mass", "samples with B", "truncation"],
                    [(c.mask_type, f"{c.b_to_a_max:.3g}", f"{c.eos_to_b_max:.3g}", c.n_with_b, verdict[c.holds])
                     for c in checks])


def knockout_markdown(table: Mapping[str, Mapping], embed_mask: str) -> str:
    """`analysis.lens.knockout.knockout_table` as a table."""
    rows = [(name, f"{r['overall']:.3f}", f"{r['overall_tie_robust']:.3f}", r["ties"], f"{r['cosine_distance']:.3f}")
            for name, r in table.items()]
    return f"Embedding mask: `{embed_mask}`\n\n" + markdown(
        ["cut (every layer)", "P@1", "tie-robust P@1", "tied queries",
         "mean cosine distance of query embeddings"], rows)


def geometry_table(rows: Sequence[tuple[str, Mapping]]) -> str:
    """`(condition, analysis.metrics.geometry.geometry_summary)` pairs as a table."""
    return markdown(["condition", "uniformity", "effective rank", "anisotropy"],
                    [(c, f"{g['uniformity']:.3f}", f"{g['effective_rank']:.1f}", f"{g['anisotropy']:.3f}")
                     for c, g in rows])


def probe_summary_table(rows: Sequence[tuple], label_in_text: Mapping[str, float]) -> str:
    """`(condition, states, samples, attribute, LayerProbe results)` rows: best accuracy, its layer (0 =
    embeddings) and best selectivity; then the share of samples whose text holds each label."""
    def best(r: Mapping) -> tuple:
        acc = list(r["accuracy"])
        return f"{max(acc):.2f}", acc.index(max(acc)), f"{max(r['selectivity']):.2f}"

    table = markdown(["condition", "states", "samples", "attribute", "best accuracy", "at layer (0 = embeddings)",
                      "best selectivity"], [(c, s, w, a, *best(r)) for c, s, w, a, r in rows])
    shares = ", ".join(f"{a} {v:.0%}" for a, v in label_in_text.items())
    return f"{table}\n\nShare of samples whose text holds the label: {shares}"


def layerwise_table(layerwise: Mapping[str, Mapping]) -> str:
    """`analysis.metrics.layerwise.layerwise_retrieval` per mask type: best layer against the last."""
    return markdown(["mask type", "best layer (0 = embeddings)", "P@1 there (ties split)", "last layer", "gain",
                     "MMEB rule at best / last"],
                    [(m, r["best_layer"], f"{r['best']:.3f}", f"{r['last']:.3f}", f"{r['gain']:+.3f}",
                      f"{r['best_mmeb']:.3f} / {r['last_mmeb']:.3f}") for m, r in layerwise.items()])


def reconstruction_table(probes: Mapping[str, Mapping], top_k: int, stage2: bool) -> str:
    """`EosLens.reconstruction_probe` per mask type and layer."""
    rows = [(m, layer, f"{p['logprob'][layer]:.2f}", f"{p['first_logprob'][layer]:.2f}", f"{p['top_k'][layer]:.2f}",
             f"{p['median_rank'][layer]:.1f}") for m, p in probes.items() for layer in range(len(p["logprob"]))]
    return f"Trained with stage 2: **{stage2}**\n\n" + markdown(
        ["mask type", "layer (0 = embeddings)", "mean log p(B)", "first B token", f"B in top-{top_k}",
         "median rank"], rows)


def top_tokens_table(tokens: Sequence[Sequence[str]], probs: Sequence[Sequence[float]]) -> str:
    """The lens's top tokens (with their probability) at every layer."""
    return markdown(["layer (0 = embeddings)", "top tokens (probability)"],
                    [(layer, ", ".join(f"`{t}` ({p:.2f})" for t, p in zip(toks, row)))
                     for layer, (toks, row) in enumerate(zip(tokens, probs))])


def seed_table(rows: Sequence[Mapping], columns: Sequence[tuple[str, str]]) -> str:
    """One line per trained run (cell, seed) with the score `columns` (`(header, key)`), NaN where missing."""
    return markdown(["cell", "seed", *(c for c, _ in columns)],
                    [(r["cell"], r["seed"], *(f"{r.get(k, math.nan):.3f}" for _, k in columns)) for r in rows])
