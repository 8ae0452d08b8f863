"""Real-width random-weight Qwen2-VL-2B / Qwen2.5-VL-3B checkpoints (2 text layers, 2 vision blocks) for tests.

Widths, heads, vocabulary size, RoPE and tied embeddings are the published configs'; only depth is cut. The
tokenizer is a word-level stand-in with Qwen's token ids: filler entries up to 151642, then Qwen's 14 special
tokens at 151643-151656 in Qwen's order, then LamRA's `<emb>` at 151657 (an ordinary added token, as LamRA's
`tokenizer.add_tokens` makes it). Newlines are tokens, so prompt layouts stay visible in the ids. The image
processor is the default `Qwen2VLImageProcessor` (a 640x427 photograph -> 345 image tokens) and the processor
carries Qwen2-VL's chat template. `write_adapter` writes a PEFT LoRA / DoRA directory with non-zero weights.

Qwen3-VL-2B (`write_qwen3_checkpoint`): the published Qwen3-VL-2B-Instruct widths (text 2048 / 16 heads / 8 kv
heads / head_dim 128 / 6144, vision 1024 / 16 heads / 4096 -> 2048, 16-pixel patches, 2304 learned positions,
interleaved M-RoPE [24, 20, 20], rope_theta 5e6, tied embeddings), 2 text layers and 2 vision blocks, each block
feeding one DeepStack level (the published model has 3, from blocks 5 / 11 / 17 of 24). Its tokenizer adds
Qwen3's 12 tokens at 151657-151668 (`<tool_call>` .. `</think>`) after the same 14 specials, its processor has
Qwen3-VL's preprocessor settings (patch 16, merge 2, mean / std 0.5, 65536..16777216 pixels) and a Qwen3-VL
chat template reduced to the branches an embedder reaches (no tools).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
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
from transformers.initialization import no_init_weights

from analysis.data.vocabulary import WORDS

QWEN_SPECIAL_TOKENS = (  # ids 151643.. in Qwen2's tokenizer order
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
FIRST_SPECIAL_ID = 151643
TOKEN_IDS = {tok: FIRST_SPECIAL_ID + i for i, tok in enumerate(QWEN_SPECIAL_TOKENS)}
EMB_TOKEN, EMB_TOKEN_ID = "<emb>", 151657
UNK_TOKEN = "<|unk|>"
VOCAB_SIZE = 151936
BACKBONES = ("qwen2-vl-2b", "qwen2.5-vl-3b")

# Words of the presets' prompts, MMEB-style instructions and the tests' texts, on top of the synthetic world's.
PROMPT_WORDS = (
    "represent", "given", "following", "me", "everyday", "that", "matches", "summarize", "sentence", "word",
    "you", "helpful", "assistant", "system", "user", "class", "label", "for", "classification", "retrieval",
    "flower", "temple", "building", "photograph", "cat", "dog", "tiger", "s", "'", "input", "retrieve",
    "relevant", "document", "query", "wikipedia", "news", "article", "from", "by", "be", "used", "based",
)

QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over 151,658 entries with Qwen's special-token ids; lower-cases.

    Like Qwen's BPE it keeps a word's leading space (" cat" and "cat" are different tokens), newlines and runs
    of spaces, so a prompt's exact whitespace shows in its ids.
    """
    words = tuple(dict.fromkeys(WORDS + PROMPT_WORDS))
    pieces = ["\n", " ", "  "] + [p for w in words for p in (w, " " + w)]
    vocab = {UNK_TOKEN: 0, **{p: i + 1 for i, p in enumerate(dict.fromkeys(pieces))}}
    vocab.update({f"<filler{i}>": i for i in range(len(vocab), FIRST_SPECIAL_ID)})
    vocab.update(TOKEN_IDS)
    vocab[EMB_TOKEN] = EMB_TOKEN_ID
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r" ?\w+| ?[^\w\s]|\n| +"), behavior="removed", invert=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token=UNK_TOKEN, pad_token="<|endoftext|>", eos_token="<|im_end|>",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                              "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"},
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL_TOKENS)})
    tokenizer.add_tokens([EMB_TOKEN])
    tokenizer.chat_template = QWEN2_VL_CHAT_TEMPLATE
    return tokenizer


