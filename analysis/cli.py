"""`cocoa-lens` command line: each sub-command lives beside the code it drives."""

from __future__ import annotations

import argparse
import json
import sys

from analysis import study
from analysis.lens import command as lens_command
from analysis.masks import MASK_TYPES
from analysis.train import command as train_command


def _evaluate(args: argparse.Namespace) -> int:
    from analysis.data import build_mini_mmeb
    from analysis.evaluate import evaluate
    from analysis.models import TINY_BACKBONES, build_tiny, load_checkpoint

    if args.checkpoint in TINY_BACKBONES:
        model, processor = build_tiny(args.checkpoint, seed=args.seed)
    else:
        model, processor = load_checkpoint(args.checkpoint)
    datasets = build_mini_mmeb(args.n, seed=args.seed)
    result = evaluate(model, processor, datasets, args.mask, progress=True)
    print(f"mini-MMEB P@1 of {args.checkpoint} (mask {args.mask}, {args.n} queries per dataset)")
    for r in result["datasets"]:
        print(f"  {r['dataset']:<24} {r['meta_task']:<15} {r['score']:.3f}  (chance {1 / r['n_candidates']:.3f})")
    print(json.dumps({k: v for k, v in result.items() if k != "datasets"}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cocoa-lens", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("evaluate", help="score a checkpoint (or an untrained tiny backbone) on mini-MMEB")
    ev.add_argument("--checkpoint", default="tiny-qwen2.5-vl", help="checkpoint directory or a tiny backbone name")
    ev.add_argument("--mask", default="causal", choices=MASK_TYPES)
    ev.add_argument("--n", type=int, default=100, help="queries per dataset")
    ev.add_argument("--seed", type=int, default=0)
    ev.set_defaults(func=_evaluate)
    for module in (train_command, lens_command, study):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
