"""Measure what makes the embedded default informative (issue 11): train contrastive-only cells from a base
with a few settings and print IND P@1 (ties split), IND hard / random negatives and OOD, one JSON line each.

    .venv/bin/python experiments/lever_sweep.py experiments/recipes/contrastive_bidirectional.yaml runs/sweep \\
        "stages.contrastive.steps=200" "stages.contrastive.steps=400" \\
        "stages.contrastive.steps=200|stages.contrastive.temperature=0.05"

Each argument after the output folder is one setting: `|`-separated recipe overrides (seed 0, 100 queries per
dataset, as in the default study). A base recipe other than the shipped one is trained once (the recipe's
`backbone.name`; COCOA_LENS_BASES says where bases are cached).
"""

import json
import sys
import time
from pathlib import Path

import torch

from analysis.report import summarise
from analysis.train import train


def main(recipe: str, out_dir: str, *settings: str) -> None:
    torch.set_num_threads(1)
    for setting in settings:
        overrides = setting.split("|")
        out = Path(out_dir) / "_".join(o.replace("=", "") for o in overrides)
        start = time.perf_counter()
        train(recipe, out, progress=False, overrides=["eval.n_per_dataset=100", "seed=0", *overrides])
        s = summarise(json.loads((out / "scores.json").read_text())["datasets"])
        print(json.dumps(dict(setting=setting, ind=s["split_tie_robust.ind"], hard=s["ind.negatives_tie_robust.hard"],
                              random=s["ind.negatives_tie_robust.random"], ood=s["split_tie_robust.ood"],
                              seconds=round(time.perf_counter() - start, 1))), flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
