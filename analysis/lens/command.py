"""`cocoa-lens capture`: one checkpoint, one dataset, several mask types, side by side on disk."""

from __future__ import annotations

import argparse

from analysis.arguments import add_checkpoint_options, nonnegative_int, positive_int
from analysis.lens.sources import DEFAULT_N, check_data_spec
from analysis.lens.store import PATTERNS
from analysis.masks import MASK_TYPES
from analysis.presets import SIDES


def _capture(args: argparse.Namespace) -> int:
    import torch

    from analysis import distributed
    from analysis.lens.recorder import capture

    if args.threads:
        torch.set_num_threads(args.threads)
    captures = capture(args.checkpoint, args.data, args.mask, args.out, n=args.n, seed=args.seed,
                       init_seed=args.init_seed, with_target=args.with_target, patterns=args.patterns, hooks=args.hooks,
                       batch_size=args.batch_size, shard_size=args.shard_size, dtype=args.dtype,
                       device=distributed.device(args.device), base=args.base, preset=args.preset, side=args.side,
                       progress=True, device_map=args.device_map)
    if not distributed.is_main():
        return 0
    for mask_type, cap in captures.items():
        print(f"{mask_type:<20} {len(cap):>7} samples  preset {cap.meta['preset']:<10} "
              f"{cap.meta['b_segment']:<50}  {cap.directory}")
    return 0


def _masks(text: str) -> list[str]:
    masks = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in masks if m not in MASK_TYPES]
    if unknown or not masks:
        raise argparse.ArgumentTypeError(f"unknown mask type(s) {unknown}; valid: {', '.join(MASK_TYPES)}")
    return masks


def register(subparsers) -> None:
    p = subparsers.add_parser("capture", help="record EOS states and attention patterns through TransformerLens")
    add_checkpoint_options(p)
    p.add_argument("--mask", type=_masks, default=None,
                   help=f"comma-separated, from: {', '.join(MASK_TYPES)} (default: the preset's own attention)")
    p.add_argument("--data", default="mini-mmeb", type=check_data_spec,
                   help="mini-mmeb | shapes | digits | mmeb:DIR[:Dataset,...] | jsonl:FILE | images:DIR")
    p.add_argument("--side", default="query", choices=SIDES, help="prompt the inputs as queries or as candidates")
    p.add_argument("--out", required=True, help="output directory (one subdirectory per mask type); rerun to resume")
    p.add_argument("--n-samples", "--n", dest="n", type=positive_int, default=None,
                   help=f"number of samples (default {DEFAULT_N} for generated data, all for files); under torchrun "
                        f"spell it --n-samples (torchrun takes --n for an abbreviation of its own options)")
    p.add_argument("--patterns", default="eos", choices=PATTERNS, help="which attention rows to keep")
    p.add_argument("--with-target", action="store_true", help="put the positive candidate's text as the B segment")
    p.add_argument("--hooks", nargs="*", default=[], help="extra hook names to store at the EOS position")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--shard-size", type=positive_int, default=512)
    p.add_argument("--seed", type=int, default=0, help="draws the samples of generated data")
    p.add_argument("--threads", type=nonnegative_int, default=0, help="torch CPU threads (0: torch's default)")
    p.set_defaults(func=_capture)
