"""Command-line pieces every command shares: integer types with bounds, and how a checkpoint is named."""

from __future__ import annotations

import argparse
from typing import Callable


def at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer >= `minimum`, else one line saying so."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


positive_int, nonnegative_int = at_least(1), at_least(0)
DTYPE_NAMES = ["float32", "float16", "bfloat16"]  # torch dtypes a checkpoint may be loaded in


def add_checkpoint_options(p: argparse.ArgumentParser) -> None:
    """--checkpoint, --base, --preset, --dtype, --device, --device-map: how every loading command opens a checkpoint."""
    from analysis.presets import PRESETS

    p.add_argument("--checkpoint", default="tiny-qwen2.5-vl",
                   help="checkpoint directory (Hugging Face or PEFT adapter) or a tiny backbone name (random init)")
    p.add_argument("--init-seed", type=int, default=0,
                   help="random-init seed of a tiny backbone name (--seed draws the data)")
    p.add_argument("--base", default=None, help="base model directory of a PEFT adapter checkpoint")
    p.add_argument("--preset", default=None, choices=list(PRESETS), metavar="PRESET",
                   help=f"embedder preset, one of: {', '.join(PRESETS)} (default: what the checkpoint declares, "
                        f"else plain)")
    p.add_argument("--dtype", default=None, choices=DTYPE_NAMES, help="load dtype (default float32)")
    p.add_argument("--device", default=None, help="e.g. cuda, cuda:1 (default cpu; under torchrun cuda means "
                                                  "each rank's own GPU)")
    p.add_argument("--device-map", default=None, metavar="MAP",
                   help="split a model larger than one device over the visible devices: 'auto' (Hugging Face "
                        "accelerate's device_map; replaces --device)")
