"""The stage runner and `train(recipe, out_dir)`: [pretrain ->] warm-up -> EOS-bridged reconstruction -> contrastive.

Output directory (itself a Hugging Face checkpoint once complete):

    out_dir/recipe.yaml               the recipe (written first; a different recipe is refused)
    out_dir/stages/<stage>/           one checkpoint per finished stage (written to a temp dir, then renamed)
        stage.json                    {stage, steps, seconds, cpu_seconds, losses: [{step, loss, <terms>, lr}]}
        train_heads.safetensors       warm-up only: the MAE decoder + pixel mask token (training-only)
    out_dir/stages/<stage>.partial.pt the unfinished stage's state every `save_every` steps (removed at its end)
    out_dir/config.json, model.safetensors, tokenizer/processor files    the final model
    out_dir/losses.json               per-stage loss curves
    out_dir/scores.json               mini-MMEB scores under the recipe's embed_mask and the weights' digest;
                                      written last = complete

Under torchrun / accelerate launch (WORLD_SIZE > 1) every stage runs data-parallel: each rank builds the
global batch, keeps its rows (`analysis.train.batches.local_part`), and the gradients are summed over
ranks (`analysis.distributed.all_reduce_grads`, a bucketed all-reduce as DDP does; our objectives call the
model's sub-modules, which DDP's forward hooks would miss), so N processes take the single-process steps
on the same global batches. Only rank 0 writes files; each rank reads them back to resume.

An interrupted run resumes from the last finished stage, or mid-stage from a partial state, and ends
bit-identical to an uninterrupted run. A complete directory is returned after a cheap check of its files.
A non-finite loss or gradient stops training (`NonFiniteTraining`) before anything of that stage is saved.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Iterable

import torch
import yaml
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from analysis import distributed
from analysis.checkpoints import RECIPE_FILE, open_checkpoint, quiet_hf
from analysis.digest import weights_digest
from analysis.errors import UsageError
from analysis.io import atomic_write_text, give_umask, make_temp_dir
from analysis.models import build_tiny, patch_embedding_as_matmul, save_checkpoint
from analysis.study_dir import LOSSES_FILE, SCORES_FILE
from analysis.train.batches import derived_seed, local_part, make_batch_fn, prefetch
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

STAGE_FILE, HEADS_FILE = "stage.json", "train_heads.safetensors"


class RecipeMismatch(UsageError):
    """The output directory already holds a different recipe."""


class NonFiniteTraining(UsageError):
    """A loss or gradient went NaN / inf: training stops and saves nothing of that stage."""


# -- model -----------------------------------------------------------------------------------------
def resolve_device(recipe: Recipe) -> torch.device:
    """The recipe's device; under several processes `cuda` / `auto` mean this rank's GPU (LOCAL_RANK)."""
    if recipe.device == "auto":
        return torch.device(distributed.device("cuda") if torch.cuda.is_available() else "cpu")
    return torch.device(distributed.device(recipe.device))


def weight_dtype(recipe: Recipe) -> torch.dtype:
    return torch.float32 if recipe.dtype == "auto" else getattr(torch, recipe.dtype)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; nothing elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def build_model(recipe: Recipe, *, device: torch.device | None = None, checkpoint: str | Path | None = None):
    """`(model, processor)` for the recipe's backbone (or a stage `checkpoint`), on `device`, LoRA applied."""
    device = device or resolve_device(recipe)
    with quiet_hf():
        model, processor = _load_backbone(recipe, checkpoint)
    if recipe.lora.enabled:
        model = _with_lora(model, recipe, adapter=checkpoint)
    patch_embedding_as_matmul(model)
    return model.to(device), processor


def _load_backbone(recipe: Recipe, checkpoint: str | Path | None):
    bb = recipe.backbone
    source = checkpoint if checkpoint is not None and not recipe.lora.enabled else None
    if bb.is_tiny and source is None:
        model, processor = build_tiny(bb.name, seed=recipe.seed, attn_implementation=bb.attn_implementation,
                                      **bb.tiny_sizes())
        return model.to(weight_dtype(recipe)), processor
    if source is None:
        source = base_checkpoint(bb.name) if bb.is_recipe else resolve_path(bb.name)
    opened = open_checkpoint(source, dtype=weight_dtype(recipe), attn_implementation=bb.attn_implementation)
    return opened.model, opened.processor


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


