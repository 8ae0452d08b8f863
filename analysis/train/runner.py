"""The stage runner and `train(recipe, out_dir)`: [pretrain ->] warm-up -> EOS-bridged reconstruction -> contrastive.

Output directory (itself a Hugging Face checkpoint once complete):

    out_dir/recipe.yaml               the recipe (written first; a different recipe is refused)
    out_dir/stages/<stage>/           one checkpoint per finished stage (written to a temp dir, then renamed)
        stage.json                    {stage, steps, seconds, cpu_seconds, losses: [{step, loss, <terms>, lr}]}
        train_heads.safetensors       warm-up only: the MAE decoder + pixel mask token (training-only)
    out_dir/config.json, model.safetensors, tokenizer/processor files    the final model
    out_dir/losses.json               per-stage loss curves
    out_dir/scores.json               mini-MMEB scores under the recipe's embed_mask; written last = complete

An interrupted run resumes from the last finished stage; a complete directory returns at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from analysis.models import build_tiny, load_checkpoint, save_checkpoint
from analysis.train.batches import derived_seed, make_batch_fn, prefetch
from analysis.train.objectives import (
    MAEDecoder,
    base_model,
    bridged_loss,
    contrastive_loss,
    mask_token_id,
    recon_loss,
    warmup_loss,
)
from analysis.train.recipe import Recipe, Stage, load_recipe

RECIPE_FILE, SCORES_FILE, LOSSES_FILE, STAGE_FILE, HEADS_FILE = (
    "recipe.yaml", "scores.json", "losses.json", "stage.json", "train_heads.safetensors")


class RecipeMismatch(ValueError):
    """The output directory already holds a different recipe."""


# -- model -----------------------------------------------------------------------------------------
def resolve_device(recipe: Recipe) -> torch.device:
    if recipe.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(recipe.device)


def weight_dtype(recipe: Recipe) -> torch.dtype:
    return torch.float32 if recipe.dtype == "auto" else getattr(torch, recipe.dtype)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; nothing elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def build_model(recipe: Recipe, device: torch.device | None = None, checkpoint: str | Path | None = None):
    """`(model, processor)` for the recipe's backbone (or a stage `checkpoint`), on `device`, LoRA applied."""
    device = device or resolve_device(recipe)
    with _no_hf_bars():
        model, processor = _load_backbone(recipe, checkpoint)
    if recipe.lora.enabled:
        model = _with_lora(model, recipe, adapter=checkpoint)
    return model.to(device), processor


def _load_backbone(recipe: Recipe, checkpoint: str | Path | None):
    bb = recipe.backbone
    source = checkpoint if checkpoint is not None and not recipe.lora.enabled else None
    if source is not None:
        model, processor = load_checkpoint(source, dtype=weight_dtype(recipe),
                                           attn_implementation=bb.attn_implementation)
    elif bb.is_recipe:
        model, processor = load_checkpoint(base_checkpoint(bb.name), dtype=weight_dtype(recipe),
                                           attn_implementation=bb.attn_implementation)
    elif bb.is_tiny:
        model, processor = build_tiny(bb.name, seed=recipe.seed, attn_implementation=bb.attn_implementation,
                                      **bb.tiny_sizes())
        model = model.to(weight_dtype(recipe))
    else:
        model, processor = load_checkpoint(resolve_path(bb.name), dtype=weight_dtype(recipe),
                                           attn_implementation=bb.attn_implementation)
    return model, processor


REPO_ROOT = Path(__file__).resolve().parents[2]


def resolve_path(path: str | Path) -> Path:
    """`path` as given (relative to the working directory), else relative to the repository root."""
    path = Path(path).expanduser()
    if path.exists() or path.is_absolute():
        return path
    return REPO_ROOT / path


def bases_dir() -> Path:
    """Where base checkpoints made from recipes are cached: $COCOA_LENS_BASES or experiments/bases.

    The repository ships the tiny base captioner there (3.4 MB; `cocoa-lens train --recipe
    experiments/recipes/base_captioner.yaml --out DIR` remakes it), so `make study` need not spend
    its ten minutes pre-training the backbone every ablation cell starts from.
    """
    env = os.environ.get("COCOA_LENS_BASES")
    return Path(env) if env else REPO_ROOT / "experiments" / "bases"


