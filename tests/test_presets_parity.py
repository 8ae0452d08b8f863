"""Each embedder preset against an independent re-implementation of its authors' encode path, at real width.

The checkpoints are random-weight Qwen2-VL-2B / Qwen2.5-VL-3B / Qwen3-VL-2B cut to 2 layers (tests/realwidth.py),
with Qwen's token ids and real photographs (345 image tokens; 260 for Qwen3-VL's 32-pixel tokens). Adapter
families run on PEFT adapter directories:
the reference merges them as the authors do (`PeftModel.from_pretrained(...).merge_and_unload()`), the toolkit
through its own opener. References live in tests/reference_encoders.py.
"""

import gc

import numpy as np
import pytest
import reference_encoders as ref
import torch
from peft import PeftModel
from PIL import Image
from realwidth import (
    EMB_TOKEN_ID,
    FIRST_SPECIAL_ID,
    QWEN3_ADDED_TOKENS,
    QWEN3_BACKBONE,
    QWEN3_FIRST_ADDED_ID,
    QWEN_SPECIAL_TOKENS,
)
from safetensors.torch import load_file
from sklearn.datasets import load_sample_images
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from analysis.checkpoints import open_checkpoint
from analysis.data.items import Item
from analysis.embed import embed_items
from analysis.lens import capture
from analysis.presets import PRESETS, get_preset

ATOL = 1e-5
CHINA, FLOWER = (Image.fromarray(a) for a in load_sample_images().images)  # 640x427 -> 345 image tokens
QUESTION = "Represent the given image with the following question:"
CAPTION_QUERY = "Find me an everyday image that matches the given caption:"
QUERIES = [Item("what is in the image?", CHINA, instruction=QUESTION),
           Item("a photo of a flower.", instruction=CAPTION_QUERY)]
B3_PREFIX = "Represent the class label: "  # raghavlite/B3 eval_mmeb.py POS_MOD_CLASS_LABEL
# An instruction without final punctuation: Qwen3-VL-Embedding appends "." to it.
UNPUNCTUATED = Item("a red flower", CHINA, instruction="  Find me an everyday image that matches the given caption ")


def queries(family: str) -> list[Item]:
    return QUERIES + [UNPUNCTUATED] if family == "qwen3vl-embedding" else QUERIES


# 40x30 noise: below Qwen3-VL-Embedding's 4-token minimum, so its PIL pre-resize (bicubic, a = -0.5) upscales it
# to 96x64 and the processor must not resize again (its own default minimum is 64 tokens).
SMALL_NOISE = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8))


def candidates(family: str) -> list[Item]:
    """A text candidate (B3's carries its --tgt_prefix_mod prefix as the instruction) and an image candidate;
    Qwen3-VL-Embedding's also a small image."""
    prefix = B3_PREFIX.rstrip() if family == "b3" else ""
    items = [Item("a red flower", instruction=prefix), Item("", FLOWER, instruction="Represent the given image.")]
    return items + [Item("", SMALL_NOISE)] if family == "qwen3vl-embedding" else items


# (checkpoint, family, preset options, reference options): each family on the backbone it was published on,
# plus VLM2Vec's bare-image prompt on Qwen2.5-VL; the adapter families through an adapter directory. A case
# with options (CoCoA's other end token) checks the query side only.
CASES = [
    ("qwen2-vl-2b-lora", "vlm2vec", {}, {}),
    ("qwen2-vl-2b-lora", "b3", {}, {}),
    ("qwen2-vl-2b-dora", "cocoa", {}, {"end_token_id": 151643}),
    ("qwen2-vl-2b-dora", "cocoa", {"append": "<|im_end|>"}, {"end_token_id": 151645}),
    ("qwen2-vl-2b", "gme", {}, {}),
    ("qwen2-vl-2b", "lamra", {}, {}),
    ("qwen2.5-vl-3b", "moca", {}, {}),
    ("qwen2.5-vl-3b", "vlm2vec", {}, {}),
    (QWEN3_BACKBONE, "qwen3vl-embedding", {}, {}),
]
IDS = [f"{family}{'+' + opts['append'].strip('<|>') if opts else ''}@{ckpt}" for ckpt, family, opts, _ in CASES]
# One capture per way of reading an embedding (last token causal / appended token bidirectional / mean /
# chat + 1-D / token before <emb>): the prompts themselves are shared with embed_items.
CAPTURED = {"vlm2vec@qwen2-vl-2b-lora", "cocoa@qwen2-vl-2b-dora", "moca@qwen2.5-vl-3b", "gme@qwen2-vl-2b",
            "lamra@qwen2-vl-2b", f"qwen3vl-embedding@{QWEN3_BACKBONE}"}