def build_processor(backbone: str, tokenizer: PreTrainedTokenizerFast | None = None):
    """The backbone's processor: default image processor, Qwen2-VL chat template."""
    cls = Qwen2VLProcessor if backbone == "qwen2-vl-2b" else Qwen2_5_VLProcessor
    return cls(image_processor=Qwen2VLImageProcessor(), tokenizer=tokenizer or build_tokenizer(),
               video_processor=Qwen2VLVideoProcessor(), chat_template=QWEN2_VL_CHAT_TEMPLATE)


def config(backbone: str, text_layers: int = 2, vision_depth: int = 2):
    """Published Qwen2-VL-2B-Instruct / Qwen2.5-VL-3B-Instruct config, depth cut."""
    ids = dict(image_token_id=TOKEN_IDS["<|image_pad|>"], video_token_id=TOKEN_IDS["<|video_pad|>"],
               vision_start_token_id=TOKEN_IDS["<|vision_start|>"], vision_end_token_id=TOKEN_IDS["<|vision_end|>"])
    text = dict(vocab_size=VOCAB_SIZE, num_hidden_layers=text_layers, max_window_layers=text_layers,
                num_key_value_heads=2, hidden_act="silu", rms_norm_eps=1e-6, use_sliding_window=False,
                sliding_window=32768, bos_token_id=TOKEN_IDS["<|endoftext|>"], eos_token_id=TOKEN_IDS["<|im_end|>"],
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]})
    vision = dict(depth=vision_depth, num_heads=16, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    if backbone == "qwen2-vl-2b":
        text.update(hidden_size=1536, intermediate_size=8960, num_attention_heads=12, max_position_embeddings=32768)
        vision.update(embed_dim=1280, hidden_size=1536, mlp_ratio=4, hidden_act="quick_gelu")
        cfg = Qwen2VLConfig(text_config=text, vision_config=vision, **ids)
        cfg.architectures = ["Qwen2VLForConditionalGeneration"]
    elif backbone == "qwen2.5-vl-3b":
        text.update(hidden_size=2048, intermediate_size=11008, num_attention_heads=16, max_position_embeddings=128000)
        vision.update(hidden_size=1280, intermediate_size=3420, out_hidden_size=2048, hidden_act="silu",
                      window_size=112, fullatt_block_indexes=[vision_depth - 1], tokens_per_second=2)
        cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
        cfg.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    else:
        raise ValueError(f"unknown backbone {backbone!r}; valid: {', '.join(BACKBONES)}")
    cfg.tie_word_embeddings = True
    return cfg


def build_model(backbone: str, seed: int = 0):
    """Random float32 model of `config(backbone)`, eval mode.

    Weights are uniform with std 0.02 (norm scales 1 +- 0.05, biases included) instead of Hugging Face's normal
    init: drawing 540M normals costs ~15 s on one core, uniforms ~3 s.
    """
    cfg = config(backbone)
    cls = Qwen2VLForConditionalGeneration if backbone == "qwen2-vl-2b" else Qwen2_5_VLForConditionalGeneration
    with no_init_weights():
        model = cls._from_config(cfg, dtype=torch.float32)
    model.tie_weights()
    gen = torch.Generator().manual_seed(seed)
    half_width = 0.02 * 3 ** 0.5
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or ".ln_" in name:
                param.uniform_(0.95, 1.05, generator=gen) if name.endswith("weight") else param.zero_()
            else:
                param.uniform_(-half_width, half_width, generator=gen)
    return model.eval()


def write_checkpoint(backbone: str, path: str | Path, seed: int = 0, adapters: bool = False) -> dict[str, Path]:
    """Save a real-width checkpoint at `path`; with `adapters`, also LoRA and DoRA directories beside it.

    Returns {"base": path[, "lora": ..., "dora": ...]}.
    """
    path = Path(path)
    model = build_model(backbone, seed)
    model.save_pretrained(path, safe_serialization=True)
    build_processor(backbone).save_pretrained(path)
    out = {"base": path}
    if adapters:
        out["lora"] = write_adapter(model, path, path.with_name(path.name + "-lora"), use_dora=False, seed=seed + 1)
        out["dora"] = write_adapter(model, path, path.with_name(path.name + "-dora"), use_dora=True, seed=seed + 2)
    return out


def write_adapter(model, base_dir: str | Path, path: str | Path, use_dora: bool = False, seed: int = 1) -> Path:
    """PEFT LoRA (or DoRA) r8 directory on the text decoder's projections, every adapter weight non-zero.

    `model` is left as it was (the adapter layers are unloaded); `base_model_name_or_path` is `base_dir`.
    """
    cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, use_dora=use_dora,
                     target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)")
    peft_model = get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
            elif "lora_magnitude_vector" in name:
                param.mul_(1.0 + 0.1 * torch.rand(param.shape, generator=gen))
    peft_model.peft_config["default"].base_model_name_or_path = str(base_dir)
    path = Path(path)
    peft_model.save_pretrained(path, safe_serialization=True)
    peft_model.unload()
    assert json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base_dir)
    return path


