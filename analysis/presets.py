"""Embedder presets: how each published Qwen-VL embedder family turns an input into its embedding.

A published embedding depends on more than weights: the prompt around the input, the token whose state
is read (or the pooling), the attention the model was trained with and the position ids it ran with. A
`Preset` fixes all of them, declaratively, so a capture of a published checkpoint studies the input the
model was trained on. Each family's docstring names the public source it follows.

Prompts are format strings over three slots: `{image}` (the family's image block, expanded to one
`<|image_pad|>` per image token by `analysis.inputs.encode`), `{instruction}` and `{text}`. Every
character of a prompt belongs to a *segment* (template, instruction, image, text), so every token keeps
its provenance; the read token is the `EOS` role, everything before it `A`.

Position schemes (`positions`):
  "mrope"  M-RoPE as transformers 5 builds it: image tokens get 2-D (height, width) positions.
  "1d"     one position per token, equal across the three M-RoPE axes: what transformers < 4.52 gave a
           prompt whose `<|image_pad|>` does not follow `<|vision_start|>` (VLM2Vec, CoCoA), and what a
           text decoder called without position ids computes (GME).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, replace
from string import Formatter

from analysis.errors import UsageError
from analysis.masks import MASK_TYPES

IMAGE_PAD, VISION_START, VISION_END = "<|image_pad|>", "<|vision_start|>", "<|vision_end|>"
BARE_IMAGE = IMAGE_PAD
VISION_BLOCK = f"{VISION_START}{IMAGE_PAD}{VISION_END}"
ENDOFTEXT, IM_END = "<|endoftext|>", "<|im_end|>"
# What each token position is: prompt scaffolding, the task instruction, the vision markers
# (`<|vision_start|>` / `<|vision_end|>`), image tokens, the input text, the read token, the target, padding.
SEGMENTS = ("template", "instruction", "vision", "image", "text", "EOS", "B", "PAD")
SIDES = ("query", "candidate")
POSITIONS = ("mrope", "1d")
POOLINGS = ("token", "mean")


@dataclass(frozen=True)
class Prompt:
    """Format strings for one side (query or candidate), with and without an image."""

    with_image: str
    text_only: str
    default_instruction: str = ""
    image_only: str | None = None  # an image without text, where the family words it apart (LamRA)

    def template(self, has_image: bool, *, has_text: bool = True) -> str:
        if has_image and not has_text and self.image_only is not None:
            return self.image_only
        return self.with_image if has_image else self.text_only


@dataclass(frozen=True)
class Preset:
    """One embedder family's encode path.

    query / candidate: the prompts of each side. image_block: what `{image}` stands for (the vision block,
    or a bare `<|image_pad|>`). append: a token appended after the prompt and read (None: the prompt's own
    last token is read). pooling: "token" reads the EOS position, "mean" averages the final-norm states of
    every attended (A and EOS) position. attention: the mask type it was trained with. positions: see the
    module docstring. Image sizing, in the order applied: `fetch_resize` (min, max pixels: a PIL resize to
    Qwen's `smart_resize` size before the processor, as GME's `fetch_image` does), `resize_to` (a fixed PIL
    resize), then the processor with `min_pixels` / `max_pixels` (None keeps the checkpoint's). normalize:
    L2 before cosine. punctuate_instruction: strip the instruction and end it with "." unless it ends in
    punctuation (Qwen3-VL-Embedding). `source` cites the code it follows.
    """

    name: str
    source: str
    query: Prompt
    candidate: Prompt
    image_block: str = VISION_BLOCK
    append: str | None = None
    pooling: str = "token"
    attention: str = "causal"
    positions: str = "mrope"
    fetch_resize: tuple[int, int] | None = None
    resize_to: tuple[int, int] | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    normalize: bool = True
    punctuate_instruction: bool = False

    def __post_init__(self) -> None:
        for value, valid, what in ((self.attention, MASK_TYPES, "attention"), (self.pooling, POOLINGS, "pooling"),
                                   (self.positions, POSITIONS, "positions")):
            if value not in valid:
                raise UsageError(f"preset {self.name!r}: unknown {what} {value!r}; valid: {', '.join(valid)}")

    def prompt(self, side: str) -> Prompt:
        if side not in SIDES:
            raise UsageError(f"unknown side {side!r}; valid: {', '.join(SIDES)}")
        return self.query if side == "query" else self.candidate

    def pieces(self, side: str, instruction: str, text: str, has_image: bool) -> list[tuple[str, str]]:
        """The prompt as `(segment, string)` pieces, in order; `{image}` stays one `<|image_pad|>`.

        An empty slot is dropped with one space beside it (the one after it, else the one before), so
        `"{instruction} {text}"` with no instruction is just the text, as the authors' string joins give.
        """
        prompt = self.prompt(side)
        if self.punctuate_instruction:
            instruction = _punctuated(instruction)
        values = {"image": self.image_block if has_image else "",
                  "instruction": instruction or prompt.default_instruction, "text": text}
        out: list[list[str]] = []
        for literal, slot, _, _ in Formatter().parse(prompt.template(has_image, has_text=bool(text))):
            out.append(["template", literal])
            if slot is None:
                continue
            if slot not in values:
                raise UsageError(f"preset {self.name!r}: unknown prompt slot {{{slot}}}")
            if values[slot]:
                out.append([slot, values[slot]])
            elif out[-1][1].endswith(" "):
                out[-1][1] = out[-1][1][:-1]
            else:
                out.append(["drop-space", ""])
        pieces: list[tuple[str, str]] = []
        for segment, string in out:
            if pieces and pieces[-1][0] == "drop-space":
                pieces.pop()
                string = string[1:] if string.startswith(" ") else string
            pieces.append((segment, string))
        return [(segment, string) for segment, string in pieces if string and segment != "drop-space"]


def _punctuated(instruction: str) -> str:
    """`instruction` stripped, with "." appended unless it ends in punctuation (a Unicode P* character)."""
    instruction = (instruction or "").strip()
    if instruction and not unicodedata.category(instruction[-1]).startswith("P"):
        return instruction + "."
    return instruction


def _same(prompt: str) -> Prompt:
    return Prompt(prompt, prompt)


TOKENS = 28 * 28  # pixels per merged image token of Qwen2-VL / Qwen2.5-VL
QWEN3_TOKENS = 32 * 32  # of Qwen3-VL (16-pixel patches, 2x2 merged)
_QUERY = Prompt("{image}\n{instruction} {text}\n", "{instruction} {text}\n")
_CANDIDATE = Prompt("{image}\n{instruction} {text}\n", "{instruction} {text}")
_CHAT = "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{{image}}{{text}}<|im_end|>\n<|im_start|>assistant\n"
_GME_DEFAULT = "You are a helpful assistant."

PLAIN = Preset(
    name="plain",
    source="cocoa-lens's own layout (analysis.inputs), for checkpoints trained here: "
           "`<|vision_start|><|image_pad|>*n<|vision_end|>{text}<|endoftext|>`, the appended token read.",
    query=Prompt("{image}{text}", "{text}"), candidate=Prompt("{image}{text}", "{text}"),
    append=ENDOFTEXT, attention="bidirectional")

VLM2VEC = Preset(
    name="vlm2vec",
    source="TIGER-AI-Lab/VLM2Vec: src/model/processor.py (process_input_text, VLM_IMAGE_TOKENS, "
           "Qwen2_VL_process_fn), src/data/eval_dataset/image_*_dataset.py data_prepare (V2) and "
           "src/data/dataset/mmeb_dataset.py (V1), src/model/model.py MMEBModel.encode_input / _pooling "
           "('eos': last attended token). Bare `<|image_pad|>`, so transformers < 4.52 ran 1-D positions. "
           "Image tokens 4..1280 (V2's processor bounds; the V1 eval script resizes to 1344x1344 first: "
           "pass resize_to=(1344, 1344) for V1 checkpoints).",
    query=_QUERY, candidate=_CANDIDATE, image_block=BARE_IMAGE, attention="causal", positions="1d",
    min_pixels=4 * TOKENS, max_pixels=1280 * TOKENS)

B3 = replace(
    VLM2VEC, name="b3",
    source="raghavlite/B3: eval_mmeb.py, src/data/dataset/mmeb_dataset.py EvalDataset, src/model/processor.py "
           "(min_pixels 28*28*4, max_pixels 28*28*1280), src/model/model.py _pooling ('eos', last token): a "
           "VLM2Vec-V1 fork, same prompts, read and positions. With --tgt_prefix_mod its text candidates carry a "
           "per-dataset prefix (e.g. 'Represent the class label: '): give it as the candidates' instruction.")

MOCA = Preset(
    name="moca",
    source="haon-chen/MoCa: src/vlm_backbone/qwen2_5_vl_embed/qwen2_5_vl_embed.py Qwen2_5ForEmbedding "
           "(post_init sets is_causal=False: bidirectional, effective under flash-attention-2, emulated here "
           "whatever attention runs; MeanPooling over the attention mask), src/model.py encode_input, "
           "src/dataset.py EvalDataset, eval.py (processor min_pixels 256*28*28, max_pixels 1024*28*28). "
           "Vision block, so M-RoPE positions.",
    query=_QUERY, candidate=_CANDIDATE, pooling="mean", attention="bidirectional", positions="mrope",
    min_pixels=256 * TOKENS, max_pixels=1024 * TOKENS)

GME = Preset(
    name="gme",
    source="Alibaba-NLP/gme-Qwen2-VL-*-Instruct gme_inference.py GmeQwen2VL.embed / forward (read in VLM2Vec's "
           "copy src/model/baseline_backbone/gme/gme_inference.py): chat prompt with the query instruction as "
           "the system message (candidates: the default), `<|endoftext|>` after `assistant\n` read, causal, the "
           "text decoder called without position ids (1-D); fetch_image resizes to smart_resize(4..16384 "
           "tokens) first, then the processor bounds 256..1280 tokens.",
    query=Prompt(_CHAT.format(system="{instruction}"), _CHAT.format(system="{instruction}"), _GME_DEFAULT),
    candidate=_same(_CHAT.format(system=_GME_DEFAULT)), append=ENDOFTEXT, attention="causal", positions="1d",
    fetch_resize=(4 * TOKENS, 16384 * TOKENS), min_pixels=256 * TOKENS, max_pixels=1280 * TOKENS)

COCOA = Preset(
    name="cocoa",
    source="Fmajor77/CoCoA: src/collator.py process_vlm_inputs (insert_eos appends one end token: 151643 "
           "`<|endoftext|>` by the function's default; src/arguments.py ModelArguments says 151645 `<|im_end|>`: "
           "pass append='<|im_end|>'), src/model_utils.py vlm_image_tokens (bare `<|image_pad|>`, so 1-D "
           "positions), vendored src/vlm_backbone/qwen2_vl/modeling_qwen2_vl.py (is_causal=False: "
           "bidirectional), src/model.py _pooling ('last'), images resized to 672x672 ('mid'). The released "
           "eval prompt is missing from the repository; this follows its VLM2Vec-V1 lineage.",
    query=_QUERY, candidate=_CANDIDATE, image_block=BARE_IMAGE, append=ENDOFTEXT, attention="bidirectional",
    positions="1d", resize_to=(672, 672))

def _lamra(with_instruction: bool) -> Prompt:
    """LamRA's user turn: `[image]{instruction} {text}` and a summary request naming what it was given."""
    chat = _CHAT.format(system=_GME_DEFAULT)
    head = "{instruction} {text}" if with_instruction else "{text}"

    def ask(what: str) -> str:
        return chat.replace("{text}", head + f"\nSummarize above {what} in one word: ")

    return Prompt(ask("image and sentence"), ask("sentence"), image_only=ask("image"))


LAMRA = Preset(
    name="lamra",
    source="code-kunkun/LamRA-Ret, read through clides/pyserini pyserini/encode/optional/_lamra.py (a port of "
           "LamRA's encoder; LamRA's own repository was not reachable to verify): the Qwen2-VL chat template, "
           "user = [image] `{instruction} {text}` + '\\nSummarize above <image|sentence|image and sentence> in one "
           "word: ' (candidates without instruction), assistant `<emb>.`; the state of the token before `<emb>` "
           "(the last token of `<|im_start|>assistant\\n`: causal attention makes what follows irrelevant); a "
           "full forward, so M-RoPE; qwen_vl_utils fetch_image sizing.",
    query=_lamra(True), candidate=_lamra(False), attention="causal", positions="mrope",
    fetch_resize=(4 * TOKENS, 16384 * TOKENS))

_QWEN3VL_DEFAULT = "Represent the user's input."
QWEN3VL_EMBEDDING = Preset(
    name="qwen3vl-embedding",
    source="QwenLM/Qwen3-VL-Embedding (Qwen3-VL backbone) src/models/qwen3_vl_embedding.py Qwen3VLEmbedder: "
           "format_model_input (system message = the instruction, stripped and ended with '.' unless it ends in "
           "punctuation, default \"Represent the user's input.\"; user message = the image, then the text), "
           "_preprocess_inputs (apply_chat_template(add_generation_prompt=True); qwen_vl_utils process_vision_info "
           "with image_patch_size=16: fetch_image resizes to smart_resize(factor 32, 4..1800 tokens), then the "
           "processor with do_resize=False), _pooling_last (the last attended token: the '\\n' after "
           "'assistant'), process (L2); Qwen3VLForEmbedding.forward (Qwen3VLModel without position ids: causal, "
           "M-RoPE). Candidates carry no instruction (src/evaluation/mmeb_v2/data/datasets/image_*.py), so theirs "
           "is the default. Needs a Qwen3-VL checkpoint and its chat tokens.",
    query=Prompt(_CHAT.format(system="{instruction}"), _CHAT.format(system="{instruction}"), _QWEN3VL_DEFAULT),
    candidate=_same(_CHAT.format(system=_QWEN3VL_DEFAULT)), attention="causal", positions="mrope",
    fetch_resize=(4 * QWEN3_TOKENS, 1800 * QWEN3_TOKENS), min_pixels=4 * QWEN3_TOKENS,
    max_pixels=1800 * QWEN3_TOKENS, punctuate_instruction=True)

PRESETS: dict[str, Preset] = {p.name: p for p in (PLAIN, VLM2VEC, MOCA, GME, COCOA, B3, LAMRA, QWEN3VL_EMBEDDING)}


def get_preset(name: str | Preset, **options) -> Preset:
    """A preset by name (or as given), with `options` overriding its fields (e.g. `append=...`)."""
    preset = name if isinstance(name, Preset) else PRESETS.get(name)
    if preset is None:
        raise UsageError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    unknown = set(options) - set(Preset.__dataclass_fields__)
    if unknown:
        raise UsageError(f"unknown preset option(s) {sorted(unknown)}; valid: {', '.join(Preset.__dataclass_fields__)}")
    return replace(preset, **options) if options else preset


def preset_for(declared: dict, recipe: dict | None, *, name: str | Preset | None = None) -> Preset:
    """The preset to embed a checkpoint with: `name` if given, else what the directory declares
    (`preset.json`), else `plain` under the embedding mask of the recipe it was trained with."""
    if name:
        return get_preset(name)
    if declared:
        options = {k: v for k, v in declared.items() if k != "preset"}
        return get_preset(declared.get("preset", "plain"), **options)
    if recipe and recipe.get("embed_mask"):
        return get_preset(PLAIN, attention=recipe["embed_mask"])
    return PLAIN
