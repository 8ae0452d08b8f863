"""Embedded tiny Qwen2-VL / Qwen2.5-VL backbones, their local tokenizer, and checkpoint save/load.

`build_tiny` makes a random-initialised model from a config (nothing downloaded) with a WordLevel
tokenizer over the synthetic world's vocabulary plus Qwen's special tokens. `load_checkpoint` opens any
local Qwen2-VL / Qwen2.5-VL directory in Hugging Face format: the tiny ones saved here and real
2B-7B checkpoints alike.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import (
    AutoProcessor,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

from analysis.data.vocabulary import WORDS
from analysis.io import write_json

TINY_BACKBONES = ("tiny-qwen2.5-vl", "tiny-qwen2-vl")
MODEL_CLASSES = {"qwen2_5_vl": Qwen2_5_VLForConditionalGeneration, "qwen2_vl": Qwen2VLForConditionalGeneration}
EMBED_TOKEN = "<|endoftext|>"
MASK_TOKEN = "<|mask|>"
PAD_TOKEN = "<|pad|>"
UNK_TOKEN = "<|unk|>"
VISION_START, IMAGE_PAD, VISION_END, VIDEO_PAD = "<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>"
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, EMBED_TOKEN, MASK_TOKEN, VISION_START, IMAGE_PAD, VISION_END, VIDEO_PAD)

# Text decoder and vision tower sizes of the embedded default (about 1M parameters at width 128).
TINY_TEXT = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=512, rope_theta=10000.0)
TINY_VISION = dict(depth=2, num_heads=4, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
MIN_PIXELS, MAX_PIXELS = 56 * 56, 112 * 112


def build_tokenizer(words: tuple[str, ...] = WORDS) -> PreTrainedTokenizerFast:
    """Word-level tokenizer: special tokens first, then `words`; lower-cases, splits words and punctuation."""
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(SPECIAL_TOKENS + tuple(words)))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token=UNK_TOKEN, pad_token=PAD_TOKEN, eos_token=EMBED_TOKEN,
        mask_token=MASK_TOKEN,
        extra_special_tokens={"image_token": IMAGE_PAD, "video_token": VIDEO_PAD,
                              "vision_start_token": VISION_START, "vision_end_token": VISION_END},
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[3:])})
    return tokenizer


def build_processor(tokenizer: PreTrainedTokenizerFast | None = None) -> Qwen2VLProcessor:
    """Qwen2-VL processor for small images: 56x56 -> 4 image tokens, 112x112 -> 16."""
    image_processor = Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    return Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer or build_tokenizer(),
                            video_processor=Qwen2VLVideoProcessor())


def tiny_config(name: str, hidden_size: int = 128, num_hidden_layers: int = 4, vision_width: int = 64,
                tokenizer: PreTrainedTokenizerFast | None = None):
    """Config of an embedded tiny backbone; token ids come from the local tokenizer."""
    if name not in TINY_BACKBONES:
        raise ValueError(f"unknown tiny backbone {name!r}; valid: {', '.join(TINY_BACKBONES)}")
    tok = tokenizer or build_tokenizer()
    ids = {k: tok.convert_tokens_to_ids(t) for k, t in
           dict(image_token_id=IMAGE_PAD, video_token_id=VIDEO_PAD, vision_start_token_id=VISION_START,
                vision_end_token_id=VISION_END).items()}
    heads = TINY_TEXT["num_attention_heads"]
    text = dict(TINY_TEXT, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                num_hidden_layers=num_hidden_layers, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id,
                rope_parameters={"rope_type": "default", "rope_theta": TINY_TEXT["rope_theta"],
                                 "mrope_section": _mrope_section(hidden_size // heads)})
    text.pop("rope_theta")
    if name == "tiny-qwen2.5-vl":
        vision = dict(TINY_VISION, hidden_size=vision_width, intermediate_size=2 * vision_width,
                      out_hidden_size=hidden_size, window_size=112, fullatt_block_indexes=[TINY_VISION["depth"] - 1])
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
        config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    else:
        vision = dict(TINY_VISION, embed_dim=vision_width, hidden_size=hidden_size, mlp_ratio=2)
        config = Qwen2VLConfig(text_config=text, vision_config=vision, **ids)
        config.architectures = ["Qwen2VLForConditionalGeneration"]
    config.tie_word_embeddings = True
    return config


def _mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies over (temporal, height, width) like Qwen's 16/24/24 of 64."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def build_tiny(name: str = "tiny-qwen2.5-vl", seed: int = 0, attn_implementation: str = "eager", **sizes):
    """Random-initialised tiny backbone and its processor: `(model, processor)`."""
    processor = build_processor()
    config = tiny_config(name, tokenizer=processor.tokenizer, **sizes)
    torch.manual_seed(seed)
    model_class = MODEL_CLASSES[config.model_type]
    model = model_class._from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)
    return model.eval(), processor


def save_checkpoint(model, processor, path: str | Path, extra: dict[str, object] | None = None) -> Path:
    """Write a Hugging Face directory (safetensors + processor); `extra` maps file names to JSON objects."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    processor.save_pretrained(path)
    for filename, obj in (extra or {}).items():
        write_json(path / filename, obj)
    return path


def load_checkpoint(path: str | Path, dtype: torch.dtype | str = torch.float32, device: str | torch.device = "cpu",
                    attn_implementation: str = "eager", trust_remote_code: bool = False):
    """Open a local Qwen2-VL / Qwen2.5-VL directory: `(model, processor)`. Never reaches a hub."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: expected {config_file} (a save_pretrained directory)")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type not in MODEL_CLASSES:
        raise ValueError(f"{path} holds a {model_type!r} model; cocoa-lens opens: {', '.join(MODEL_CLASSES)}")
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    model = MODEL_CLASSES[model_type].from_pretrained(
        path, dtype=dtype, attn_implementation=attn_implementation, local_files_only=True,
        trust_remote_code=trust_remote_code)
    processor = AutoProcessor.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    return model.to(device).eval(), processor
