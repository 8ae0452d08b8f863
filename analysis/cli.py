"""`cocoa-lens` command line: each sub-command lives beside the code it drives."""

from __future__ import annotations

import argparse
import sys

from analysis import study
from analysis.arguments import add_checkpoint_options, positive_int
from analysis.errors import expected_errors, one_line
from analysis.io import write_json
from analysis.lens import command as lens_command
from analysis.lens.sources import check_data_spec
from analysis.masks import MASK_TYPES
from analysis.train import command as train_command


def _evaluate(args: argparse.Namespace) -> int:
    from analysis.checkpoints import open_checkpoint
    from analysis.evaluate import evaluate
    from analysis.lens.sources import load_eval_datasets

    datasets = load_eval_datasets(args.data, n=args.n, seed=args.seed)
    opened = open_checkpoint(args.checkpoint, dtype=args.dtype, device=args.device, base=args.base, seed=args.seed)
    preset = opened.preset(args.preset)
    mask = args.mask or preset.attention
    result = evaluate(opened.model, opened.processor, datasets, mask, args.batch_size, progress=True, preset=preset,
                      name=opened.name)
    print(f"P@1 of {opened.name} (preset {preset.name}, mask {mask}, data {args.data})")
    print(format_scores(result))
    if args.json:
        write_json(args.json, result)
    return 0


def format_scores(result: dict) -> str:
    """The MMEB table: per dataset (MMEB-rule P@1, tie-robust P@1, ties, chance), meta-tasks, IND/OOD, overall."""
    lines = [f"  {'dataset':<28} {'meta-task':<15} {'split':<5} {'P@1':>6} {'robust':>7} {'ties':>5} {'chance':>7}"]
    for r in result["datasets"]:
        lines.append(f"  {r['dataset']:<28} {r['meta_task']:<15} {r['split']:<5} {r['score']:>6.3f} "
                     f"{r['score_tie_robust']:>7.3f} {r['ties']:>5} {1 / r['n_candidates']:>7.3f}")
    for group in ("meta_task", "split"):
        for key, value in result.get(group, {}).items():
            lines.append(f"  {group + ' ' + key:<50} {value:>6.3f}")
    lines.append(f"  {'overall':<50} {result['overall']:>6.3f}")
    if "overall_tie_robust" in result:
        lines.append(f"  {'overall (ties split evenly)':<50} {result['overall_tie_robust']:>6.3f}")
    if result.get("degenerate"):
        lines.append(f"  WARNING: embeddings are degenerate (spread {result['embedding_spread']:.2e}): every input "
                     f"embeds to nearly the same vector, so P@1 means nothing")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cocoa-lens", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("evaluate", help="score a checkpoint (or an untrained tiny backbone) on mini-MMEB or MMEB-eval")
    add_checkpoint_options(ev)
    ev.add_argument("--data", default="mini-mmeb", type=check_data_spec, help="mini-mmeb | mmeb:DIR[:Dataset,...]")
    ev.add_argument("--mask", default=None, choices=MASK_TYPES, help="default: the preset's own attention")
    ev.add_argument("--n", type=positive_int, default=None,
                    help="queries per dataset (default: 100 for mini-mmeb, all for MMEB-eval)")
    ev.add_argument("--batch-size", type=positive_int, default=32)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--json", default=None, help="also write the scores to this JSON file")
    ev.set_defaults(func=_evaluate)
    for module in (train_command, lens_command, study):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user-fixable error prints `cocoa-lens <command>: <message>` and returns 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except expected_errors() as err:
        print(f"cocoa-lens {args.command}: {one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
