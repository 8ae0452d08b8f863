"""Items -> model batch with a role and a segment for every position: `[A][EOS][B]` + right PAD.

The sequence is assembled here rather than by a chat template, so every position's provenance is known
exactly. An embedder preset (`analysis.presets`) gives the prompt around each input and the read token:
the prompt string is tokenised whole (as the authors' processors do), each token is labelled with the
prompt segment its first character came from, and each `<|image_pad|>` is expanded to the image's token
count. Roles: the read token is `EOS`, everything before it `A`, the optional reconstruction target `B`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Sequence

import torch

from analysis.data.items import Item
from analysis.errors import UsageError
from analysis.masks import EOS, PAD, A, B, additive_mask, rope_position_ids
from analysis.presets import IMAGE_PAD, SEGMENTS, Preset, get_preset

SEGMENT_ID = {name: i for i, name in enumerate(SEGMENTS)}
PER_TOKEN = ("input_ids", "roles", "is_image", "mm_token_type_ids", "segment_ids")  # Batch's [B, L] fields


@dataclass
class Batch:
    """A right-padded batch. Shapes: B sequences of length L; P image patches over all images."""

    input_ids: torch.Tensor            # [B, L] int64
    roles: torch.Tensor                # [B, L] int64 role ids (A=0, EOS=1, B=2, PAD=3)
    is_image: torch.Tensor             # [B, L] bool, image-pad positions (a sub-segment of A)
    mm_token_type_ids: torch.Tensor    # [B, L] int32, 1 at image tokens
    position_ids: torch.Tensor         # [3, B, L] mRoPE ids (as the preset's position scheme gives them)
    eos_index: torch.Tensor            # [B] position of the embedding token
    segment_ids: torch.Tensor          # [B, L] int64 index into analysis.presets.SEGMENTS
    pool: torch.Tensor | None = None   # [B, L] bool positions averaged into the embedding (None: read EOS)
    pixel_values: torch.Tensor | None = None     # [P, C*T*patch*patch]
    image_grid_thw: torch.Tensor | None = None   # [n_images, 3]

    def to(self, device: torch.device | str) -> "Batch":
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)
                                if getattr(self, f.name) is not None})

    def model_inputs(self, mask_type: str, *, dtype: torch.dtype = torch.float32) -> dict:
        """Keyword arguments for a Qwen2(.5)-VL forward under `mask_type` (additive 4D mask)."""
        inputs = dict(input_ids=self.input_ids, attention_mask=additive_mask(self.roles, mask_type, dtype=dtype),
                      position_ids=self.position_ids, mm_token_type_ids=self.mm_token_type_ids)
        if self.pixel_values is not None:
            inputs.update(pixel_values=self.pixel_values.to(dtype), image_grid_thw=self.image_grid_thw)
        return inputs

    def rows(self, rows: range) -> "Batch":
        """Rows `rows` (a contiguous range) with their images' patches: same length L."""
        out = {name: getattr(self, name)[rows.start:rows.stop] for name in (*PER_TOKEN, "eos_index")}
        out["position_ids"] = self.position_ids[:, rows.start:rows.stop]
        out["pool"] = None if self.pool is None else self.pool[rows.start:rows.stop]
        out["pixel_values"] = out["image_grid_thw"] = None
        if self.image_grid_thw is not None:
            has_image = self.is_image.any(1)
            first, last = int(has_image[:rows.start].sum()), int(has_image[:rows.stop].sum())
            if last > first:
                patches = torch.cat([self.image_grid_thw.new_zeros(1), self.image_grid_thw.prod(-1).cumsum(0)])
                out["pixel_values"] = self.pixel_values[int(patches[first]):int(patches[last])]
                out["image_grid_thw"] = self.image_grid_thw[first:last]
        return Batch(**out)

    def trimmed(self) -> "Batch":
        """The batch without the columns that are PAD in every row (right padding past its longest row, e.g.
        after taking some rows of a batch): the same states at every other position, for less compute."""
        length = int((self.roles != PAD).sum(1).max()) if len(self.roles) else 0
        if length == self.roles.shape[1]:
            return self
        cut = {name: getattr(self, name)[:, :length] for name in PER_TOKEN}
        return replace(self, **cut, position_ids=self.position_ids[..., :length],
                       pool=None if self.pool is None else self.pool[:, :length])

    def segments(self, index: int) -> list[str]:
        """Per-position segment names of sample `index` (see `analysis.presets.SEGMENTS`)."""
        return [SEGMENTS[s] for s in self.segment_ids[index].tolist()]


def _sized(image, preset: Preset, factor: int):
    """`image` resized as the preset's own code does before its processor (GME's fetch_image, a fixed size)."""
    if preset.fetch_resize:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        height, width = smart_resize(image.height, image.width, factor, *preset.fetch_resize)
        image = image.resize((width, height))
    if preset.resize_to:
        image = image.resize(preset.resize_to)
    return image