_references: dict = {}
_opened: dict = {}


def checkpoints(request, key: str) -> dict:
    """The session fixture that writes `key`'s checkpoint (only the one a test needs is built)."""
    return request.getfixturevalue("realwidth_qwen3" if key == QWEN3_BACKBONE else "realwidth")


def reference_model(realwidth, key: str):
    """The checkpoint as the authors load it: plain `from_pretrained` (an adapter merged into its base)."""
    base_key = key.removesuffix("-lora").removesuffix("-dora")
    model = AutoModelForImageTextToText.from_pretrained(realwidth[base_key], dtype=torch.float32,
                                                        attn_implementation="eager", local_files_only=True)
    if key != base_key:
        model = PeftModel.from_pretrained(model, realwidth[key]).merge_and_unload()
    return model.eval(), AutoProcessor.from_pretrained(realwidth[base_key], local_files_only=True)


def reference(realwidth, case) -> dict[str, np.ndarray]:
    """{side: [N, d]} for a case; every case of a checkpoint computed together, then its model dropped."""
    key = case[0]
    if (key, case[1], tuple(case[2].items())) not in _references:
        model, processor = reference_model(realwidth, key)
        for ckpt, family, opts, ref_opts in CASES:
            if ckpt == key:
                fn = ref.REFERENCES[family]
                _references[key, family, tuple(opts.items())] = {
                    side: fn(model, processor, items, side, **ref_opts) for side, items in sides(family, opts)}
        del model
        gc.collect()
    return _references[key, case[1], tuple(case[2].items())]


def sides(family: str, options: dict) -> list[tuple[str, list[Item]]]:
    return [("query", queries(family))] + ([] if options else [("candidate", candidates(family))])


def opened(realwidth, key: str):
    """The toolkit's own opening of the checkpoint (one at a time)."""
    if key not in _opened:
        _opened.clear()
        gc.collect()
        _opened[key] = open_checkpoint(realwidth[key])
    return _opened[key]


def _preset_or_skip(family: str, options: dict):
    if family not in PRESETS:
        pytest.skip(f"no {family!r} preset (reference in tests/reference_encoders.py)")
    return get_preset(family, **options)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_embed_items_matches_the_authors_encode_path(request, case):
    key, family, options, _ = case
    preset = _preset_or_skip(family, options)
    realwidth = checkpoints(request, key)
    expected = reference(realwidth, case)
    model = opened(realwidth, key)
    for side, items in sides(family, options):
        got = np.asarray(embed_items(model.model, model.processor, items, preset=preset, side=side))
        assert got.dtype == np.float32 and got.shape == expected[side].shape
        np.testing.assert_allclose(got, expected[side], atol=ATOL, rtol=0, err_msg=f"{family} {side}")


@pytest.mark.parametrize("case", [c for c, i in zip(CASES, IDS) if i in CAPTURED],
                         ids=[i for i in IDS if i in CAPTURED])
