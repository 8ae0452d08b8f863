"""Items -> model batch with a role for every position: `[A: image + text][EOS][B: target]` + PAD.

The sequence is assembled here rather than by the processor's chat template, so every position's role
is known exactly: A = `<|vision_start|> <|image_pad|>*n <|vision_end|>` + text, then the embedding token,
then (for reconstruction) the target text B, right-padded.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Sequence

import torch

from analysis.data.items import Item
from analysis.masks import EOS, PAD, A, B, additive_mask, rope_position_ids
from analysis.models import EMBED_TOKEN, IMAGE_PAD, VISION_END, VISION_START


@dataclass
class Batch:
    """A right-padded batch. Shapes: B sequences of length L; P image patches over all images."""

    input_ids: torch.Tensor            # [B, L] int64
    roles: torch.Tensor                # [B, L] int64 role ids (A=0, EOS=1, B=2, PAD=3)
    is_image: torch.Tensor             # [B, L] bool, image-pad positions (a sub-segment of A)
    mm_token_type_ids: torch.Tensor    # [B, L] int32, 1 at image tokens
    position_ids: torch.Tensor         # [3, B, L] mRoPE ids
    eos_index: torch.Tensor            # [B] position of the embedding token
    pixel_values: torch.Tensor | None = None     # [P, C*T*patch*patch]
    image_grid_thw: torch.Tensor | None = None   # [n_images, 3]

    def to(self, device: torch.device | str) -> "Batch":
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)
                                if getattr(self, f.name) is not None})

    def model_inputs(self, mask_type: str, dtype: torch.dtype = torch.float32) -> dict:
        """Keyword arguments for a Qwen2(.5)-VL forward under `mask_type` (additive 4D mask)."""
        inputs = dict(input_ids=self.input_ids, attention_mask=additive_mask(self.roles, mask_type, dtype),
                      position_ids=self.position_ids, mm_token_type_ids=self.mm_token_type_ids)
        if self.pixel_values is not None:
            inputs.update(pixel_values=self.pixel_values.to(dtype), image_grid_thw=self.image_grid_thw)
        return inputs

    def segments(self, index: int) -> list[str]:
        """Per-position labels of sample `index` with A split into `image` / `text` (for flow analyses)."""
        names = {A: "text", EOS: "EOS", B: "B", PAD: "PAD"}
        return ["image" if img else names[int(r)] for r, img in zip(self.roles[index], self.is_image[index])]


def _text_ids(tokenizer, text: str, limit: int | None) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False).input_ids if text else []
    return ids[:limit] if limit is not None else ids


def encode(processor, model, items: Sequence[Item], targets: Sequence[str] | None = None,
           max_text_tokens: int | None = None, embed_token: str = EMBED_TOKEN) -> Batch:
    """Tokenise `items` (and optional reconstruction `targets`, one per item) into a `Batch`."""
    if targets is not None and len(targets) != len(items):
        raise ValueError(f"got {len(targets)} targets for {len(items)} items; give one target per item or none")
    tok = processor.tokenizer
    embed_id = tok.convert_tokens_to_ids(embed_token)
    if embed_id is None or embed_id == tok.unk_token_id:
        raise ValueError(f"the tokenizer has no embedding token {embed_token!r}")
    images = [it.image for it in items if it.image is not None]
    pixel_values = grid = None
    tokens_per_image: list[int] = []
    if images:
        out = processor.image_processor(images=images, return_tensors="pt")
        pixel_values, grid = out["pixel_values"], out["image_grid_thw"]
        merge = processor.image_processor.merge_size ** 2
        tokens_per_image = [int(g.prod()) // merge for g in grid]
    vs, pad_img, ve = (tok.convert_tokens_to_ids(t) for t in (VISION_START, IMAGE_PAD, VISION_END))
    sequences, roles, image_flags = [], [], []
    image_iter = iter(tokens_per_image)
    for i, item in enumerate(items):
        ids, img = [], []
        if item.image is not None:
            n = next(image_iter)
            ids, img = [vs] + [pad_img] * n + [ve], [False] + [True] * n + [False]
        text = _text_ids(tok, item.text, max_text_tokens)
        ids += text + [embed_id]
        img += [False] * (len(text) + 1)
        role = [A] * (len(ids) - 1) + [EOS]
        if targets is not None:
            target = _text_ids(tok, targets[i], max_text_tokens)
            ids += target
            img += [False] * len(target)
            role += [B] * len(target)
        sequences.append(ids)
        roles.append(role)
        image_flags.append(img)
    length = max(map(len, sequences))
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else embed_id

    def padded(rows, fill):
        return torch.tensor([r + [fill] * (length - len(r)) for r in rows])

    input_ids, role_ids, is_image = padded(sequences, pad_id), padded(roles, PAD), padded(image_flags, False)
    mm_types = is_image.to(torch.int32)
    eos_index = (role_ids == EOS).int().argmax(dim=1)
    position_ids = rope_position_ids(model, input_ids, role_ids, mm_types, grid)
    return Batch(input_ids, role_ids, is_image, mm_types, position_ids, eos_index, pixel_values, grid)