def base_checkpoint(recipe_path: str | Path, progress: bool = True) -> Path:
    """The final checkpoint of the recipe at `recipe_path`, trained first if it is not cached yet.

    Cached as `bases_dir()/<stem>-<hash of the recipe>`, so editing the base recipe makes a new base.
    """
    path = resolve_path(recipe_path)
    base = load_recipe(path)
    digest = hashlib.sha1(base.to_yaml().encode()).hexdigest()[:10]
    out = bases_dir() / f"{path.stem}-{digest}"
    if is_complete(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:  # parallel study workers train it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not is_complete(out):
            tqdm.write(f"training base checkpoint {out} from {path} (once; cached)")
        return train(base, out, progress=progress)


def _with_lora(model, recipe: Recipe, adapter: str | Path | None = None):
    try:
        from peft import LoraConfig, PeftModel, get_peft_model
    except ImportError as err:  # pragma: no cover
        raise ImportError("recipe.lora.enabled needs peft: pip install 'cocoa-lens[lora]'") from err
    if adapter is not None:
        return PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    targets = [t for t in recipe.lora.target_modules if t in names]
    if not targets:
        raise ValueError(f"none of lora.target_modules {recipe.lora.target_modules} is a Linear in "
                         f"{type(model).__name__}")
    config = LoraConfig(r=recipe.lora.r, lora_alpha=recipe.lora.alpha, lora_dropout=recipe.lora.dropout,
                        target_modules=targets)
    return get_peft_model(model, config)


def make_decoder(model, processor) -> MAEDecoder:
    cfg = base_model(model).config
    ip = processor.image_processor
    patch_dim = 3 * ip.temporal_patch_size * ip.patch_size ** 2
    d_model = cfg.text_config.hidden_size if hasattr(cfg, "text_config") else cfg.hidden_size
    return MAEDecoder(d_model, patch_dim, ip.merge_size ** 2)


# -- one stage -------------------------------------------------------------------------------------
def lr_lambda(cfg: Stage) -> Callable[[int], float]:
    warm = math.ceil(cfg.warmup_ratio * cfg.steps)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "constant":
            return 1.0
        frac = (step - warm) / max(1, cfg.steps - warm)
        return max(0.0, 1 - frac) if cfg.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * frac))

    return f


def stage_loss_fn(recipe: Recipe, stage: str, model, decoder: MAEDecoder | None) -> Callable[[dict], dict]:
    cfg = getattr(recipe.stages, stage)
    if stage == "pretrain":
        return lambda b: {"loss": recon_loss(model, b["recon"], cfg.mask)}
    if stage == "warmup":
        return lambda b: warmup_loss(model, decoder, b["warmup"], cfg.mask, cfg.mae_weight)
    if stage == "bridged":
        return lambda b: bridged_loss(model, b.get("recon"), b.get("pairs"), recipe.recon_weight, cfg.mask,
                                      recipe.embed_mask, recipe.temperature, recipe.symmetric)
    return lambda b: {"loss": contrastive_loss(model, b["pairs"], recipe.embed_mask, recipe.temperature,
                                               recipe.symmetric)}


def run_stage(recipe: Recipe, stage: str, model, decoder: MAEDecoder | None, batches: Iterable[dict],
              device: torch.device, progress: bool = True) -> list[dict]:
    """Optimise `model` (and, in warm-up, `decoder`) over `batches`; return the per-step loss curve."""
    cfg = getattr(recipe.stages, stage)
    torch.manual_seed(derived_seed(recipe.seed, stage, "torch"))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    vision = [p for n, p in named if ".visual." in f".{n}"]
    other = [p for n, p in named if ".visual." not in f".{n}"]
    if stage == "warmup" and decoder is not None:
        other += list(decoder.parameters())
    params = vision + other
    groups = [{"params": other}] + ([{"params": vision, "lr": cfg.lr * cfg.vision_lr_scale}] if vision else [])
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    loss_fn = stage_loss_fn(recipe, stage, model, decoder)
    model.train()
    curve = []
    bar = tqdm(total=cfg.steps, desc=f"{recipe.name} {stage}", disable=not progress, leave=False, mininterval=1.0)
    for step, batch in enumerate(batches):
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast(device):
            terms = loss_fn(batch)
        terms["loss"].backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        values = {k: float(v.detach()) for k, v in terms.items()}
        curve.append({"step": step, **values, "lr": scheduler.get_last_lr()[0]})
        scheduler.step()
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{curve[-1]['loss']:.3f}")
    bar.close()
    model.eval()
    return curve


# -- directory bookkeeping --------------------------------------------------------------------------
def _claim(out: Path, recipe: Recipe) -> None:
    """Write recipe.yaml into `out`, or check that the one there is the same recipe."""
    path = out / RECIPE_FILE
    if path.exists():
        held = Recipe.from_yaml(path.read_text())
        if held.to_dict() != recipe.to_dict():
            raise RecipeMismatch(
                f"{out} holds recipe {held.name!r} ({path}), which differs from recipe {recipe.name!r} in "
                f"{', '.join(recipe.differences(held))}; choose another --out or delete {out}")
        return
    if out.exists() and any(out.iterdir()):
        raise RecipeMismatch(f"{out} is not empty and holds no {RECIPE_FILE}; refusing to write recipe "
                             f"{recipe.name!r} into it (choose another --out)")
    out.mkdir(parents=True, exist_ok=True)
    _write_text(path, recipe.to_yaml())


