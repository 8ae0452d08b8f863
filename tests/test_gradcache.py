"""Gradient caching: the gradients of every parameter equal full-batch InfoNCE's (contrastive stage and the
λ-mixed stage 2), in one process and across 2 gloo processes each holding half the batch."""

import os
import socket

import pytest
import torch

from analysis import distributed
from analysis.train import Recipe, apply_overrides
from analysis.train.batches import local_part, make_batch_fn
from analysis.train.objectives import bridged_loss, contrastive_loss, mask_token_id
from analysis.train.runner import build_model

TOL = 1e-5


def _setup(stage: str, recon_weight: float = 1.0):
    recipe = apply_overrides(Recipe(name="gc"), [
        f"stages.{stage}.steps=1", f"stages.{stage}.batch_size=6", "data.batching=mixed", "data.hard_negatives=1",
        "backbone.hidden_size=32", "backbone.vision_width=32", "device=cpu",
        *([f"stages.bridged.recon_weight={recon_weight}"] if stage == "bridged" else [])])
    model, processor = build_model(recipe, device=torch.device("cpu"))
    step = make_batch_fn(recipe, stage, processor, model, mask_token_id(processor.tokenizer))(0)
    return recipe, model, step


def _grads(model, recipe, stage, step, chunk_size):
    model.zero_grad(set_to_none=True)
    if stage == "contrastive":
        temperature = recipe.stages.contrastive.temperature
        loss = contrastive_loss(model, step["pairs"], recipe.embed_mask, temperature=temperature, symmetric=True,
                                chunk_size=chunk_size)
    else:
        cfg = recipe.stages.bridged
        loss = bridged_loss(model, step.get("recon"), step["pairs"], cfg.recon_weight, "eos_bridged",
                            recipe.embed_mask, temperature=cfg.temperature, symmetric=True,
                            chunk_size=chunk_size)["loss"]
    if loss.requires_grad:
        loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(full, cached):
    """Loss within 1e-5; every parameter's gradient within 1e-5 of its largest entry (temperature 0.02 makes
    gradients of order 1-10, where float32 rounding of a reordered sum is ~1e-6 relative)."""
    assert full[0] == pytest.approx(cached[0], abs=TOL)
    assert full[1].keys() == cached[1].keys()
    worst = max(((full[1][n] - cached[1][n]).abs().max() / full[1][n].abs().max().clamp_min(1)).item()
                for n in full[1])
    assert worst < TOL, worst


@pytest.mark.parametrize("stage, recon_weight", [("contrastive", 1.0), ("bridged", 0.5)])
def test_cached_gradients_equal_full_batch(stage, recon_weight):
    recipe, model, step = _setup(stage, recon_weight)
    full = _grads(model, recipe, stage, step, None)
    rng = torch.get_rng_state()
    cached = _grads(model, recipe, stage, step, 4)  # 19 rows (6 queries, 6 targets + hard negatives): 5 chunks
    assert torch.equal(rng, torch.get_rng_state())  # the generators continue as after one forward
    _assert_same(full, cached)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, stage: str, recon_weight: float, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    distributed.init("gloo")
    recipe, model, step = _setup(stage, recon_weight)
    local = local_part(step, rank, 2)
    params = [p for p in model.parameters() if p.requires_grad]
    results = {}
    for chunk_size in (None, 2):
        loss, _ = _grads(model, recipe, stage, local, chunk_size)
        distributed.all_reduce_grads(params)
        results[chunk_size] = (loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    if rank == 0:
        torch.save(results, out)
    torch.distributed.destroy_process_group()


def test_two_processes_equal_full_batch(tmp_path):
    """2 gloo ranks, each half the global batch of the λ-mixed stage 2, InfoNCE negatives gathered across ranks,
    without and with caching (chunks of 2 rows): loss and summed gradients equal one process's full batch."""
    stage, recon_weight = "bridged", 0.5
    recipe, model, step = _setup(stage, recon_weight)
    full = _grads(model, recipe, stage, step, None)
    out = str(tmp_path / "rank0.pt")
    torch.multiprocessing.spawn(_rank, args=(_free_port(), stage, recon_weight, out), nprocs=2)
    for chunk_size, result in torch.load(out).items():
        _assert_same(full, result)
