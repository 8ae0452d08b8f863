"""`cocoa-lens` command line: each sub-command lives beside the code it drives.

`cocoa-lens --help` must not import torch: `COMMANDS` names each command's module and one-line help, and only the
command being run is imported and registers its options (several `register` functions import torch through their
option choices, and importing `analysis.train.command` runs the heavy `analysis.train` package).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from analysis.errors import expected_errors, one_line

# command -> (module whose `register(subparsers)` adds it, its one-line help as that `register` spells it);
# `evaluate` is registered here (this module may run as __main__ under `python -m analysis.cli`)
COMMANDS: dict[str, tuple[str, str]] = {
    "evaluate": (__name__, "score a checkpoint (or an untrained tiny backbone) on mini-MMEB or MMEB-eval"),
    "train": ("analysis.train.command", "train a CoCoA-style embedder from a recipe (resumes; idempotent)"),
    "capture": ("analysis.lens.command", "record EOS states and attention patterns through TransformerLens"),
    "study": ("analysis.study.command", "train the grid, capture, run the notebooks and write the report"),
}


def _evaluate(args: argparse.Namespace) -> int:
    from analysis import distributed
    from analysis.checkpoints import open_checkpoint
    from analysis.evaluate import evaluate
    from analysis.io import write_json
    from analysis.lens.sources import load_eval_datasets

    datasets = load_eval_datasets(args.data, n=args.n, seed=args.seed)
    distributed.init()  # under torchrun / accelerate launch each rank embeds a slice; rank 0 scores and reports
    opened = open_checkpoint(args.checkpoint, dtype=args.dtype, device=distributed.device(args.device),
                             base=args.base, seed=args.init_seed, device_map=args.device_map)
    preset = opened.preset(args.preset)
    mask = args.mask or preset.attention
    result = evaluate(opened.model, opened.processor, datasets, mask_type=mask, batch_size=args.batch_size,
                      progress=True, preset=preset, name=opened.name, split=True)
    if not distributed.is_main():
        return 0
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


def register(subparsers) -> None:
    """`cocoa-lens evaluate`."""
    from analysis.arguments import add_checkpoint_options, positive_int
    from analysis.lens.sources import check_data_spec
    from analysis.masks import MASK_TYPES

    ev = subparsers.add_parser("evaluate", help=COMMANDS["evaluate"][1])
    add_checkpoint_options(ev)
    ev.add_argument("--data", default="mini-mmeb", type=check_data_spec, help="mini-mmeb | mmeb:DIR[:Dataset,...]")
    ev.add_argument("--mask", default=None, choices=MASK_TYPES, help="default: the preset's own attention")
    ev.add_argument("--n-samples", "--n", dest="n", type=positive_int, default=None,
                    help="queries per dataset (default: 100 for mini-mmeb, all for MMEB-eval); under torchrun spell "
                         "it --n-samples (torchrun takes --n for an abbreviation of its own options)")
    ev.add_argument("--batch-size", type=positive_int, default=32)
    ev.add_argument("--seed", type=int, default=0, help="draws the mini-MMEB queries")
    ev.add_argument("--json", default=None, help="also write the scores to this JSON file")
    ev.set_defaults(func=_evaluate)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with every command listed; only `command` (None: none) imports its module and gets its options,
    the others are placeholders carrying their help (enough for `cocoa-lens --help` and for naming a wrong one)."""
    parser = argparse.ArgumentParser(prog="cocoa-lens", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, text) in COMMANDS.items():
        if name == command:
            importlib.import_module(module).register(sub)
        else:
            sub.add_parser(name, help=text)
    return parser


def _command(argv: list[str]) -> str | None:
    """The command `argv` names: its first word not starting with '-' (the top level has only -h)."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user-fixable error prints `cocoa-lens <command>: <message>` and returns 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(_command(argv)).parse_args(argv)
    try:
        return args.func(args)
    except expected_errors() as err:
        print(f"cocoa-lens {args.command}: {one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
