"""Independent re-implementations of published Qwen-VL embedders' encode paths: the reference side of parity tests.

Each family builds its prompt string as the authors' code does, calls the Hugging Face processor the way they
call it, runs a plain forward of an untouched model (`model.model`: the vision tower scattered into the token
embeddings, then the text decoder, whose output is the final-RMSNorm state) with the attention they trained
with and the position ids their transformers (< 4.52) computed, then reads / pools and L2-normalises.
Items are encoded one at a time (their results do not depend on padding: causal or padding-masked attention,
positions counted over attended tokens). Nothing here imports `analysis.presets`, `analysis.inputs` or
`analysis.embed`.

`REFERENCES[name](model, processor, items, side, **options)` -> float32 `[N, d]` numpy, in input order.
Items need `.text`, `.instruction`, `.has_image` and `.load_image()` (`analysis.data.items.Item`).
"""

from __future__ import annotations

import math
import unicodedata

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IMAGE_PAD = "<|image_pad|>"
VISION_BLOCK = "<|vision_start|><|image_pad|><|vision_end|>"
TOKEN = 28 * 28  # pixels per merged image token


def legacy_positions(input_ids: torch.Tensor, image_grid_thw: torch.Tensor | None, config) -> torch.Tensor:
    """M-RoPE position ids of one unpadded sequence as transformers < 4.52 computed them: `[L]` -> `[3, 1, L]`.

    Re-implements `Qwen2VLForConditionalGeneration.get_rope_index` as vendored in TIGER-AI-Lab/VLM2Vec
    (src/model/vlm_backbone/qwen2_vl/modeling_qwen2_vl.py) and haon-chen/MoCa (Qwen2_5ForEmbedding.get_rope_index):
    an image counts only where `<|image_pad|>` directly follows `<|vision_start|>`; then text runs get 1-D
    positions and the image's tokens (t, h, w) offsets (t = 0 for a still image), the text after it resuming
    at the image's largest position + 1. With no such image every token gets its index on all three axes.
    """
    ids = input_ids.tolist()
    length = len(ids)
    n_images = sum(1 for a, b in zip(ids, ids[1:]) if a == config.vision_start_token_id and b == config.image_token_id)
    if image_grid_thw is None or n_images == 0:
        return torch.arange(length).view(1, 1, -1).expand(3, 1, -1).clone()
    merge = config.vision_config.spatial_merge_size
    chunks, start, offset = [], 0, 0
    for k in range(n_images):
        end = ids.index(config.image_token_id, start)
        t, h, w = (int(v) for v in image_grid_thw[k])
        h, w = h // merge, w // merge
        chunks.append(torch.arange(end - start).expand(3, -1) + offset)
        grid = torch.stack([
            torch.arange(t).view(-1, 1, 1).expand(t, h, w).flatten(),
            torch.arange(h).view(1, -1, 1).expand(t, h, w).flatten(),
            torch.arange(w).view(1, 1, -1).expand(t, h, w).flatten(),
        ])
        chunks.append(grid + offset + end - start)
        offset = int(chunks[-1].max()) + 1
        start = end + t * h * w
    chunks.append(torch.arange(length - start).expand(3, -1) + offset)
    return torch.cat(chunks, dim=1).view(3, 1, length)


def one_d_positions(length: int) -> torch.Tensor:
    """`[3, 1, L]`: the token index on every axis (a text decoder called without position ids)."""
    return torch.arange(length).view(1, 1, -1).expand(3, 1, -1).clone()


@torch.no_grad()
def final_states(model, inputs: dict, positions: torch.Tensor, bidirectional: bool) -> torch.Tensor:
    """Final-norm hidden states `[L, d]` of one sequence.

    Causal: the 2-D attention mask (Hugging Face adds the causal part). Bidirectional: a 4-D additive mask of
    zeros over the sequence (every token sees every token), as a non-causal attention with no padding computes.
    """
    ids = inputs["input_ids"]
    mask = inputs["attention_mask"]
    if bidirectional:
        dtype = next(model.parameters()).dtype
        mask = torch.zeros(1, 1, ids.shape[1], ids.shape[1], dtype=dtype)
    out = model.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                      pixel_values=inputs.get("pixel_values"), image_grid_thw=inputs.get("image_grid_thw"))
    return out.last_hidden_state[0].float()


