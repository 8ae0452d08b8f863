"""Embedder presets on the tiny backbones: prompts, segments, positions and pooling against hand computations.

The per-family parity against each published encode path at real width lives in test_presets_parity.py;
these tests pin the mechanism with references written differently from `analysis.inputs`.
"""

import copy

import pytest
import torch
import torch.nn.functional as F

from analysis.data.items import Item
from analysis.data.shapes import Scene, ShapeObject, render
from analysis.embed import embed_items
from analysis.errors import UsageError
from analysis.inputs import encode
from analysis.lens import capture
from analysis.presets import PRESETS, SEGMENTS, get_preset, preset_for

IMAGE = render(Scene((ShapeObject("red", "circle", "large", "top", "left"),)))
ITEMS = [Item("a red circle", IMAGE), Item("two blue squares"), Item("", IMAGE.resize((56, 56)))]


def _ids(tok, *tokens):
    return [tok.convert_tokens_to_ids(t) for t in tokens]


def test_plain_preset_is_the_layout_trained_here(tiny):
    """[vision_start][image_pad * n][vision_end] text <|endoftext|>, built by hand from the tokenizer."""
    _, model, processor = tiny
    tok = processor.tokenizer
    batch = encode(processor, model, ITEMS)
    vs, pad, ve, eot = _ids(tok, "<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|endoftext|>")
    words = tok("a red circle", add_special_tokens=False).input_ids
    rows = [[vs] + [pad] * 16 + [ve] + words + [eot],
            tok("two blue squares", add_special_tokens=False).input_ids + [eot],
            [vs] + [pad] * 4 + [ve, eot]]
    for i, row in enumerate(rows):
        assert batch.input_ids[i, :len(row)].tolist() == row
        assert int(batch.eos_index[i]) == len(row) - 1
    assert batch.segments(0)[:18] == ["vision"] + ["image"] * 16 + ["vision"]
    assert batch.segments(0)[18:22] == ["text"] * 3 + ["EOS"]
    assert batch.segments(1)[-1] == "PAD"


def test_empty_slots_drop_their_space():
    vlm2vec = get_preset("vlm2vec")
    joined = {args: "".join(s for _, s in vlm2vec.pieces(*args)) for args in [
        ("query", "Represent the given image.", "", True), ("query", "Find the caption:", "a cat", False),
        ("candidate", "", "a cat", False), ("query", "", "a cat", True)]}
    assert list(joined.values()) == ["<|image_pad|>\nRepresent the given image.\n", "Find the caption: a cat\n",
                                     "a cat", "<|image_pad|>\na cat\n"]


def test_vlm2vec_reads_the_last_prompt_token_with_1d_positions(tiny):
    _, model, processor = tiny
    tok = processor.tokenizer
    item = Item("a red circle", IMAGE, instruction="select the caption")
    batch = encode(processor, model, [item, Item("red")], preset="vlm2vec")
    n = int((batch.input_ids[0] == tok.convert_tokens_to_ids("<|image_pad|>")).sum())
    length = int((batch.segment_ids[0] != SEGMENTS.index("PAD")).sum())
    assert int(batch.eos_index[0]) == length - 1 and n > 0
    assert torch.equal(batch.position_ids[:, 0, :length], torch.arange(length).expand(3, -1))  # 1-D, not M-RoPE
    # the word-level tokenizer drops the template's whitespace, so only these remain
    assert set(batch.segments(0)[:length]) == {"image", "instruction", "text", "EOS"}
    assert "vision" not in batch.segments(0)  # a bare <|image_pad|>: no vision markers


def test_mean_pooling_averages_every_attended_position(tiny):
    """MoCa: the mean of the final-norm states over the input's positions, from a plain HF forward."""
    _, model, processor = tiny
    reference = copy.deepcopy(model)
    got = embed_items(model, processor, ITEMS, preset="moca")
    for i, item in enumerate(ITEMS):
        batch = encode(processor, reference, [item], preset="moca")
        with torch.no_grad():
            hidden = reference.model(**batch.model_inputs("bidirectional")).last_hidden_state[0]
        assert batch.pool is not None and bool(batch.pool.all())
        torch.testing.assert_close(got[i], F.normalize(hidden.mean(0), dim=-1), atol=1e-5, rtol=1e-5)


def test_capture_stores_the_preset_embedding(tiny, tmp_path):
    _, model, processor = tiny
    expected = embed_items(model, processor, ITEMS, preset="moca")
    cap = capture((model, processor), ITEMS, None, tmp_path / "moca", preset="moca")["bidirectional"]
    assert cap.meta["preset"] == "moca" and cap.meta["preset_record"]["pooling"] == "mean"
    torch.testing.assert_close(F.normalize(torch.tensor(cap.embeddings()), dim=-1), expected, atol=1e-5, rtol=1e-5)
    assert cap.sample(0).segments[0] == "vision"


def test_a_tokenizer_without_the_template_tokens_is_refused(tiny):
    _, model, processor = tiny
    with pytest.raises(UsageError, match="<|im_start|>"):
        encode(processor, model, [Item("red")], preset="gme")


def test_preset_lookup_and_declarations():
    with pytest.raises(UsageError, match="valid presets: plain, vlm2vec"):
        get_preset("clip")
    assert get_preset("cocoa", append="<|im_end|>").append == "<|im_end|>"
    assert preset_for({}, {"embed_mask": "causal"}).attention == "causal"
    assert preset_for({"preset": "gme"}, None).name == "gme"
    assert preset_for({"preset": "gme"}, None, name="moca").name == "moca"
    assert set(PRESETS) >= {"plain", "vlm2vec", "moca", "gme", "cocoa", "b3"}


def test_a_preset_option_outside_the_vocabulary_is_refused():
    with pytest.raises(UsageError, match="unknown pooling 'max'; valid: token, mean"):
        get_preset("vlm2vec", pooling="max")
    with pytest.raises(UsageError, match="unknown attention 'sliding'"):
        get_preset("moca", attention="sliding")
