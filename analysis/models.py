"""Embedded tiny Qwen2-VL / Qwen2.5-VL / Qwen3-VL backbones, their local tokenizer, and checkpoint save/load.

`build_tiny` makes a random-initialised model from a config (nothing downloaded) with a WordLevel
tokenizer over the synthetic world's vocabulary plus Qwen's special tokens. `save_checkpoint` writes a
Hugging Face directory; `analysis.checkpoints.open_checkpoint` opens any local Qwen2-VL / Qwen2.5-VL /
Qwen3-VL directory: the tiny ones saved here and real 2B-8B checkpoints alike.

`tiny-qwen3-vl` differs from the Qwen2 family where Qwen3-VL does: 16-pixel patches (an image token covers
32x32 pixels, so its processor bounds are 64^2..128^2 pixels for the same 4..16 tokens), a learned position
grid and DeepStack in the vision tower (the merged features of vision block 0 are added to the image
tokens' residual stream after text layer 0), per-head q/k RMS norms and interleaved M-RoPE in the text decoder.
"""

from __future__ import annotations

import types
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

from analysis.data.vocabulary import WORDS
from analysis.io import write_json

TINY_BACKBONES = ("tiny-qwen2.5-vl", "tiny-qwen2-vl")  # the Qwen2 family (the tests' shared `tiny` fixture)
ALL_TINY_BACKBONES = TINY_BACKBONES + ("tiny-qwen3-vl",)  # every embedded backbone
MODEL_CLASSES = {"qwen2_5_vl": Qwen2_5_VLForConditionalGeneration, "qwen2_vl": Qwen2VLForConditionalGeneration,
                 "qwen3_vl": Qwen3VLForConditionalGeneration}
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
QWEN3_VISION = dict(depth=2, num_heads=4, patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                    num_position_embeddings=64, deepstack_visual_indexes=(0,), hidden_act="gelu_pytorch_tanh")
QWEN3_MIN_PIXELS, QWEN3_MAX_PIXELS = 64 * 64, 128 * 128  # 112x112 -> 128x128 -> 16 image tokens; 56 -> 4
QWEN3_IMAGE_NORM = dict(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])  # Qwen3-VL's preprocessor


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


def build_processor(tokenizer: PreTrainedTokenizerFast | None = None, *, name: str = "tiny-qwen2.5-vl"):
    """The tiny backbone's processor for small images: 56x56 -> 4 image tokens, 112x112 -> 16.

    Qwen2-VL / Qwen2.5-VL: 14-pixel patches; Qwen3-VL: 16-pixel patches and Qwen3-VL's 0.5 / 0.5 normalisation.
    """
    tokenizer = tokenizer or build_tokenizer()
    if name == "tiny-qwen3-vl":
        image_processor = Qwen2VLImageProcessor(patch_size=16, merge_size=2, temporal_patch_size=2,
                                                min_pixels=QWEN3_MIN_PIXELS, max_pixels=QWEN3_MAX_PIXELS,
                                                **QWEN3_IMAGE_NORM)
        return Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                video_processor=Qwen3VLVideoProcessor())
    image_processor = Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    return Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                            video_processor=Qwen2VLVideoProcessor())


def tiny_config(name: str, *, hidden_size: int = 128, num_hidden_layers: int = 4, vision_width: int = 64,
                tokenizer: PreTrainedTokenizerFast | None = None):
    """Config of an embedded tiny backbone; token ids come from the local tokenizer."""
    if name not in ALL_TINY_BACKBONES:
        raise ValueError(f"unknown tiny backbone {name!r}; valid: {', '.join(ALL_TINY_BACKBONES)}")
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
    if name == "tiny-qwen3-vl":
        head_dim = hidden_size // heads
        text.update(head_dim=head_dim, rope_parameters=dict(text["rope_parameters"], mrope_interleaved=True,
                                                            mrope_section=_interleaved_mrope_section(head_dim)))
        vision = dict(QWEN3_VISION, hidden_size=vision_width, intermediate_size=2 * vision_width,
                      out_hidden_size=hidden_size)
        config = Qwen3VLConfig(text_config=text, vision_config=vision, **ids)
        config.architectures = ["Qwen3VLForConditionalGeneration"]
    elif name == "tiny-qwen2.5-vl":
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


def _interleaved_mrope_section(head_dim: int) -> list[int]:
    """Qwen3-VL's interleaved split of head_dim/2 frequencies: height and width each get 20/64 of them (every
    third from index 1 and 2), time the rest, like its [24, 20, 20] of 64."""
    half = head_dim // 2
    spatial = half * 5 // 16
    return [half - 2 * spatial, spatial, spatial]


def build_tiny(name: str = "tiny-qwen2.5-vl", *, seed: int = 0, attn_implementation: str = "eager", **sizes):
    """Random-initialised tiny backbone and its processor: `(model, processor)`."""
    processor = build_processor(name=name)
    config = tiny_config(name, tokenizer=processor.tokenizer, **sizes)
    torch.manual_seed(seed)
    model_class = MODEL_CLASSES[config.model_type]
    model = model_class._from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)
    return model.eval(), processor


def save_checkpoint(model, processor, path: str | Path, *, extra: dict[str, object] | None = None) -> Path:
    """Write a Hugging Face directory (safetensors + processor); `extra` maps file names to JSON objects."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    processor.save_pretrained(path)
    for filename, obj in (extra or {}).items():
        write_json(path / filename, obj)
    return path


def _conv_as_matmul(conv: torch.nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """`conv(x)` for x `[N, C, T, P, P]` exactly one kernel in size, as one matrix product -> `[N, E, 1, 1, 1]`.

    A still image fills the T temporal slices of every patch with the same frame (Qwen's processor repeats
    it): then `W · x = (Σ_t W_t) · frame`, a product T times smaller."""
    if tuple(x.shape[2:]) != tuple(conv.kernel_size):
        return torch.nn.Conv3d.forward(conv, x)
    weight = conv.weight
    if x.shape[2] > 1 and torch.equal(x, x[:, :, :1].expand_as(x)):
        weight, x = weight.sum(2), x[:, :, 0]
    out = torch.nn.functional.linear(x.reshape(x.shape[0], -1), weight.reshape(conv.out_channels, -1), conv.bias)
    return out.view(x.shape[0], conv.out_channels, 1, 1, 1)


def patch_embedding_as_matmul(model: torch.nn.Module) -> int:
    """Run the vision patch embedding (a Conv3d whose kernel equals its stride, applied to single patches) as
    the matrix product it is: on CPU, torch's slow_conv3d takes ~5x the time of the product (the ViT's largest
    single cost in tiny training), and a still image's repeated frame is multiplied once. Same weights, same
    result up to float rounding (~1e-6). Returns how many modules were switched."""
    switched = 0
    for module in model.modules():
        if (isinstance(module, torch.nn.Conv3d) and module.kernel_size == module.stride
                and module.padding == (0, 0, 0) and module.groups == 1 and module.dilation == (1, 1, 1)):
            module.forward = types.MethodType(_conv_as_matmul, module)
            switched += 1
    return switched
