"""The paper's questions answered from a study's results, in plain sentences with paired-seed differences.

(a) Does EOS-bridged reconstruction beat the equal-compute contrastive baseline (same total steps, all
    contrastive) and the fixed-contrastive-budget baseline (the same contrastive steps, no stage 2)?
(b) Does the EOS-sees-B leak matter (the released bridged mask against the strict one)?
(c) At what depth does the EOS state absorb the input's content?
(d) Are hard negatives (one attribute changed) harder than random ones, and by how much?

Cells play roles (`ROLES`), named by the study config; a question whose cells are not in the grid says so.
Differences are paired by training seed (the two cells of a pair share the seed's data order and start from
the same base), so seed-to-seed noise common to both cells cancels. An effect is called *consistent* when
every paired seed has the same sign; with two seeds that is a weak criterion, and the sentences say how
many seeds there are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

ROLES = {"bridged": "EOS-bridged reconstruction then contrastive",
         "strict": "the same with the strict mask (EOS reads A and EOS only)",
         "equal_compute": "contrastive only, the same total steps",
         "fixed_budget": "contrastive only, the bridged cell's contrastive steps"}
SCORE = "split_tie_robust.ind"  # IND P@1 with ties split: a collapsed model cannot score here
HARD, RANDOM = "ind.negatives_tie_robust.hard", "ind.negatives_tie_robust.random"
ABSORBED = 0.9  # (c): the first layer whose probe selectivity reaches this fraction of its maximum


@dataclass(frozen=True)
class Paired:
    """Per-seed differences `a - b` of one score over the seeds both cells have."""

    seeds: tuple[int, ...]
    diffs: tuple[float, ...]

    @property
    def mean(self) -> float:
        return float(np.mean(self.diffs))

    @property
    def sd(self) -> float:
        """Sample sd over seeds (NaN with one seed)."""
        return float(np.std(self.diffs, ddof=1)) if len(self.diffs) > 1 else float("nan")

    @property
    def consistent(self) -> bool:
        """Every seed's difference has the same (non-zero) sign."""
        signs = {float(np.sign(d)) for d in self.diffs}
        return len(signs) == 1 and 0.0 not in signs

    def describe(self) -> str:
        per_seed = ", ".join(f"s{s}: {d:+.3f}" for s, d in zip(self.seeds, self.diffs))
        sd = "" if len(self.diffs) < 2 else f" ± {self.sd:.3f}"
        verdict = ("the same sign at every seed" if self.consistent else "the sign differs between seeds")
        return f"{self.mean:+.3f}{sd} (mean ± sd over {len(self.diffs)} paired seed(s): {per_seed}; {verdict})"


def paired(rows: Sequence[Mapping], a: str, b: str, *, key: str = SCORE) -> Paired | None:
    """Differences `a - b` of `key` between two cells' score rows (`report.collect_scores`), paired by seed;
    None when the cells share no seed."""
    by_seed = {(r["cell"], r["seed"]): r[key] for r in rows if key in r}
    seeds = sorted(s for (c, s) in by_seed if c == a and (b, s) in by_seed)
    if not seeds:
        return None
    return Paired(tuple(seeds), tuple(float(by_seed[a, s] - by_seed[b, s]) for s in seeds))


def within(rows: Sequence[Mapping], cell: str, a: str, b: str) -> Paired | None:
    """Differences `a - b` between two scores of one cell, per seed (e.g. random minus hard negatives)."""
    found = [r for r in rows if r["cell"] == cell and a in r and b in r]
    if not found:
        return None
    found.sort(key=lambda r: r["seed"])
    return Paired(tuple(r["seed"] for r in found), tuple(float(r[a] - r[b]) for r in found))


