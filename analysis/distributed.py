"""Data parallelism over the processes torchrun / `accelerate launch` start: a thin layer on torch.distributed.

The launcher sets RANK, WORLD_SIZE and LOCAL_RANK (and MASTER_ADDR / MASTER_PORT); nothing here launches
processes. With WORLD_SIZE unset or 1 every function is the single-process identity: `world()` is (0, 1),
`barrier` does nothing, `gather` returns `[x]`. With WORLD_SIZE > 1, `init()` joins the process group
(gloo on CPU, nccl when CUDA is available) once, and each rank takes a deterministic slice of the work:

    rank, size = init()
    mine = blocks(n, size)[rank]            # a contiguous range; ranks in order cover range(n) in order
    parts = gather_objects(result)          # [rank 0's, rank 1's, ...]: concatenating keeps global order
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
import torch.distributed as dist

from analysis.errors import UsageError


def world() -> tuple[int, int]:
    """`(rank, world size)` as the launcher set them (RANK, WORLD_SIZE), else `(0, 1)`."""
    try:
        rank, size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        raise UsageError(f"RANK={os.environ.get('RANK')!r} / WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} are not "
                         f"integers: launch with torchrun or accelerate launch") from None
    if size < 1 or not 0 <= rank < size:
        raise UsageError(f"RANK={rank} does not lie in WORLD_SIZE={size}: launch with torchrun or accelerate launch")
    return rank, size


def local_rank() -> int:
    """This process's index on its machine (LOCAL_RANK), e.g. its GPU."""
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    """Rank 0: the process that prints, writes merged indexes, checkpoints and scores."""
    return world()[0] == 0


def active() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init(backend: str | None = None) -> tuple[int, int]:
    """Join the launcher's process group when WORLD_SIZE > 1 (once; gloo on CPU, nccl with CUDA): `(rank, size)`."""
    rank, size = world()
    if size > 1 and not (dist.is_available() and dist.is_initialized()):
        if not dist.is_available():
            raise UsageError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend=backend)
    return rank, size


def device(default: str | torch.device | None = None) -> str | torch.device | None:
    """`cuda:LOCAL_RANK` for a CUDA run under several processes (`default` "cuda"/"auto"), else `default`."""
    if world()[1] > 1 and str(default) in ("cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda", local_rank())
    return default


def blocks(n: int, size: int) -> list[range]:
    """`range(n)` cut into `size` contiguous, near-equal ranges (earlier ranges one longer): rank r takes `[r]`."""
    base, extra = divmod(n, size)
    bounds = [r * base + min(r, extra) for r in range(size + 1)]
    return [range(bounds[r], bounds[r + 1]) for r in range(size)]


def my_block(n: int) -> range:
    """This rank's contiguous slice of `range(n)` (all of it in one process)."""
    rank, size = world() if active() else (0, 1)
    return blocks(n, size)[rank]


def barrier() -> None:
    """Wait for every rank (nothing in one process)."""
    if active():
        dist.barrier()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable `obj`, in rank order (`[obj]` in one process)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, *, src: int = 0) -> Any:
    """Rank `src`'s picklable `obj` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's `[n_r, ...]` tensor (sizes may differ along dim 0), in rank order; no gradient."""
    if not active():
        return [tensor]
    sizes = [int(s) for s in gather_objects(tensor.shape[0])]
    padded = torch.zeros((max(sizes), *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[:tensor.shape[0]] = tensor.detach()
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return [p[:s] for p, s in zip(parts, sizes)]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """`[sum n_r, ...]`: all ranks' rows concatenated in rank order, this rank's rows keeping their gradient.

    The other ranks' rows are constants (the gather-then-replace-local trick): the gradient a loss on the
    result sends to this rank's rows is that of the loss on one process holding all rows, so summing (not
    averaging) the ranks' parameter gradients gives the single-process gradient (see `all_reduce_grads`).
    """
    if not active():
        return tensor
    parts = gather(tensor)
    parts[dist.get_rank()] = tensor
    return torch.cat(parts)


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of `value` (a copy; no gradient)."""
    value = value.detach().clone()
    if active():
        dist.all_reduce(value)
    return value


def all_reduce_grads(parameters: Sequence[torch.nn.Parameter]) -> None:
    """Sum every parameter's gradient over ranks in place (one flat bucket per dtype and device).

    A parameter no rank gave a gradient (e.g. the vision tower on a text-only step) keeps `grad = None`, as
    in one process, so the optimiser skips it alike; one that only some ranks reached gets the others' sum.
    """
    if not active():
        return
    parameters = list(parameters)
    reached = torch.tensor([p.grad is not None for p in parameters], dtype=torch.int32,
                           device=parameters[0].device if parameters else "cpu")
    dist.all_reduce(reached)
    buckets: dict[tuple, list[torch.nn.Parameter]] = {}
    for p, hit in zip(parameters, reached.tolist()):
        if hit:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            buckets.setdefault((p.grad.dtype, p.grad.device), []).append(p)
    for _, bucket in sorted(buckets.items(), key=lambda kv: str(kv[0])):
        flat = torch.cat([p.grad.reshape(-1) for p in bucket])
        dist.all_reduce(flat)
        offset = 0
        for p in bucket:
            p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
            offset += p.numel()