def write_all(root: str | Path, adapters: bool = True) -> dict[str, Path]:
    """Both backbones under `root`; LoRA / DoRA adapters for Qwen2-VL-2B (the adapter families' backbone).

    Keys: "qwen2-vl-2b", "qwen2.5-vl-3b" and, with `adapters`, "qwen2-vl-2b-lora", "qwen2-vl-2b-dora".
    """
    root = Path(root)
    out = {}
    for backbone in BACKBONES:
        written = write_checkpoint(backbone, root / backbone, adapters=adapters and backbone == "qwen2-vl-2b")
        out.update({backbone if kind == "base" else f"{backbone}-{kind}": p for kind, p in written.items()})
    return out


# --- Qwen3-VL-2B ------------------------------------------------------------------------------------------

QWEN3_BACKBONE = "qwen3-vl-2b"
QWEN3_ADDED_TOKENS = (  # ids 151657.. in Qwen3's tokenizer (tokenizer_config.json added_tokens_decoder)
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>",
)
QWEN3_FIRST_ADDED_ID = 151657

# Qwen3-VL-Instruct's chat template without its tool branches: a system turn only when given (its content a
# string or a list of text parts), user turns of images / videos / text parts, assistant turns of text.
QWEN3_VL_CHAT_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\n' }}"
    "{%- if messages[0].content is string %}{{- messages[0].content }}"
    "{%- else %}{%- for part in messages[0].content %}{%- if 'text' in part %}{{- part.text }}{%- endif %}"
    "{%- endfor %}{%- endif %}{{- '<|im_end|>\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if message.role == 'user' or message.role == 'assistant' %}"
    "{{- '<|im_start|>' + message.role + '\n' }}"
    "{%- if message.content is string %}{{- message.content }}"
    "{%- else %}{%- for part in message.content %}"
    "{%- if part.type == 'image' or 'image' in part or 'image_url' in part %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part.type == 'video' or 'video' in part %}{{- '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in part %}{{- part.text }}{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
QWEN3_IMAGE_PROCESSOR = dict(patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=[0.5, 0.5, 0.5],
                             image_std=[0.5, 0.5, 0.5], size={"shortest_edge": 65536, "longest_edge": 16777216})