def _size(min_tokens: int, max_tokens: int) -> dict:
    return {"size": {"shortest_edge": min_tokens * TOKEN, "longest_edge": max_tokens * TOKEN}}


def _encode(processor, prompt: str, image: Image.Image | None, **image_kwargs) -> dict:
    if image is None:
        return processor(text=[prompt], return_tensors="pt")
    return processor(text=[prompt], images=[image], return_tensors="pt", **image_kwargs)


def _normalise(rows: list[torch.Tensor]) -> np.ndarray:
    return F.normalize(torch.stack(rows), dim=-1).numpy().astype(np.float32)


# --- VLM2Vec / B3 / CoCoA: MMEB prompts with a bare <|image_pad|> ---------------------------------------

def vlm2vec_prompt(item, side: str, candidate_prefix: bool = False) -> str:
    """The MMEB-eval string for a Qwen2-VL VLM2Vec model.

    TIGER-AI-Lab/VLM2Vec src/model/processor.py `process_input_text` (image token + " " + instruction
    [+ " " + text]) and the V2 eval datasets (src/data/eval_dataset/image_cls_dataset.py, image_qa_dataset.py,
    image_t2i_eval.py `data_prepare`): the instruction keeps the "\\n" that followed `<|image_1|>`, `" \\n"`
    becomes `"\\n"` and `"\\n"` is appended. Text queries are `instruction + " " + text + "\\n"`; text candidates
    are the text as is (B3 with --tgt_prefix_mod: prefix + text, `candidate_prefix`).
    """
    text, instruction = item.text, item.instruction
    if item.has_image:
        prompt = "\n" + instruction
        if text:
            prompt = prompt + " " + text
        return (IMAGE_PAD + " " + prompt).replace(" \n", "\n") + "\n"
    if side == "query":
        return instruction + " " + text + "\n"
    return instruction + " " + text if candidate_prefix and instruction else text


def _last_token(model, processor, items, side, *, prompt_fn, image_kwargs, append_id=None, bidirectional=False,
                resize_to=None) -> np.ndarray:
    rows = []
    for item in items:
        image = item.load_image()
        if image is not None and resize_to is not None:
            image = image.resize(resize_to)
        inputs = _encode(processor, prompt_fn(item, side), image, **image_kwargs)
        if append_id is not None:
            inputs["input_ids"] = torch.cat([inputs["input_ids"], torch.tensor([[append_id]])], dim=1)
            inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones(1, 1, dtype=torch.long)], 1)
        positions = legacy_positions(inputs["input_ids"][0], inputs.get("image_grid_thw"), model.config)
        rows.append(final_states(model, inputs, positions, bidirectional)[-1])
    return _normalise(rows)


def vlm2vec(model, processor, items, side: str = "query") -> np.ndarray:
    """VLM2Vec (Qwen2-VL, V2 eval): last token, causal, 1-D positions (bare image token), L2.

    TIGER-AI-Lab/VLM2Vec src/model/model.py MMEBModel.encode_input / `_pooling` ('eos': the last attended
    token; eval scripts pass --normalize true); src/model/processor.py `Qwen2_VL_process_fn` (one
    `processor(text=[text], images=[image])` call per input) and `load_processor` (size shortest_edge 28*28*4,
    longest_edge 28*28*1280 from src/arguments.py resize_min/max_pixels).
    """
    return _last_token(model, processor, items, side, prompt_fn=vlm2vec_prompt, image_kwargs=_size(4, 1280))