def absorption_layer(curve: Sequence[float], *, fraction: float = ABSORBED) -> int:
    """The first layer index whose value reaches `fraction` of the curve's maximum (over a baseline of its
    first value): where a probe curve has (mostly) risen."""
    values = np.asarray(curve, dtype=float)
    rise = values - values[0]
    if rise.max() <= 0:
        return int(np.argmax(values))
    return int(np.argmax(rise >= fraction * rise.max()))


def _verdict(p: Paired, better: str, worse: str) -> str:
    if not p.consistent:
        return "no difference is resolved at this number of seeds"
    return f"{better if p.mean > 0 else worse} at every seed"


def answers(scores: Sequence[Mapping], roles: Mapping[str, str], probe_curves: Mapping[str, Sequence[float]],
            layerwise: Mapping[str, Mapping]) -> list[str]:
    """Markdown lines answering (a)-(d).

    scores: `report.collect_scores` rows. roles: `{role: cell}` for the `ROLES` present in the grid.
    probe_curves: `{cell: EOS probe selectivity per layer [layers+1]}`, averaged over seeds and attributes,
        under the cell's own mask (layer 0 = the embeddings). layerwise: `report.collect_layerwise` output.
    """
    cells = {r["cell"] for r in scores}
    have = {role: cell for role, cell in roles.items() if cell in cells}
    lines = ["## The paper's questions", "",
             f"Differences are IND P@1 with ties split (`{SCORE}`), cell minus baseline, paired by training seed.", ""]

    bridged = have.get("bridged")
    for role, label in (("equal_compute", "the equal-compute contrastive baseline"),
                        ("fixed_budget", "the fixed-contrastive-budget baseline")):
        base = have.get(role)
        p = paired(scores, bridged, base) if bridged and base else None
        if p is None:
            missing = "a bridged cell" if not bridged else f"a `{role}` cell"
            lines.append(f"- **(a)** vs {label}: not answered; the grid lacks {missing} (set `roles` in the "
                         f"study config).")
        else:
            lines.append(f"- **(a)** `{bridged}` − `{base}` ({label}): {p.describe()}: "
                         f"{_verdict(p, 'reconstruction helps', 'reconstruction hurts')}.")
    strict = have.get("strict")
    p = paired(scores, bridged, strict) if bridged and strict else None
    lines.append(f"- **(b)** `{bridged}` − `{strict}` (EOS may read B vs not): {p.describe()}: "
                 f"{_verdict(p, 'the leak helps', 'the leak hurts')}." if p else
                 "- **(b)** not answered: the grid lacks a bridged and a strict cell.")
    depth = []
    for cell, curve in probe_curves.items():
        layer = absorption_layer(curve)
        depth.append(f"`{cell}` at layer {layer} of {len(curve) - 1} (selectivity {curve[layer]:.2f}, "
                     f"max {max(curve):.2f})")
    lines.append(f"- **(c)** The EOS probe's selectivity (mean over attributes and seeds; layer 0 = the "
                 f"embeddings) first reaches {ABSORBED:.0%} of its rise at: " + "; ".join(depth) + "." if depth else
                 "- **(c)** not answered: no probe results.")
    for cell, m in layerwise.items():
        curve = m["layerwise"][m["embed_mask"]]
        lines.append(f"  Retrieval by layer, `{cell}` (seed {m.get('seed', 0)}): best layer {curve['best_layer']} "
                     f"(P@1 {curve['best']:.3f}) against the last ({curve['last']:.3f}).")
    hard = [(cell, within(scores, cell, RANDOM, HARD)) for cell in sorted(cells)]
    hard = [(cell, p) for cell, p in hard if p is not None]
    if hard:
        harder = sum(p.consistent and p.mean > 0 for _, p in hard)
        lines.append(f"- **(d)** Random minus hard negatives (IND, ties split): hard negatives are harder at every "
                     f"seed in {harder} of {len(hard)} cells.")
        lines += [f"  `{cell}`: {p.describe()}" for cell, p in hard]
    else:
        lines.append("- **(d)** not answered: no hard/random-negative scores.")
    return lines + [""]
