"""`cocoa-lens train --recipe FILE --out DIR [--set key=value ...]`.

Data-parallel over N processes: `torchrun --nproc-per-node N -m analysis.cli train ...` (or `accelerate
launch -m analysis.cli train ...`); rank 0 writes the checkpoint and prints the scores."""

from __future__ import annotations

import argparse
import json
import sys

from analysis.arguments import nonnegative_int


def _run(args: argparse.Namespace) -> int:
    from analysis import distributed
    from analysis.train.recipe import load_recipe
    from analysis.train.runner import SCORES_FILE, train

    recipe = load_recipe(args.recipe, overrides=args.set)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = train(recipe, args.out, progress=not args.quiet)
    if not distributed.is_main():
        return 0
    scores = json.loads((out / SCORES_FILE).read_text())
    keys = ("overall", "overall_tie_robust", "ties", "ind_overall", "ind_overall_tie_robust", "meta_task", "split",
            "negatives", "embedding_spread")
    print(f"checkpoint: {out}")
    print(json.dumps({k: scores[k] for k in keys if k in scores}, indent=2))
    if scores.get("degenerate"):
        print(f"cocoa-lens train: WARNING: {out} embeds every input to nearly the same vector (spread "
              f"{scores['embedding_spread']:.2e}): its P@1 means nothing; see overall_tie_robust", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a CoCoA-style embedder from a recipe (resumes; idempotent)",
                              description=__doc__)
    p.add_argument("--recipe", required=True, help="recipe YAML (see experiments/recipes/)")
    p.add_argument("--out", required=True, help="output directory: a Hugging Face checkpoint with recipe.yaml, "
                                                "losses.json, scores.json and stages/")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value with a dotted key, e.g. stages.bridged.steps=100 (repeatable)")
    p.add_argument("--threads", type=nonnegative_int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)
