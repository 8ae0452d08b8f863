"""`cocoa-lens train --recipe FILE --out DIR [--set key=value ...]`."""

from __future__ import annotations

import argparse
import json
import sys


def _run(args: argparse.Namespace) -> int:
    from analysis.train.recipe import load_recipe
    from analysis.train.runner import SCORES_FILE, RecipeMismatch, train

    try:
        recipe = load_recipe(args.recipe, args.set)
    except (ValueError, FileNotFoundError) as err:
        print(f"cocoa-lens train: {err}", file=sys.stderr)
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        out = train(recipe, args.out, progress=not args.quiet)
    except RecipeMismatch as err:
        print(f"cocoa-lens train: {err}", file=sys.stderr)
        return 2
    scores = json.loads((out / SCORES_FILE).read_text())
    summary = {k: scores[k] for k in ("overall", "ind_overall", "meta_task", "split", "negatives") if k in scores}
    print(f"checkpoint: {out}")
    print(json.dumps(summary, indent=2))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a CoCoA-style embedder from a recipe (resumes; idempotent)",
                              description=__doc__)
    p.add_argument("--recipe", required=True, help="recipe YAML (see experiments/recipes/)")
    p.add_argument("--out", required=True, help="output directory: a Hugging Face checkpoint with recipe.yaml, "
                                                "losses.json, scores.json and stages/")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value with a dotted key, e.g. stages.bridged.steps=100 (repeatable)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)