def b3(model, processor, items, side: str = "query") -> np.ndarray:
    """B3 (raghavlite/B3): VLM2Vec-V1 strings, text candidates prefixed, last token, causal, 1-D, L2.

    raghavlite/B3 eval_mmeb.py (POS_MOD_DICT, --tgt_prefix_mod: `mod_instruction + text` in
    src/data/dataset/mmeb_dataset.py EvalDataset.__init__), src/model/processor.py load_processor
    (image_processor.min_pixels 28*28*4, max_pixels 28*28*1280), src/model/model.py `_pooling` ('eos').
    The item's instruction is the prefix without its trailing space.
    """
    return _last_token(model, processor, items, side, image_kwargs=_size(4, 1280),
                       prompt_fn=lambda item, s: vlm2vec_prompt(item, s, candidate_prefix=True))


def cocoa(model, processor, items, side: str = "query", end_token_id: int = 151643) -> np.ndarray:
    """CoCoA: the VLM2Vec string, one end token appended and read, bidirectional, 1-D positions, L2.

    Fmajor77/CoCoA src/collator.py `process_vlm_inputs` (insert_eos: `input_id + [eos_token_id]` after the
    processor's ids; the function default 151643, src/arguments.py ModelArguments.eos_token_id 151645),
    src/model.py `_pooling` ('last'), vendored src/vlm_backbone/qwen2_vl/modeling_qwen2_vl.py (every attention
    class `is_causal = False`, `_update_causal_mask` masks padding only), src/model_utils.py vlm_image_tokens
    (bare `<|image_pad|>`), src/dataset.py `_resize_image` ('mid': 672x672) with the processor's own bounds.
    """
    return _last_token(model, processor, items, side, prompt_fn=vlm2vec_prompt, image_kwargs={},
                       append_id=end_token_id, bidirectional=True, resize_to=(672, 672))


# --- MoCa: vision block, bidirectional, mean pooling -------------------------------------------------------

def moca_prompt(item, side: str) -> str:
    """MMEB-eval string with `<|image_1|>` -> the vision block (haon-chen/MoCa src/dataset.py EvalDataset,
    src/model_utils.py vlm_image_tokens[QWEN2_5_VL]): `<block>\\n{instruction} {text}\\n`; text queries
    `{instruction} {text}\\n`; text candidates as is."""
    if item.has_image:
        body = item.instruction + (" " + item.text if item.text else "")
        return VISION_BLOCK + "\n" + body + "\n"
    return item.instruction + " " + item.text + "\n" if side == "query" else item.text


def moca(model, processor, items, side: str = "query") -> np.ndarray:
    """MoCa: mean of the final-norm states over every attended token (image included), bidirectional, M-RoPE, L2.

    haon-chen/MoCa src/vlm_backbone/qwen2_5_vl_embed/qwen2_5_vl_embed.py Qwen2_5ForEmbedding (`post_init`:
    `is_causal = False`; `forward`: `MeanPooling(outputs[0], attention_mask)`), src/model.py encode_input
    (`F.normalize`), eval.py (AutoProcessor min_pixels 256*28*28, max_pixels 1024*28*28).
    """
    rows = []
    for item in items:
        inputs = _encode(processor, moca_prompt(item, side), item.load_image(), **_size(256, 1024))
        positions = legacy_positions(inputs["input_ids"][0], inputs.get("image_grid_thw"), model.config)
        rows.append(final_states(model, inputs, positions, bidirectional=True).mean(0))
    return _normalise(rows)


# --- GME: chat prompt, appended <|endoftext|>, text decoder called directly --------------------------------

GME_DEFAULT_INSTRUCTION = "You are a helpful assistant."


