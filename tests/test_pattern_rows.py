"""`attention_rows` against Hugging Face's own eager attention: M-RoPE rotation, GQA grouping, scaling, mask.

End to end (both backbones, every mask type, sdpa against eager `hook_pattern`): tests/test_lens_parity.py.
"""

from types import SimpleNamespace

import pytest
import torch
from transformers.models.qwen2_vl.modeling_qwen2_vl import apply_rotary_pos_emb, eager_attention_forward

from analysis.lens.pattern_rows import attention_rows


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_rows_equal_hugging_faces_eager_attention(dtype, tol):
    gen = torch.Generator().manual_seed(0)
    size, length, heads, kv_heads, d = 3, 11, 6, 2, 8
    q = torch.randn(size, length, heads, d, generator=gen).to(dtype)
    k = torch.randn(size, length, kv_heads, d, generator=gen).to(dtype)
    angles = torch.rand(size, length, d // 2, generator=gen) * 20  # per-sample positions, as M-RoPE gives
    cos, sin = torch.cat([angles, angles], -1).cos().to(dtype), torch.cat([angles, angles], -1).sin().to(dtype)
    blocked = torch.rand(size, 1, length, length, generator=gen) < 0.4
    blocked[..., range(length), range(length)] = False  # no empty row
    mask = torch.zeros(blocked.shape, dtype=dtype).masked_fill(blocked, torch.finfo(dtype).min)
    rotated_q, rotated_k = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
    module = SimpleNamespace(num_key_value_groups=heads // kv_heads, training=False)
    _, weights = eager_attention_forward(module, rotated_q, rotated_k, rotated_k, mask, scaling=d ** -0.5)
    index = torch.tensor([[4, 0, 10], [10, 10, 10], [2, 7, 7]])  # [B, Q], repeats allowed
    rows = attention_rows(q, k, cos, sin, mask, index, d ** -0.5)
    expected = weights[torch.arange(size)[:, None], :, index].transpose(1, 2)  # [B, heads, Q, L]
    assert rows.dtype == dtype and rows.shape == (size, heads, 3, length)
    torch.testing.assert_close(rows.float(), expected.float(), atol=tol, rtol=0)
    blocked_rows = blocked[torch.arange(size)[:, None], 0, index][:, None].expand_as(rows)  # [B, heads, Q, L]
    assert (rows[blocked_rows] == 0).all()