def test_capture_embeddings_match_the_authors_encode_path(request, case, tmp_path):
    """A capture of the checkpoint directory under the preset's own attention (mask_types=None)."""
    key, family, options, _ = case
    preset = _preset_or_skip(family, options)
    realwidth = checkpoints(request, key)
    expected = reference(realwidth, case)["query"]
    _opened.clear()  # the capture opens its own copy
    gc.collect()
    captures = capture(str(realwidth[key]), queries(family), mask_types=None, out_dir=tmp_path, preset=preset,
                       side="query")
    assert list(captures) == [preset.attention]
    got = captures[preset.attention].embeddings().astype(np.float32)
    got /= np.linalg.norm(got, axis=-1, keepdims=True)
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)


def test_every_preset_has_a_reference():
    assert set(PRESETS) - {"plain"} <= set(ref.REFERENCES)


# --- the references against hand-written expectations ----------------------------------------------------

def test_reference_prompts_are_the_authors_strings():
    """Strings written out by hand from the authors' eval data (MMEB-eval `<|image_1|>` strings) and code."""
    image_q, text_q = QUERIES
    text_c, image_c = candidates("vlm2vec")
    bare, block = "<|image_pad|>", "<|vision_start|><|image_pad|><|vision_end|>"
    mmeb_image_q = "\nRepresent the given image with the following question: what is in the image?\n"
    for family in ("vlm2vec", "b3", "cocoa"):
        prompt = ref.PROMPTS[family]
        assert prompt(image_q, "query") == bare + mmeb_image_q
        assert prompt(text_q, "query") == CAPTION_QUERY + " a photo of a flower.\n"
        assert prompt(image_c, "candidate") == bare + "\nRepresent the given image.\n"
    assert ref.PROMPTS["vlm2vec"](text_c, "candidate") == "a red flower"
    assert ref.PROMPTS["b3"](candidates("b3")[0], "candidate") == B3_PREFIX + "a red flower"
    assert ref.PROMPTS["moca"](image_q, "query") == block + mmeb_image_q
    assert ref.PROMPTS["moca"](image_c, "candidate") == block + "\nRepresent the given image.\n"
    assert ref.PROMPTS["gme"](image_q, "query") == (
        "<|im_start|>system\nRepresent the given image with the following question:<|im_end|>\n<|im_start|>user\n"
        + block + "what is in the image?<|im_end|>\n<|im_start|>assistant\n<|endoftext|>")
    assert ref.PROMPTS["gme"](image_c, "candidate").startswith("<|im_start|>system\nYou are a helpful assistant.")
    assert ref.lamra_messages(image_q, "query")[0]["content"][1]["text"] == (
        "Represent the given image with the following question: what is in the image?"
        "\nSummarize above image and sentence in one word: ")
    assert ref.lamra_messages(image_c, "candidate")[0]["content"][1]["text"] == "\nSummarize above image in one word: "
    assert ref.lamra_messages(text_c, "candidate")[0]["content"][0]["text"] == (
        "a red flower\nSummarize above sentence in one word: ")


def test_reference_reads_the_documented_token(realwidth):
    """The token each reference reads, found by hand in the tokenised prompt."""
    processor = AutoProcessor.from_pretrained(realwidth["qwen2-vl-2b"], local_files_only=True)
    tok = processor.tokenizer
    newline = tok.convert_tokens_to_ids("\n")
    image_q = QUERIES[0]
    vlm2vec = processor(text=[ref.PROMPTS["vlm2vec"](image_q, "query")], images=[CHINA], return_tensors="pt")
    ids = vlm2vec["input_ids"][0].tolist()
    assert ids[:346] == [151655] * 345 + [newline] and ids[-1] == newline  # read: the trailing "\n"
    gme = processor(text=[ref.PROMPTS["gme"](image_q, "query")], images=[ref.fetch_image(CHINA)], return_tensors="pt")
    assert gme["input_ids"][0, -1] == 151643 and gme["input_ids"][0, -2] == newline  # "assistant\n<|endoftext|>"
    chat = processor.apply_chat_template(ref.lamra_messages(image_q, "query"), tokenize=False,
                                         add_generation_prompt=True)
    ids = tok(chat)["input_ids"]
    at = ids.index(EMB_TOKEN_ID)
    assert tok.convert_ids_to_tokens(ids[at - 3:at + 2]) == ["<|im_start|>", "assistant", "\n", "<emb>", "."]
    assert chat.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert ref.fetch_image(CHINA).size == (644, 420) and ref.smart_resize(427, 640) == (420, 644)