def gme_prompt(item, side: str) -> str:
    """gme_inference.py GmeQwen2VL.embed: system = the query's instruction (candidates, or none given: the
    default), user = vision block (with an image) + text, then `<|im_start|>assistant\\n<|endoftext|>`."""
    system = item.instruction if side == "query" and item.instruction else GME_DEFAULT_INSTRUCTION
    user = (VISION_BLOCK if item.has_image else "") + item.text
    return (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
            f"<|im_start|>assistant\n<|endoftext|>")


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 4 * TOKEN,
                 max_pixels: int = 16384 * TOKEN) -> tuple[int, int]:
    """qwen_vl_utils `smart_resize` as gme_inference.py copies it: sides rounded to `factor`, area in bounds."""
    h, w = max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def fetch_image(image: Image.Image) -> Image.Image:
    """gme_inference.py `fetch_image` / qwen_vl_utils: RGB, PIL-resized to `smart_resize` (4..16384 tokens)."""
    image = image.convert("RGB")
    h, w = smart_resize(image.height, image.width)
    return image.resize((w, h))


def gme(model, processor, items, side: str = "query") -> np.ndarray:
    """GME: the appended `<|endoftext|>` (the last token) read, causal, 1-D positions, L2.

    Alibaba-NLP gme-Qwen2-VL gme_inference.py (read in TIGER-AI-Lab/VLM2Vec
    src/model/baseline_backbone/gme/gme_inference.py): `embed` (prompt, `processor(text=..., images=...,
    padding=True)` with min_pixels 256*28*28, max_pixels 1280*28*28), `forward` (`self.base.model(input_ids=None,
    inputs_embeds=..., position_ids=None)`: the text decoder directly, so positions are token indices; last
    attended token; `normalize`).
    """
    rows = []
    for item in items:
        image = item.load_image()
        inputs = _encode(processor, gme_prompt(item, side), None if image is None else fetch_image(image),
                         **_size(256, 1280))
        positions = one_d_positions(inputs["input_ids"].shape[1])
        rows.append(final_states(model, inputs, positions, bidirectional=False)[-1])
    return _normalise(rows)


# --- LamRA-Ret: chat template, read the token before <emb> -------------------------------------------------

EMB_TOKEN = "<emb>"


def lamra_messages(item, side: str) -> list[dict]:
    """LamRA's messages (clides/pyserini pyserini/encode/optional/_lamra.py LamRABaseEncoder.format_message):
    user = [image,] `{instruction} {text}` + "\\nSummarize above <modality> in one word: ", assistant = "<emb>.".
    Queries carry their instruction (LamRAQueryEncoder); candidates none (LamRADocumentEncoder)."""
    modality = "image and sentence" if item.has_image and item.text else "image" if item.has_image else "sentence"
    summary = f"\nSummarize above {modality} in one word: "
    instruction = item.instruction if side == "query" else ""
    head = " ".join(s for s in (instruction, item.text) if s)
    content = ([{"type": "image"}] if item.has_image else []) + [{"type": "text", "text": head + summary}]
    answer = [{"type": "text", "text": "<emb>."}]
    return [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]


def lamra(model, processor, items, side: str = "query") -> np.ndarray:
    """LamRA-Ret: the state of the token before the first `<emb>`, causal, M-RoPE (vision block), L2.

    clides/pyserini pyserini/encode/optional/_lamra.py (a port of code-kunkun/LamRA's encoder, whose repository
    is not reachable here): `qwen2vl_process` (`apply_chat_template(..., add_generation_prompt=True)`,
    qwen_vl_utils `process_vision_info` resizing as `fetch_image`, the processor's own bounds),
    `get_embed_feature` (`hidden_states[-1][i, argmax(ids == emb) - 1]`), full model forward.
    """
    emb_id = processor.tokenizer.convert_tokens_to_ids(EMB_TOKEN)
    rows = []
    for item in items:
        prompt = processor.apply_chat_template(lamra_messages(item, side), tokenize=False, add_generation_prompt=True)
        image = item.load_image()
        inputs = _encode(processor, prompt, None if image is None else fetch_image(image))
        ids = inputs["input_ids"][0]
        read = int(torch.argmax((ids == emb_id).int())) - 1
        positions = legacy_positions(ids, inputs.get("image_grid_thw"), model.config)
        rows.append(final_states(model, inputs, positions, bidirectional=False)[read])
    return _normalise(rows)