def result_digest(recipe: Recipe) -> str:
    """10 hex digits of the recipe's settings that decide its result (`Recipe.result_dict`: `save_every` does not
    make a new base)."""
    text = yaml.safe_dump(recipe.result_dict(), sort_keys=False, default_flow_style=None)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def base_checkpoint(recipe_path: str | Path, *, progress: bool = True) -> Path:
    """The final checkpoint of the recipe at `recipe_path`, trained first if it is not cached yet.

    Cached as `bases_dir()/<stem>-<hash of the recipe>`, so editing the base recipe makes a new base.
    """
    path = resolve_path(recipe_path)
    base = load_recipe(path)
    out = bases_dir() / f"{path.stem}-{result_digest(base)}"
    if is_complete(out):
        check_complete(out)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    if distributed.active():  # the ranks of one data-parallel run train it together (a lock would split them)
        return train(base, out, progress=progress)
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
        return lambda b: bridged_loss(model, b.get("recon"), b.get("pairs"), cfg.recon_weight, cfg.mask,
                                      recipe.embed_mask, temperature=cfg.temperature, symmetric=cfg.symmetric,
                                      chunk_size=cfg.chunk_size)
    return lambda b: {"loss": contrastive_loss(model, b["pairs"], recipe.embed_mask, temperature=cfg.temperature,
                                               symmetric=cfg.symmetric, chunk_size=cfg.chunk_size)}