def test_legacy_positions_follow_transformers_before_4_52(realwidth):
    """A vision block gets M-RoPE (equal to transformers 5's); a bare `<|image_pad|>` gets 1-D positions,
    where transformers 5 would give 2-D ones."""
    config = AutoConfig.from_pretrained(realwidth["qwen2.5-vl-3b"], local_files_only=True)
    processor = AutoProcessor.from_pretrained(realwidth["qwen2.5-vl-3b"], local_files_only=True)
    block = processor(text=["a <|vision_start|><|image_pad|><|vision_end|>\nb c"], images=[CHINA], return_tensors="pt")
    ids = block["input_ids"][0]
    pos = ref.legacy_positions(ids, block["image_grid_thw"], config)
    first = int((ids == config.image_token_id).nonzero()[0])
    image = slice(first, first + 15 * 23)  # 420x644 px: 15x23 merged tokens
    assert pos[:, 0, :first].tolist() == [list(range(first))] * 3
    assert pos[0, 0, image].unique().tolist() == [first]
    assert (pos[1, 0, image].max(), pos[2, 0, image].max()) == (first + 14, first + 22)
    assert pos[:, 0, image.stop].tolist() == [first + 23] * 3  # vision_end resumes after the widest axis
    bare = processor(text=["a <|image_pad|>\nb"], images=[CHINA], return_tensors="pt")
    assert torch.equal(ref.legacy_positions(bare["input_ids"][0], bare["image_grid_thw"], config)[0, 0],
                       torch.arange(bare["input_ids"].shape[1]))
    with torch.device("meta"):  # only its get_rope_index is used
        model = AutoModelForImageTextToText.from_config(config)
    for inputs, same in ((block, True), (bare, False)):
        v5, _ = model.model.get_rope_index(inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
                                           image_grid_thw=inputs["image_grid_thw"])
        legacy = ref.legacy_positions(inputs["input_ids"][0], inputs["image_grid_thw"], config)
        assert torch.equal(v5, legacy) == same


def test_realwidth_fixture(realwidth):
    """Published widths at 2 layers, Qwen's special-token ids, 345 image tokens per photo, adapters that matter."""
    for key, hidden, heads in (("qwen2-vl-2b", 1536, 12), ("qwen2.5-vl-3b", 2048, 16)):
        config = AutoConfig.from_pretrained(realwidth[key], local_files_only=True)
        text = config.get_text_config()
        assert (text.hidden_size, text.num_attention_heads, text.num_key_value_heads, text.num_hidden_layers) == (
            hidden, heads, 2, 2)
        assert text.vocab_size == 151936 and config.tie_word_embeddings
        assert (config.image_token_id, config.vision_start_token_id) == (151655, 151652)
        tok = AutoProcessor.from_pretrained(realwidth[key], local_files_only=True).tokenizer
        assert [tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS] == list(
            range(FIRST_SPECIAL_ID, FIRST_SPECIAL_ID + 14))
    for kind in ("lora", "dora"):
        adapter = realwidth[f"qwen2-vl-2b-{kind}"]
        weights = load_file(adapter / "adapter_model.safetensors")
        assert weights and all(w.abs().sum() > 0 for w in weights.values())
        assert any("magnitude" in name for name in weights) == (kind == "dora")