# --- Qwen3-VL-Embedding: chat with the instruction as system message, last token, Qwen3-VL ------------------

QWEN3VL_DEFAULT_INSTRUCTION = "Represent the user's input."
QWEN3_FACTOR = 32  # qwen_vl_utils: image_patch_size 16 x spatial merge 2


def qwen3vl_conversation(item, side: str) -> list[dict]:
    """QwenLM/Qwen3-VL-Embedding src/models/qwen3_vl_embedding.py `Qwen3VLEmbedder.format_model_input`: system =
    the instruction, stripped and ended with "." unless its last character is punctuation (Unicode P*), else the
    default; user = the image (with its 4..1800-token pixel bounds), then the text. Candidates carry no
    instruction (src/evaluation/mmeb_v2/data/datasets/image_t2i_eval.py leaves it commented out)."""
    instruction = (item.instruction if side == "query" else "").strip()
    if instruction and not unicodedata.category(instruction[-1]).startswith("P"):
        instruction += "."
    content = []
    if item.has_image:
        content.append({"type": "image", "image": item.load_image(), "min_pixels": 4 * QWEN3_FACTOR ** 2,
                        "max_pixels": 1800 * QWEN3_FACTOR ** 2})
    if item.text:
        content.append({"type": "text", "text": item.text})
    return [{"role": "system", "content": [{"type": "text", "text": instruction or QWEN3VL_DEFAULT_INSTRUCTION}]},
            {"role": "user", "content": content}]


def qwen3_fetch_image(part: dict) -> Image.Image:
    """qwen_vl_utils `fetch_image(part, image_patch_size=16)` (QwenLM/Qwen3-VL qwen-vl-utils vision_process.py):
    RGB (RGBA over white), PIL-resized to `smart_resize(factor 32, the part's min / max pixels)`."""
    image = part["image"]
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.split()[3])
        image = background
    else:
        image = image.convert("RGB")
    h, w = smart_resize(image.height, image.width, QWEN3_FACTOR, part["min_pixels"], part["max_pixels"])
    return image.resize((w, h))


def qwen3vl_embedding(model, processor, items, side: str = "query") -> np.ndarray:
    """Qwen3-VL-Embedding: the last token of the chat prompt (the "\\n" after `assistant`), causal, M-RoPE, L2.

    QwenLM/Qwen3-VL-Embedding src/models/qwen3_vl_embedding.py: `_preprocess_inputs`
    (`apply_chat_template(..., add_generation_prompt=True, tokenize=False)`, `process_vision_info(...,
    image_patch_size=16)`, `processor(text=..., images=..., do_resize=False, padding=True)` right-padded),
    `Qwen3VLForEmbedding.forward` (`Qwen3VLModel` without position ids: transformers >= 4.57's
    `Qwen3VLModel.get_rope_index`, which places an image that follows `<|vision_start|>` as `legacy_positions`
    does), `_pooling_last` (last attended token), `process` (`F.normalize`).
    """
    rows = []
    for item in items:
        conversation = qwen3vl_conversation(item, side)
        prompt = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        images = [qwen3_fetch_image(part) for part in conversation[1]["content"] if part["type"] == "image"]
        inputs = (processor(text=[prompt], images=images, do_resize=False, return_tensors="pt") if images
                  else processor(text=[prompt], return_tensors="pt"))
        positions = legacy_positions(inputs["input_ids"][0], inputs.get("image_grid_thw"), model.config)
        rows.append(final_states(model, inputs, positions, bidirectional=False)[-1])
    return _normalise(rows)


REFERENCES = {"vlm2vec": vlm2vec, "b3": b3, "cocoa": cocoa, "moca": moca, "gme": gme, "lamra": lamra,
              "qwen3vl-embedding": qwen3vl_embedding}
PROMPTS = {"vlm2vec": vlm2vec_prompt, "b3": lambda item, side: vlm2vec_prompt(item, side, candidate_prefix=True),
           "cocoa": vlm2vec_prompt, "moca": moca_prompt, "gme": gme_prompt}
