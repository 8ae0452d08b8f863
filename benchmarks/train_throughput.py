"""Tokens/s of our stage loop against a bare Hugging Face forward/backward loop on the same batches.

For each stage (warm-up, EOS-bridged reconstruction, contrastive) the same pre-built batches are fed to
  ours: `analysis.train.runner.run_stage` (objective, LR schedule, grad clipping, loss curve), and
  bare: `model(**batch.model_inputs(mask), labels=input_ids).loss.backward(); optimizer.step()` -
        the plain HF causal-LM loss over every position,
with the same model weights at the start and the same optimizer (AdamW, same lr). Tokens = non-PAD
positions. Data generation is excluded from both (it runs in a background thread during training).
Prints the ratio ours/bare (target >= 0.9) from the best of alternating repeats (the CPU may be shared,
and the least disturbed repeat is the best estimate); never asserts.

    python benchmarks/train_throughput.py [--steps 20] [--batch-size 32] [--threads 2] [--recipe FILE]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from analysis.masks import PAD  # noqa: E402
from analysis.train.batches import make_batch_fn  # noqa: E402
from analysis.train.objectives import mask_token_id  # noqa: E402
from analysis.train.recipe import Recipe, apply_overrides, load_recipe  # noqa: E402
from analysis.train.runner import autocast, build_model, make_decoder, resolve_device, run_stage  # noqa: E402


def _tokens(prepared: dict) -> int:
    return sum(int((p.batch.roles != PAD).sum()) for p in prepared.values())


def _bare(model, batches: list[dict], mask_of: dict, lr: float, device) -> float:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    start = time.perf_counter()
    for prepared in batches:
        for key, p in prepared.items():
            batch = p.batch.to(device)
            labels = batch.input_ids.masked_fill(batch.roles == PAD, -100)
            with autocast(device):
                loss = model(**batch.model_inputs(mask_of[key]), labels=labels).loss
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _ours(recipe, stage, model, decoder, batches: list[dict], device) -> float:
    start = time.perf_counter()
    run_stage(recipe, stage, model, decoder, iter(batches), device, progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", help="recipe YAML (default: the embedded default with all three stages)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per loop and repeat")
    ap.add_argument("--repeats", type=int, default=5,
                    help="alternating repeats; the best (least disturbed by other processes) is reported")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = load_recipe(args.recipe) if args.recipe else Recipe(name="bench")
    sets = [f"stages.{s}.steps={args.steps}" for s in ("warmup", "bridged", "contrastive")]
    sets += [f"stages.{s}.batch_size={args.batch_size}" for s in ("warmup", "bridged", "contrastive")]
    recipe = apply_overrides(base, sets + ["stages.bridged.recon_weight=1.0"])
    device = resolve_device(recipe)
    model, processor = build_model(recipe, device=device)
    initial = copy.deepcopy(model.state_dict())
    mask_id = mask_token_id(processor.tokenizer)
    print(f"train throughput: {recipe.backbone.name} on {device} ({torch.get_num_threads()} threads), "
          f"batch {args.batch_size}, {args.steps} steps x {args.repeats} alternating repeats, best of each")
    print(f"{'stage':<12} {'ours tok/s':>11} {'bare HF tok/s':>14} {'ratio':>6}")
    ratios = []
    for stage in ("warmup", "bridged", "contrastive"):
        cfg = getattr(recipe.stages, stage)
        make = make_batch_fn(recipe, stage, processor, model, mask_id)
        batches = [make(i) for i in range(args.steps)]
        tokens = sum(_tokens(b) for b in batches)
        mask_of = {"warmup": cfg.mask if stage != "contrastive" else None, "recon": getattr(cfg, "mask", None),
                   "pairs": recipe.embed_mask}
        ours, bare = [], []
        for _ in range(args.repeats):
            model.load_state_dict(initial)
            decoder = make_decoder(model, processor).to(device) if stage == "warmup" else None
            ours.append(tokens / _ours(recipe, stage, model, decoder, batches, device))
            model.load_state_dict(initial)
            bare.append(tokens / _bare(model, batches, mask_of, cfg.lr, device))
        o, b = max(ours), max(bare)
        ratios.append(o / b)
        print(f"{stage:<12} {o:>11.0f} {b:>14.0f} {o / b:>6.2f}")
    print(f"overall ratio (geometric mean over stages): {statistics.geometric_mean(ratios):.2f}  (target >= 0.9)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