def test_realwidth_qwen3_fixture(realwidth_qwen3):
    """Qwen3-VL-2B's published widths at 2 layers, its token ids (Qwen's 14 specials, then Qwen3's 12 added)."""
    path = realwidth_qwen3[QWEN3_BACKBONE]
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    text, vision = config.text_config, config.vision_config
    assert (text.hidden_size, text.num_attention_heads, text.num_key_value_heads, text.head_dim,
            text.intermediate_size, text.num_hidden_layers) == (2048, 16, 8, 128, 6144, 2)
    assert text.rope_parameters["mrope_section"] == [24, 20, 20] and text.rope_parameters["mrope_interleaved"]
    assert text.rope_parameters["rope_theta"] == 5e6 and text.vocab_size == 151936 and config.tie_word_embeddings
    assert (vision.hidden_size, vision.num_heads, vision.patch_size, vision.out_hidden_size,
            vision.num_position_embeddings, list(vision.deepstack_visual_indexes)) == (1024, 16, 16, 2048, 2304, [0, 1])
    assert (config.image_token_id, config.video_token_id, config.vision_start_token_id,
            config.vision_end_token_id) == (151655, 151656, 151652, 151653)
    tok = AutoProcessor.from_pretrained(path, local_files_only=True).tokenizer
    assert [tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS + QWEN3_ADDED_TOKENS] == list(
        range(FIRST_SPECIAL_ID, QWEN3_FIRST_ADDED_ID + 12))
    assert (tok.pad_token_id, tok.eos_token_id) == (151643, 151645)


def test_qwen3vl_reference_renders_the_authors_prompt(realwidth_qwen3):
    """Qwen3-VL-Embedding's chat written out by hand (instruction punctuated as the system message, image then
    text, the generation prompt), its read token (the final "\\n"), its image size (640x427 -> 640x416 = 260
    tokens) and its positions (transformers 5's Qwen3-VL `get_rope_index` agrees with `legacy_positions`)."""
    path = realwidth_qwen3[QWEN3_BACKBONE]
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    block = "<|vision_start|><|image_pad|><|vision_end|>"

    def render(item, side):
        conversation = ref.qwen3vl_conversation(item, side)
        return conversation, processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)

    conversation, prompt = render(UNPUNCTUATED, "query")
    assert prompt == ("<|im_start|>system\nFind me an everyday image that matches the given caption.<|im_end|>\n"
                      "<|im_start|>user\n" + block + "a red flower<|im_end|>\n<|im_start|>assistant\n")
    assert render(QUERIES[0], "query")[1].startswith(
        "<|im_start|>system\nRepresent the given image with the following question:<|im_end|>\n")
    assert render(candidates("qwen3vl-embedding")[1], "candidate")[1] == (
        "<|im_start|>system\nRepresent the user's input.<|im_end|>\n<|im_start|>user\n" + block
        + "<|im_end|>\n<|im_start|>assistant\n")
    image = ref.qwen3_fetch_image(conversation[1]["content"][0])
    assert image.size == (640, 416)
    inputs = processor(text=[prompt], images=[image], do_resize=False, return_tensors="pt")
    ids = inputs["input_ids"][0]
    assert inputs["image_grid_thw"].tolist() == [[1, 26, 40]] and int((ids == 151655).sum()) == 260
    assert processor.tokenizer.convert_ids_to_tokens(ids[-3:].tolist()) == ["<|im_start|>", "assistant", "\n"]
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    with torch.device("meta"):  # only its get_rope_index is used
        model = AutoModelForImageTextToText.from_config(config)
    v5, _ = model.model.get_rope_index(inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
                                       image_grid_thw=inputs["image_grid_thw"])
    legacy = ref.legacy_positions(ids, inputs["image_grid_thw"], config)
    image_positions = legacy[:, 0, ids == 151655]  # 2-D: one time index, 13 rows, 20 columns
    assert [int(axis.unique().numel()) for axis in image_positions] == [1, 13, 20]
    assert torch.equal(v5, legacy)