def build_qwen3_tokenizer() -> PreTrainedTokenizerFast:
    """`build_tokenizer`'s words, fillers and 14 specials, then Qwen3's 12 added tokens at 151657-151668."""
    base = build_tokenizer()
    vocab = {tok: i for tok, i in base.get_vocab().items() if i < QWEN3_FIRST_ADDED_ID}
    vocab.update({tok: QWEN3_FIRST_ADDED_ID + i for i, tok in enumerate(QWEN3_ADDED_TOKENS)})
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    core.normalizer = base.backend_tokenizer.normalizer
    core.pre_tokenizer = base.backend_tokenizer.pre_tokenizer
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token=UNK_TOKEN, pad_token="<|endoftext|>", eos_token="<|im_end|>",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                              "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"},
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL_TOKENS)})
    tokenizer.add_tokens(list(QWEN3_ADDED_TOKENS))
    tokenizer.chat_template = QWEN3_VL_CHAT_TEMPLATE
    return tokenizer


def build_qwen3_processor(tokenizer: PreTrainedTokenizerFast | None = None) -> Qwen3VLProcessor:
    """Qwen3-VL's processor settings (a 640x427 photograph -> 416x640 -> 260 image tokens), its chat template."""
    return Qwen3VLProcessor(image_processor=Qwen2VLImageProcessor(**QWEN3_IMAGE_PROCESSOR),
                            tokenizer=tokenizer or build_qwen3_tokenizer(), video_processor=Qwen3VLVideoProcessor(),
                            chat_template=QWEN3_VL_CHAT_TEMPLATE)


def qwen3_config(text_layers: int = 2, vision_depth: int = 2) -> Qwen3VLConfig:
    """Published Qwen3-VL-2B-Instruct config, depth cut: DeepStack from vision blocks 5 / 11 / 17 where they
    exist, else from every kept block."""
    text = dict(vocab_size=VOCAB_SIZE, hidden_size=2048, intermediate_size=6144, num_hidden_layers=text_layers,
                num_attention_heads=16, num_key_value_heads=8, head_dim=128, hidden_act="silu", rms_norm_eps=1e-6,
                max_position_embeddings=262144, attention_bias=False, bos_token_id=TOKEN_IDS["<|endoftext|>"],
                eos_token_id=TOKEN_IDS["<|im_end|>"],
                rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20],
                                 "mrope_interleaved": True})
    vision = dict(depth=vision_depth, hidden_size=1024, intermediate_size=4096, num_heads=16, patch_size=16,
                  spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=2048, num_position_embeddings=2304,
                  hidden_act="gelu_pytorch_tanh",
                  deepstack_visual_indexes=[i for i in (5, 11, 17) if i < vision_depth] or list(range(vision_depth)))
    cfg = Qwen3VLConfig(text_config=text, vision_config=vision, image_token_id=TOKEN_IDS["<|image_pad|>"],
                        video_token_id=TOKEN_IDS["<|video_pad|>"],
                        vision_start_token_id=TOKEN_IDS["<|vision_start|>"],
                        vision_end_token_id=TOKEN_IDS["<|vision_end|>"])
    cfg.architectures = ["Qwen3VLForConditionalGeneration"]
    cfg.tie_word_embeddings = True
    return cfg


def build_qwen3_model(seed: int = 0) -> Qwen3VLForConditionalGeneration:
    """Random float32 model of `qwen3_config()`, eval mode, uniform weights as `build_model` draws them."""
    with no_init_weights():
        model = Qwen3VLForConditionalGeneration._from_config(qwen3_config(), dtype=torch.float32)
    model.tie_weights()
    gen = torch.Generator().manual_seed(seed)
    half_width = 0.02 * 3 ** 0.5
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.95, 1.05, generator=gen) if name.endswith("weight") else param.zero_()
            else:
                param.uniform_(-half_width, half_width, generator=gen)
    return model.eval()


def write_qwen3_checkpoint(path: str | Path, seed: int = 0) -> Path:
    """Save the real-width Qwen3-VL-2B stand-in (weights and processor) at `path`."""
    path = Path(path)
    build_qwen3_model(seed).save_pretrained(path, safe_serialization=True)
    build_qwen3_processor().save_pretrained(path)
    return path