def run_stage(recipe: Recipe, stage: str, model, decoder: MAEDecoder | None, batches: Iterable[dict],
              device: torch.device, *, progress: bool = True, resume: dict | None = None,
              save_to: Path | None = None) -> list[dict]:
    """Optimise `model` (and, in warm-up, `decoder`) over `batches`; return the per-step loss curve.

    `resume`: a state saved by this function (`load_partial`); `batches` then start at its `step`.
    `save_to`: where to save the state every `save_every` steps (rank 0 writes it). A non-finite loss or
    gradient raises `NonFiniteTraining` naming the stage and step. Under several processes `batches` are
    global and each rank trains on its rows; gradients are summed over ranks before clipping.
    """
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
    trained = dict(model.named_parameters())
    curve, first, seconds = [], 0, 0.0
    if resume is not None:
        with torch.no_grad():
            for name, value in resume["params"].items():
                trained[name].copy_(value)
        if decoder is not None:
            decoder.load_state_dict(resume["decoder"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        torch.set_rng_state(resume["rng"])
        if resume["cuda_rng"] is not None:
            torch.cuda.set_rng_state_all(resume["cuda_rng"])
        curve, first, seconds = list(resume["curve"]), resume["step"], resume["seconds"]
    rank, size = distributed.world() if distributed.active() else (0, 1)
    merge = _merge(model)
    model.train()
    start = time.perf_counter()
    with tqdm(total=cfg.steps, initial=first, desc=f"{recipe.name} {stage}", disable=not progress, leave=False,
              mininterval=1.0) as bar:  # closed (and cleared) when a step raises
        for step, batch in enumerate(batches, first):
            batch = {k: v.to(device) for k, v in local_part(batch, rank, size, merge=merge).items()}
            with autocast(device):
                terms = loss_fn(batch)
            _check_finite(terms["loss"], "loss", recipe, stage, step)
            if terms["loss"].requires_grad:  # with gradient caching InfoNCE has already backpropagated
                terms["loss"].backward()
            distributed.all_reduce_grads(params)
            if cfg.grad_clip > 0:
                norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            else:
                norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            _check_finite(norm, "gradient norm", recipe, stage, step)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            values = {k: float(v.detach()) for k, v in terms.items()}
            curve.append({"step": step, **values, "lr": scheduler.get_last_lr()[0]})
            scheduler.step()
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{curve[-1]['loss']:.3f}")
            if (save_to is not None and cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps
                    and rank == 0):
                _save_partial(save_to, {
                    "step": step + 1, "curve": curve, "seconds": seconds + time.perf_counter() - start,
                    "params": {n: p.detach().cpu() for n, p in trained.items() if p.requires_grad},
                    "decoder": None if decoder is None else decoder.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None})
    model.eval()
    return curve


def _merge(model) -> int:
    """Patches per merged image token of `model`'s vision tower (Qwen: 2x2)."""
    vision = getattr(base_model(model).config, "vision_config", None)
    return getattr(vision, "spatial_merge_size", 2) ** 2


def _check_finite(value: torch.Tensor, what: str, recipe: Recipe, stage: str, step: int) -> None:
    if not torch.isfinite(value):
        cfg = getattr(recipe.stages, stage)
        raise NonFiniteTraining(
            f"{recipe.name}: the {what} is {float(value.detach())} at stage {stage}, step {step}; training stopped and "
            f"nothing of stage {stage} was saved. Lower stages.{stage}.lr (now {cfg.lr:g}) or clip harder "
            f"(stages.{stage}.grad_clip, now {cfg.grad_clip:g}), and train into a new --out")


def partial_path(out: Path, stage: str) -> Path:
    """Where `run_stage` keeps an unfinished stage's state."""
    return out / "stages" / f"{stage}.partial.pt"


def _save_partial(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_partial(path: Path) -> dict | None:
    """The state `run_stage` saved at `path`, or None."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, weights_only=True)
    except (RuntimeError, EOFError) as err:
        raise UsageError(f"the mid-stage state {path} is damaged ({err}); delete it to redo that stage") from None


# -- directory bookkeeping --------------------------------------------------------------------------
def _claim(out: Path, recipe: Recipe) -> None:
    """Write recipe.yaml into `out`, or check that the one there is the same recipe."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a directory: choose another --out")
    path = out / RECIPE_FILE
    if path.exists():
        held = Recipe.from_yaml(path.read_text())
        if different := recipe.result_differences(held):
            raise RecipeMismatch(
                f"{out} holds recipe {held.name!r} ({path}), which differs from recipe {recipe.name!r} in "
                f"{', '.join(different)}; choose another --out or delete {out}")
        return
    if out.exists() and any(out.iterdir()):
        raise RecipeMismatch(f"{out} is not empty and holds no {RECIPE_FILE}; refusing to write recipe "
                             f"{recipe.name!r} into it (choose another --out)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, recipe.to_yaml())
    except OSError as err:
        raise UsageError(f"cannot write into {out} ({err.strerror}): choose a writable --out") from None


def is_complete(out_dir: str | Path) -> bool:
    return (Path(out_dir) / SCORES_FILE).is_file()


def base_name(recipe: Recipe) -> str | None:
    """The cached base a recipe-backed backbone resolves to (`<stem>-<digest>`, see `base_checkpoint`); None for
    a tiny or directory backbone. Recorded in scores.json: editing the base recipe makes its checkpoints stale."""
    if not recipe.backbone.is_recipe:
        return None
    path = resolve_path(recipe.backbone.name)
    return f"{path.stem}-{result_digest(load_recipe(path))}"


def is_current(out_dir: str | Path, recipe: Recipe) -> bool:
    """Whether `out_dir` is a complete checkpoint of `recipe` as it reads now: the same recipe (result-neutral
    keys aside) trained from the same base."""
    out = Path(out_dir)
    if not is_complete(out) or not (out / RECIPE_FILE).is_file():
        return False
    held = Recipe.from_yaml((out / RECIPE_FILE).read_text())
    trained_from = json.loads((out / SCORES_FILE).read_text()).get("base")
    return not recipe.result_differences(held) and trained_from == base_name(recipe)


def check_complete(out: Path) -> None:
    """Raise unless a complete directory's files are intact: JSON and safetensors headers parse, sizes fit, and
    the weights still have the digest recorded when training finished."""
    from analysis.checkpoints import check_files

    try:
        check_files(out)
        digest = weights_digest(out)
    except UsageError as err:
        raise UsageError(f"the finished checkpoint {out} is damaged ({err}); delete it and train again") from None
    recorded = json.loads((out / SCORES_FILE).read_text()).get("weights_digest")
    if recorded not in (None, digest):
        raise UsageError(f"the weights in {out} changed after training finished (digest {recorded} then, {digest} "
                         f"now): delete {out} and train again")


def _save_stage(out: Path, stage: str, model, processor, decoder: MAEDecoder | None, record: dict) -> Path:
    """Write the stage checkpoint into a temp dir beside its final place, then rename it (atomic)."""
    root = out / "stages"
    root.mkdir(exist_ok=True)
    for stale in root.glob(f".{stage}.*"):  # left by a run interrupted while saving
        shutil.rmtree(stale, ignore_errors=True)
    tmp = make_temp_dir(root, f".{stage}.")
    with quiet_hf():
        if hasattr(model, "peft_config"):
            model.save_pretrained(tmp)  # adapter only; the base comes from the recipe's backbone
            processor.save_pretrained(tmp)
        else:
            save_checkpoint(model, processor, tmp)
    if stage == "warmup" and decoder is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in decoder.state_dict().items()}, str(tmp / HEADS_FILE))
    (tmp / STAGE_FILE).write_text(json.dumps(record, indent=1))
    give_umask(tmp)
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
def train(recipe: Recipe | str | Path, out_dir: str | Path, *, progress: bool = True,
          overrides: Iterable[str] = (), log: Callable[[str], None] | None = None) -> Path:
    """Run the recipe's stages into `out_dir` (resuming; idempotent) and score the result. Returns `out_dir`."""
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides=list(overrides))
    elif overrides:
        from analysis.train.recipe import apply_overrides
        recipe = apply_overrides(recipe, list(overrides))
    recipe.require_stages()
    out = Path(out_dir)
    rank, _ = distributed.init()
    main = rank == 0
    _after_main(lambda: _claim(out, recipe))
    if is_complete(out):
        check_complete(out)
        return out
    progress = progress and main
    say = log or (lambda msg: tqdm.write(msg) if progress else None)
    device = resolve_device(recipe)
    done = finished_stages(out, recipe)
    last = out / "stages" / done[-1] if done else None
    model, processor = build_model(recipe, device=device, checkpoint=last)
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
        partial = partial_path(out, stage)
        resume = load_partial(partial)
        first = 0 if resume is None else resume["step"]
        if first:
            say(f"{recipe.name}: resuming stage {stage} at step {first} from {partial}")
        start, cpu = time.perf_counter(), time.process_time()
        curve = run_stage(recipe, stage, model, decoder, prefetch(make, range(first, cfg.steps)), device,
                          progress=progress, resume=resume, save_to=partial)
        seconds = time.perf_counter() - start + (0.0 if resume is None else resume["seconds"])
        cpu = time.process_time() - cpu
        losses[stage] = curve
        record = {"stage": stage, "steps": cfg.steps, "seconds": seconds, "cpu_seconds": cpu, "losses": curve}
        _after_main(lambda: (_save_stage(out, stage, model, processor, decoder, record),
                             partial.unlink(missing_ok=True)))
        say(f"{recipe.name}: stage {stage} done ({cfg.steps} steps, {seconds:.1f}s, "
            f"loss {curve[0]['loss']:.3f} -> {curve[-1]['loss']:.3f})")
    final = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    final.eval()
    scores = score(final, processor, recipe, device=device, progress=progress, name=str(out))

    def finish() -> None:
        with quiet_hf():
            save_checkpoint(final, processor, out, extra={LOSSES_FILE: losses})
        give_umask(out)
        scores["weights_digest"] = weights_digest(out)
        scores["base"] = base_name(recipe)
        atomic_write_text(out / SCORES_FILE, json.dumps(scores, indent=2, sort_keys=True))

    _after_main(finish)
    return out