def _images(processor, items: Sequence[Item], preset: Preset):
    """`(pixel_values, image_grid_thw, tokens per image)` of the items' images, decoded now, in order."""
    image_processor = processor.image_processor
    factor = image_processor.patch_size * image_processor.merge_size
    images = [_sized(it.load_image(), preset, factor) for it in items if it.has_image]
    if not images:
        return None, None, []
    sizing = {}
    if preset.min_pixels or preset.max_pixels:
        size = image_processor.size
        sizing["size"] = {"shortest_edge": preset.min_pixels or size["shortest_edge"],
                          "longest_edge": preset.max_pixels or size["longest_edge"]}
    out = image_processor(images=images, return_tensors="pt", **sizing)
    merge = image_processor.merge_size ** 2
    return out["pixel_values"], out["image_grid_thw"], [int(g.prod()) // merge for g in out["image_grid_thw"]]


def _token_id(tok, token: str) -> int:
    token_id = tok.convert_tokens_to_ids(token)
    if token_id is None or token_id == tok.unk_token_id:
        raise UsageError(f"the tokenizer has no token {token!r}, which this embedder preset needs; "
                         f"use the checkpoint's own processor or another --preset")
    return token_id


def _prompt_tokens(tok, pieces: list[tuple[str, str]], max_text_tokens: int | None) -> tuple[list[int], list[int]]:
    """Token ids of the joined prompt and the segment id of each (from the piece holding its first character)."""
    text = "".join(s for _, s in pieces)
    owner = [SEGMENT_ID[segment] for segment, s in pieces for _ in s]
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, segments, n_text = [], [], 0
    for token_id, (start, end) in zip(enc.input_ids, enc.offset_mapping):
        first = next((i for i in range(start, end) if not text[i].isspace()), start)
        segment = owner[min(first, len(owner) - 1)]
        if token_id == tok.unk_token_id and segment == SEGMENT_ID["template"]:
            raise UsageError(f"the tokenizer has no token for {text[start:end]!r} of this preset's prompt; use the "
                             f"checkpoint's own processor, or another --preset")
        if segment == SEGMENT_ID["text"]:
            n_text += 1
            if max_text_tokens is not None and n_text > max_text_tokens:
                continue
        ids.append(token_id)
        segments.append(segment)
    return ids, segments


def encode(processor, model, items: Sequence[Item], targets: Sequence[str] | None = None,
           *, max_text_tokens: int | None = None, preset: str | Preset = "plain", side: str = "query") -> Batch:
    """Tokenise `items` as `preset` prompts them on `side` ("query" / "candidate"), with optional
    reconstruction `targets` (one per item) as the B segment, into a `Batch`."""
    if targets is not None and len(targets) != len(items):
        raise ValueError(f"got {len(targets)} targets for {len(items)} items; give one target per item or none")
    preset = get_preset(preset)
    tok = processor.tokenizer
    pad_image = _token_id(tok, IMAGE_PAD)
    read_id = _token_id(tok, preset.append) if preset.append else None
    pixel_values, grid, tokens_per_image = _images(processor, items, preset)
    image_iter = iter(tokens_per_image)
    sequences, roles, segment_rows = [], [], []
    for i, item in enumerate(items):
        pieces = preset.pieces(side, item.instruction, item.text, item.has_image)
        prompt_ids, prompt_segments = _prompt_tokens(tok, pieces, max_text_tokens)
        ids, segments = [], []
        slots = sum(t == pad_image and g == SEGMENT_ID["image"] for t, g in zip(prompt_ids, prompt_segments))
        if slots != int(item.has_image):
            raise UsageError(f"preset {preset.name!r} gives item {item.key!r} {slots} image slots for "
                             f"{int(item.has_image)} image(s)")
        for token_id, segment in zip(prompt_ids, prompt_segments):
            if token_id == pad_image and segment == SEGMENT_ID["image"]:
                n = next(image_iter)
                ids += [pad_image] * n
                segments += [segment] * n
            else:
                ids.append(token_id)
                segments.append(SEGMENT_ID["vision"] if segment == SEGMENT_ID["image"] else segment)
        if read_id is not None:
            ids.append(read_id)
            segments.append(SEGMENT_ID["EOS"])
        if not ids:
            raise UsageError(f"item {item.key!r} encodes to no tokens under preset {preset.name!r}: give it text or "
                             f"an image")
        segments[-1] = SEGMENT_ID["EOS"]
        role = [A] * (len(ids) - 1) + [EOS]
        if targets is not None:
            target = tok(targets[i], add_special_tokens=False).input_ids if targets[i] else []
            target = target[:max_text_tokens] if max_text_tokens is not None else target
            ids += target
            segments += [SEGMENT_ID["B"]] * len(target)
            role += [B] * len(target)
        sequences.append(ids)
        roles.append(role)
        segment_rows.append(segments)
    length = max(map(len, sequences))
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else sequences[0][-1]

    def padded(rows, fill):
        return torch.tensor([r + [fill] * (length - len(r)) for r in rows])

    input_ids, role_ids = padded(sequences, pad_id), padded(roles, PAD)
    segment_ids = padded(segment_rows, SEGMENT_ID["PAD"])
    is_image = segment_ids == SEGMENT_ID["image"]
    mm_types = is_image.to(torch.int32)
    eos_index = (role_ids == EOS).int().argmax(dim=1)
    if preset.positions == "1d":
        position_ids = rope_position_ids(model, input_ids, role_ids, mm_types, None)
    else:
        position_ids = rope_position_ids(model, input_ids, role_ids, mm_types, grid)
    pool = ((role_ids == A) | (role_ids == EOS)) if preset.pooling == "mean" else None
    return Batch(input_ids, role_ids, is_image, mm_types, position_ids, eos_index, segment_ids, pool,
                 pixel_values, grid)
