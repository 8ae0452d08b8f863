"""Peak memory of one InfoNCE step (forward + backward) over a contrastive batch, with and without gradient caching.

Each setting runs in a fresh subprocess on the tiny backbone (CPU) and reports its peak resident memory
(VmHWM from /proc/self/status) and the peak after building the model and the batch, so the difference is
what the step itself needed. Without caching, every activation of the 2 x batch rows is alive at once;
with caching (`analysis.train.gradcache`) only one chunk's. Prints both side by side; never asserts.

    python benchmarks/gradcache_memory.py [--batch-size 512] [--chunk-size 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_mib() -> float:
    """This process's peak resident memory so far (VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def one_step(batch_size: int, chunk_size: int | None, threads: int) -> dict:
    """Build the tiny model and one contrastive batch, take one loss + backward; peak memory before and after."""
    import time

    import torch

    from analysis.train import Recipe, apply_overrides
    from analysis.train.batches import make_batch_fn
    from analysis.train.objectives import contrastive_loss, mask_token_id
    from analysis.train.runner import build_model

    torch.set_num_threads(threads)
    recipe = apply_overrides(Recipe(name="bench"), [f"stages.contrastive.batch_size={batch_size}",
                                                    "stages.contrastive.steps=1", "device=cpu"])
    model, processor = build_model(recipe, device=torch.device("cpu"))
    pairs = make_batch_fn(recipe, "contrastive", processor, model, mask_token_id(processor.tokenizer))(0)["pairs"]
    model.train()
    before = peak_mib()
    start = time.perf_counter()
    loss = contrastive_loss(model, pairs, recipe.embed_mask, temperature=recipe.stages.contrastive.temperature,
                            chunk_size=chunk_size)
    if loss.requires_grad:
        loss.backward()
    seconds = time.perf_counter() - start
    return {"before_mib": before, "peak_mib": peak_mib(), "loss": float(loss.detach()), "seconds": seconds,
            "rows": int(pairs.batch.input_ids.shape[0]), "length": int(pairs.batch.input_ids.shape[1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        chunk = None if args.child == "none" else int(args.child)
        print(json.dumps(one_step(args.batch_size, chunk, args.threads)))
        return
    results = {}
    for label, child in (("full batch", "none"), (f"chunks of {args.chunk_size}", str(args.chunk_size))):
        out = subprocess.run([sys.executable, __file__, "--batch-size", str(args.batch_size), "--threads",
                              str(args.threads), "--child", child], capture_output=True, text=True, check=True)
        results[label] = json.loads(out.stdout.strip().splitlines()[-1])
    full, cached = results.values()
    print(f"InfoNCE step, tiny backbone, batch {args.batch_size} ({full['rows']} rows of {full['length']} "
          f"positions), CPU, {args.threads} threads")
    print(f"  {'setting':<16} {'peak RSS MiB':>13} {'step MiB':>9} {'seconds':>8} {'loss':>9}")
    for label, r in results.items():
        print(f"  {label:<16} {r['peak_mib']:>13.0f} {r['peak_mib'] - r['before_mib']:>9.0f} {r['seconds']:>8.1f} "
              f"{r['loss']:>9.4f}")
    step_full, step_cached = (r["peak_mib"] - r["before_mib"] for r in (full, cached))
    print(f"  ratio full / cached: peak {full['peak_mib'] / cached['peak_mib']:.2f}x, "
          f"step {step_full / max(step_cached, 1):.1f}x")


if __name__ == "__main__":
    main()
