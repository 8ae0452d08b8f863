"""Attention pattern rows without eager attention: a few query rows from the layer's own queries and keys.

Eager attention materialises `[batch, heads, L, L]` per layer and cannot use fused kernels, yet a capture keeps
one row per sample (EOS) or a few (EOS, then B). So the model runs its fast attention (sdpa) and `PatternRows`
recomputes only those rows, as Hugging Face's eager attention computes them:

    pattern[b, h, i, :] = softmax_float32(rot(q[b, i, h]) . rot(k[b, :, g(h)]) * scaling + mask[b, 0, i, :])

with `rot` the (M-)RoPE rotation by the `(cos, sin)` the layer received, `g(h) = h // (heads / kv_heads)` the
key head of h's GQA group, and the additive mask the layer received; cast back to the model's dtype.

Per layer, during the attention module's forward: a forward pre-hook on the Hugging Face module keeps its
`position_embeddings` and `attention_mask` (TransformerLens' `hook_rot_q` / `hook_rot_k` exist but never fire:
Qwen2(.5)-VL's rotary stays inside Hugging Face's forward), `blocks.{l}.attn.hook_q` keeps the queries and
`blocks.{l}.attn.hook_k` (Hugging Face projects q, then k) computes the rows (for Qwen3-VL, whose q and k pass
through per-head norms, `attn.q_norm.hook_out` / `attn.k_norm.hook_out`). Nothing `[L, L]` is formed.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import torch
from transformer_lens.model_bridge import TransformerBridge


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`x` `[B, n, heads, D]` rotated by `cos` / `sin` `[B, n, D]` (Hugging Face's `apply_rotary_pos_emb`)."""
    cos, sin = cos[:, :, None], sin[:, :, None]
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def attention_rows(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
                   index: torch.Tensor, scaling: float) -> torch.Tensor:
    """Eager attention's rows `[B, heads, Q, L]` of the queries at `index` `[B, Q]`.

    q `[B, L, heads, D]` and k `[B, L, kv_heads, D]` are the projections (before rotary), cos / sin `[B, L, D]`,
    mask `[B, 1, L, L]` additive.
    """
    rows = torch.arange(len(index), device=index.device)[:, None]
    q = rotate(q[rows, index], cos[rows, index], sin[rows, index])  # [B, Q, heads, D]
    k = rotate(k, cos, sin)  # [B, L, kv_heads, D]
    size, n, heads, d = q.shape
    grouped = q.view(size, n, k.shape[2], heads // k.shape[2], d)  # head h = g * group + r reads key head g
    scores = torch.einsum("bqgrd,bkgd->bgrqk", grouped, k).reshape(size, heads, n, -1) * scaling
    scores = scores + mask[rows, 0, index][:, None]
    return scores.softmax(-1, dtype=torch.float32).to(q.dtype)


class PatternRows:
    """Hooks that leave `rows[layer]` `[B, heads, Q, L]` after each forward, for the query positions `index` `[B, Q]`.

    Works under any attention implementation; set `index` before each forward.
    """

    def __init__(self, bridge: TransformerBridge):
        self.bridge, self.index = bridge, None
        self.rows: dict[int, torch.Tensor] = {}
        self._seen: dict[int, tuple] = {}  # layer -> what the layer received so far

    @contextmanager
    def installed(self):
        n_layers = len(self.bridge.blocks)
        handles = [block.attn.original_component.register_forward_pre_hook(partial(self._received, i), with_kwargs=True)
                   for i, block in enumerate(self.bridge.blocks)]
        # Qwen3-VL normalises q and k per head after projecting them: its rows start from the norms' outputs
        normed = "blocks.0.attn.q_norm.hook_out" in self.bridge.hook_dict
        names = ("q_norm.hook_out", "k_norm.hook_out") if normed else ("hook_q", "hook_k")
        fwd_hooks = [(f"blocks.{i}.attn.{name}", partial(fn, i)) for i in range(n_layers)
                     for name, fn in zip(names, (self._queries, self._keys))]
        try:
            with self.bridge.hooks(fwd_hooks=fwd_hooks):
                yield self
        finally:
            for handle in handles:
                handle.remove()

    def _received(self, layer: int, module, args, kwargs) -> None:
        self._seen[layer] = (*kwargs["position_embeddings"], kwargs["attention_mask"], module.scaling)

    def _queries(self, layer: int, q: torch.Tensor, hook) -> None:  # [B, L, heads, D]
        self._seen[layer] += (q,)

    def _keys(self, layer: int, k: torch.Tensor, hook) -> None:  # [B, L, kv_heads, D]
        cos, sin, mask, scaling, q = self._seen.pop(layer)
        self.rows[layer] = attention_rows(q, k, cos, sin, mask, self.index, scaling)
