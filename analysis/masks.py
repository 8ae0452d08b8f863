"""Roles -> boolean allow-matrix -> additive 4D attention mask; mRoPE position ids.

Every token position has a role: `A` (content being embedded), `EOS` (embedding token), `B`
(reconstruction target) or `PAD`. A mask type says which query may attend which key:

            keys:  A     EOS    B
  query A          yes   yes    no
  query EOS        yes   yes    yes (eos_bridged) / no (eos_bridged_strict)
  query B          no    yes    yes

`causal` is key <= query among non-PAD, `bidirectional` every non-PAD pair. PAD keys are never
attended; a PAD query attends only to itself, so no softmax row is empty.

The names and `check_mask_type` need no torch (the command line and the presets import them): torch is
imported by the functions that build tensors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import torch

ROLES = ("A", "EOS", "B", "PAD")
A, EOS, B, PAD = range(4)
MASK_TYPES = ("causal", "bidirectional", "eos_bridged", "eos_bridged_strict")


def check_mask_type(mask_type: str) -> str:
    if mask_type not in MASK_TYPES:
        raise ValueError(f"unknown mask type {mask_type!r}; valid mask types: {', '.join(MASK_TYPES)}")
    return mask_type


def role_ids(roles: Sequence[str] | torch.Tensor) -> torch.Tensor:
    """Role names (or ids) `[L]` / `[B, L]` -> int64 ids with A=0, EOS=1, B=2, PAD=3."""
    import torch

    if isinstance(roles, torch.Tensor):
        ids = roles.long()
    elif len(roles) and not isinstance(roles[0], str):
        return torch.stack([role_ids(r) for r in roles])
    else:
        unknown = sorted({r for r in roles if r not in ROLES})
        if unknown:
            raise ValueError(f"unknown role(s) {unknown}; valid roles: {', '.join(ROLES)}")
        ids = torch.tensor([ROLES.index(r) for r in roles], dtype=torch.long)
    if ((ids < 0) | (ids >= len(ROLES))).any():
        raise ValueError(f"role ids must lie in 0..{len(ROLES) - 1} ({', '.join(ROLES)})")
    return ids


def _allowed(ids: torch.Tensor, mask_type: str) -> torch.Tensor:
    """Role ids `[..., L]` -> BoolTensor `[..., L, L]` (query, key)."""
    import torch

    q, k = ids.unsqueeze(-1), ids.unsqueeze(-2)
    L = ids.shape[-1]
    ok = (q != PAD) & (k != PAD)
    if mask_type == "causal":
        ok &= torch.ones(L, L, dtype=torch.bool, device=ids.device).tril()
    elif mask_type in ("eos_bridged", "eos_bridged_strict"):
        ok &= ~((q == A) & (k == B)) & ~((q == B) & (k == A))
        if mask_type == "eos_bridged_strict":
            ok &= ~((q == EOS) & (k == B))
    eye = torch.eye(L, dtype=torch.bool, device=ids.device)
    return ok | ((q == PAD) & eye)


def allowed(roles: Sequence[str] | torch.Tensor, mask_type: str) -> torch.Tensor:
    """BoolTensor `[L, L]`: entry [i, j] is True when query i may attend key j."""
    check_mask_type(mask_type)
    ids = role_ids(roles)
    if ids.ndim != 1:
        raise ValueError(f"allowed() takes one sequence of roles; got shape {tuple(ids.shape)} (use additive_mask)")
    return _allowed(ids, mask_type)


def additive_mask(roles_batch: Sequence[Sequence[str]] | torch.Tensor, mask_type: str,
                  *, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Float `[B, 1, L, L]` (dtype None: float32): 0 where allowed, `torch.finfo(dtype).min` where not (HF
    eager/sdpa form)."""
    import torch

    dtype = torch.float32 if dtype is None else dtype
    check_mask_type(mask_type)
    ids = role_ids(roles_batch)
    if ids.ndim != 2:
        raise ValueError(f"roles_batch must be [batch, length]; got shape {tuple(ids.shape)}")
    ok = _allowed(ids, mask_type).unsqueeze(1)
    mask = torch.zeros(ok.shape, dtype=dtype, device=ids.device)
    return mask.masked_fill_(~ok, torch.finfo(dtype).min)


def rope_position_ids(model, input_ids: torch.Tensor, roles: torch.Tensor, mm_token_type_ids: torch.Tensor,
                      image_grid_thw: torch.Tensor | None = None) -> torch.Tensor:
    """mRoPE position ids `[3, B, L]` for a (possibly multimodal) batch, PAD positions ignored.

    `model` is a Qwen2-VL / Qwen2.5-VL / Qwen3-VL `...ForConditionalGeneration` (or its inner `.model`); its
    own `get_rope_index` places image tokens (`mm_token_type_ids` 1) on their (t, h, w) grid of merged patches
    and resumes text after the larger side. Qwen3-VL interleaves the three axes over the rotary frequencies
    inside its attention; the ids are the same.
    """
    inner = getattr(model, "model", model)
    if not hasattr(inner, "get_rope_index"):
        raise TypeError(f"{type(model).__name__} has no get_rope_index; expected a Qwen2-VL / Qwen2.5-VL / "
                        f"Qwen3-VL model")
    nonpad = (role_ids(roles) != PAD).long()
    if image_grid_thw is None:
        positions = (nonpad.cumsum(-1) - 1).clamp(min=0) * nonpad
        return positions.unsqueeze(0).expand(3, -1, -1).contiguous()
    position_ids, _ = inner.get_rope_index(input_ids, mm_token_type_ids, image_grid_thw=image_grid_thw,
                                           attention_mask=nonpad)
    return position_ids