@contextlib.contextmanager
def _no_hf_bars():
    """Hide transformers' "Writing model shards" bar while saving."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def is_complete(out_dir: str | Path) -> bool:
    return (Path(out_dir) / SCORES_FILE).is_file()


def _save_stage(out: Path, stage: str, model, processor, decoder: MAEDecoder | None, record: dict) -> Path:
    """Write the stage checkpoint into a temp dir beside its final place, then rename it (atomic)."""
    root = out / "stages"
    root.mkdir(exist_ok=True)
    for stale in root.glob(f".{stage}.*"):  # left by a run interrupted while saving
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{stage}.", dir=root))
    with _no_hf_bars():
        if hasattr(model, "peft_config"):
            model.save_pretrained(tmp)  # adapter only; the base comes from the recipe's backbone
            processor.save_pretrained(tmp)
        else:
            save_checkpoint(model, processor, tmp)
    if stage == "warmup" and decoder is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in decoder.state_dict().items()}, str(tmp / HEADS_FILE))
    (tmp / STAGE_FILE).write_text(json.dumps(record, indent=1))
    tmp.chmod(0o755)
    final = root / stage
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def finished_stages(out: Path, recipe: Recipe) -> list[str]:
    """Names of the recipe's stages, in order, whose checkpoints are complete (a prefix of the active stages)."""
    done = []
    for name, _ in recipe.stages.active():
        if not (out / "stages" / name / STAGE_FILE).is_file():
            break
        done.append(name)
    return done


# -- the whole run ---------------------------------------------------------------------------------
def train(recipe: Recipe | str | Path, out_dir: str | Path, progress: bool = True,
          overrides: Iterable[str] = (), log: Callable[[str], None] | None = None) -> Path:
    """Run the recipe's stages into `out_dir` (resuming; idempotent) and score the result. Returns `out_dir`."""
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, list(overrides))
    elif overrides:
        from analysis.train.recipe import apply_overrides
        recipe = apply_overrides(recipe, list(overrides))
    out = Path(out_dir)
    _claim(out, recipe)
    if is_complete(out):
        return out
    say = log or (lambda msg: tqdm.write(msg) if progress else None)
    device = resolve_device(recipe)
    done = finished_stages(out, recipe)
    last = out / "stages" / done[-1] if done else None
    model, processor = build_model(recipe, device, checkpoint=last)
    if done:
        say(f"{recipe.name}: resuming after stage(s) {', '.join(done)} from {last}")
    mask_id = mask_token_id(processor.tokenizer)
    losses = {name: json.loads((out / "stages" / name / STAGE_FILE).read_text())["losses"] for name in done}
    for stage, cfg in recipe.stages.active():
        if stage in done:
            continue
        decoder = None
        if stage == "warmup":
            torch.manual_seed(derived_seed(recipe.seed, "mae-decoder"))
            decoder = make_decoder(model, processor).to(device)
        make = make_batch_fn(recipe, stage, processor, model, mask_id)
        start, cpu = time.perf_counter(), time.process_time()
        curve = run_stage(recipe, stage, model, decoder, prefetch(make, range(cfg.steps)), device, progress)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        losses[stage] = curve
        _save_stage(out, stage, model, processor, decoder, {"stage": stage, "steps": cfg.steps, "seconds": seconds,
                                                            "cpu_seconds": cpu, "losses": curve})
        say(f"{recipe.name}: stage {stage} done ({cfg.steps} steps, {seconds:.1f}s, "
            f"loss {curve[0]['loss']:.3f} -> {curve[-1]['loss']:.3f})")
    final = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    final.eval()
    scores = score(final, processor, recipe, device, progress)
    with _no_hf_bars():
        save_checkpoint(final, processor, out, extra={LOSSES_FILE: losses})
    _write_text(out / SCORES_FILE, json.dumps(scores, indent=2, sort_keys=True))
    return out


def score(model, processor, recipe: Recipe, device: torch.device | None = None, progress: bool = False) -> dict:
    """Mini-MMEB P@1 (overall, meta-tasks, IND/OOD, hard/random, per dataset) under the recipe's embed_mask."""
    from analysis.data import build_mini_mmeb
    from analysis.evaluate import evaluate
    from analysis.metrics.retrieval import mmeb_scores

    if recipe.eval.n_per_dataset == 0:
        return {"skipped": True}
    datasets = build_mini_mmeb(recipe.eval.n_per_dataset, seed=recipe.eval.seed)
    start = time.perf_counter()
    with autocast(device or torch.device("cpu")):
        result = evaluate(model, processor, datasets, recipe.embed_mask, recipe.eval.batch_size, progress=progress)
    ind = mmeb_scores([r for r in result["datasets"] if r["split"] == "ind"], groups=("meta_task", "negatives"))
    result.update(ind_overall=ind["overall"], ind_meta_task=ind["meta_task"], ind_negatives=ind["negatives"])
    result["embed_mask"] = recipe.embed_mask
    result["seconds"] = time.perf_counter() - start
    return result



def load_heads(stage_dir: str | Path) -> dict[str, torch.Tensor]:
    """The training-only MAE decoder weights saved with a warm-up stage checkpoint."""
    return load_file(str(Path(stage_dir) / HEADS_FILE))