def _after_main(write: Callable[[], object]) -> None:
    """Rank 0 runs `write` (files), then every rank waits for it; in one process, just `write()`.

    An error on rank 0 reaches the others as a `UsageError` rather than a hang."""
    if not distributed.active():
        write()
        return
    error = None
    if distributed.is_main():
        try:
            write()
        except Exception as err:  # noqa: BLE001  (re-raised below, on every rank)
            error = err
    message = distributed.broadcast_object(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    if message is not None:
        raise UsageError(f"rank 0 failed: {message}")


def score(model, processor, recipe: Recipe, *, device: torch.device | None = None, progress: bool = False,
          name: str = "the model") -> dict:
    """Mini-MMEB P@1 (overall, meta-tasks, IND/OOD, hard/random, per dataset; tie-robust beside each) under the
    recipe's embed_mask, with the embeddings' spread and `degenerate` when they have collapsed. NaN / inf
    embeddings raise (`NonFiniteEmbeddings`, naming `name` and the dataset)."""
    from analysis.data import build_mini_mmeb
    from analysis.evaluate import evaluate
    from analysis.metrics.retrieval import mmeb_scores

    if recipe.eval.n_per_dataset == 0:
        return {"skipped": True}
    datasets = build_mini_mmeb(recipe.eval.n_per_dataset, seed=recipe.eval.seed)
    start = time.perf_counter()
    with autocast(device or torch.device("cpu")):
        result = evaluate(model, processor, datasets, mask_type=recipe.embed_mask,
                          batch_size=recipe.eval.batch_size, progress=progress, name=name, split=True)
    ind = mmeb_scores([r for r in result["datasets"] if r["split"] == "ind"], groups=("meta_task", "negatives"))
    result.update(ind_overall=ind["overall"], ind_overall_tie_robust=ind["overall_tie_robust"],
                  ind_meta_task=ind["meta_task"], ind_negatives=ind["negatives"])
    result["embed_mask"] = recipe.embed_mask
    result["seconds"] = time.perf_counter() - start
    return result


def load_heads(stage_dir: str | Path) -> dict[str, torch.Tensor]:
    """The training-only MAE decoder weights saved with a warm-up stage checkpoint."""
    return load_file(str(Path(stage_dir) / HEADS_FILE))
