"""`cocoa-lens capture`: one checkpoint, one dataset, several mask types, side by side on disk."""

from __future__ import annotations

import argparse
import sys

from analysis.lens.sources import DATASETS, DEFAULT_N
from analysis.lens.store import PATTERNS
from analysis.masks import MASK_TYPES


def _capture(args: argparse.Namespace) -> int:
    import torch

    from analysis.lens.recorder import capture

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        captures = capture(args.checkpoint, args.data, args.mask, args.out, n=args.n, seed=args.seed,
                           with_target=args.with_target, patterns=args.patterns, hooks=args.hooks,
                           batch_size=args.batch_size, shard_size=args.shard_size, dtype=args.dtype,
                           device=args.device, progress=True)
    except (ValueError, KeyError, FileNotFoundError) as err:
        print(f"cocoa-lens capture: {err.args[0] if isinstance(err, KeyError) else err}", file=sys.stderr)
        return 2
    for mask_type, cap in captures.items():
        print(f"{mask_type:<20} {len(cap):>7} samples  {cap.meta['b_segment']:<60}  {cap.directory}")
    return 0


def _masks(text: str) -> list[str]:
    masks = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in masks if m not in MASK_TYPES]
    if unknown or not masks:
        raise argparse.ArgumentTypeError(f"unknown mask type(s) {unknown}; valid: {', '.join(MASK_TYPES)}")
    return masks


def register(subparsers) -> None:
    p = subparsers.add_parser("capture", help="record EOS states and attention patterns through TransformerLens")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory or a tiny backbone name (random init)")
    p.add_argument("--mask", type=_masks, default=["causal"], help=f"comma-separated, from: {', '.join(MASK_TYPES)}")
    p.add_argument("--data", default="mini-mmeb", choices=DATASETS)
    p.add_argument("--out", required=True, help="output directory (one subdirectory per mask type); rerun to resume")
    p.add_argument("--n", type=int, default=DEFAULT_N, help="number of samples")
    p.add_argument("--patterns", default="eos", choices=PATTERNS, help="which attention rows to keep")
    p.add_argument("--with-target", action="store_true", help="put the positive candidate's text as the B segment")
    p.add_argument("--hooks", nargs="*", default=[], help="extra hook names to store at the EOS position")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--shard-size", type=int, default=512)
    p.add_argument("--dtype", default=None, help="load dtype, e.g. bfloat16 (default float32)")
    p.add_argument("--device", default=None, help="e.g. cuda (default cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.set_defaults(func=_capture)
