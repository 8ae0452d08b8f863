"""Attention knockout: cutting every edge into EOS makes its state blind to A; cutting nothing changes nothing."""

import pytest
import torch

from analysis.data import build_mini_mmeb
from analysis.data.items import Item
from analysis.data.shapes import render, sample_scene
from analysis.embed import eos_states
from analysis.evaluate import evaluate
from analysis.inputs import encode
from analysis.lens import blocked, boot, evaluate_knockout, knockout_eos_states
from analysis.lens.knockout import group_positions, isolate
from analysis.masks import EOS, MASK_TYPES, PAD
from analysis.models import build_tiny
from analysis.presets import get_preset


@pytest.fixture(scope="module", params=["tiny-qwen2.5-vl", "tiny-qwen2-vl"])
def two_images(request):
    """Two different images with the same text and the same B target."""
    import random

    model, processor = build_tiny(request.param, seed=3)
    scenes = [sample_scene(random.Random(s)) for s in (1, 2)]
    items = [Item("what is this ?", render(scene), key=f"scene{k}") for k, scene in enumerate(scenes)]
    batch = encode(processor, model, items, ["a red circle"] * 2)
    return model, processor, batch


@pytest.mark.parametrize("mask_type", MASK_TYPES)
def test_cutting_nothing_reproduces_the_base_embeddings_exactly(two_images, mask_type):
    model, _, batch = two_images
    with torch.no_grad():
        assert torch.equal(knockout_eos_states(model, batch, mask_type, edges=()), eos_states(model, batch, mask_type))


def test_cutting_already_masked_edges_changes_nothing(two_images):
    model, _, batch = two_images
    with torch.no_grad():
        base = eos_states(model, batch, "eos_bridged_strict")
        cut = knockout_eos_states(model, batch, "eos_bridged_strict", edges=[("A", "B"), ("B", "A"), ("EOS", "B")])
    assert torch.equal(cut, base)


def test_cutting_every_edge_into_eos_makes_it_blind_to_the_image(two_images):
    model, _, batch = two_images
    edges = [("EOS", "A"), ("EOS", "B")]
    with torch.no_grad():
        base = eos_states(model, batch, "eos_bridged")
        blind = knockout_eos_states(model, batch, "eos_bridged", edges)
        partial = knockout_eos_states(model, batch, "eos_bridged", edges, layers=[0, 1])
    assert (base[0] - base[1]).abs().max() > 1e-3  # the two images do matter without the knockout
    torch.testing.assert_close(blind[0], blind[1], atol=1e-6, rtol=0)
    assert (partial[0] - partial[1]).abs().max() > 1e-4  # later layers still read A
    assert (blind - base).abs().max() > 1e-3


def test_knockout_runs_the_same_on_a_bridged_model(two_images):
    model, processor, batch = two_images
    bridge = boot(model, processor)
    edges = [("EOS", "image"), ("B", "EOS")]
    with torch.no_grad():
        plain = knockout_eos_states(model, batch, "eos_bridged", edges, layers=[1, 3])
        bridged = knockout_eos_states(bridge, batch, "eos_bridged", edges, layers=[1, 3])
    torch.testing.assert_close(bridged, plain, atol=1e-6, rtol=0)


def test_blocked_edges_follow_groups_and_keep_the_diagonal(two_images):
    _, _, batch = two_images
    cut = blocked(batch, [("EOS", "image"), ("text", "text")])
    eos = int(batch.eos_index[0])
    assert cut[0, eos].tolist() == batch.is_image[0].tolist()
    text = group_positions(batch, "text")[0].nonzero().flatten().tolist()
    assert all(cut[0, i, j] == (i != j) for i in text for j in text)
    assert not cut[:, range(cut.shape[1]), range(cut.shape[1])].any()
    assert not cut[0][batch.roles[0] == EOS][:, batch.roles[0] == EOS].any()


def test_evaluate_knockout_without_edges_is_evaluate(two_images, monkeypatch):
    import analysis.lens.knockout as knockout_module

    model, processor, _ = two_images
    datasets = build_mini_mmeb(3, tasks=("ShapesObject", "ShapesT2I"), splits=("ind",))
    base = evaluate(model, processor, datasets, mask_type="bidirectional")
    same = evaluate_knockout(model, processor, datasets, mask_type="bidirectional", edges=())
    assert same["datasets"] == base["datasets"] and same["overall"] == base["overall"]
    seen = []  # no mask given: the states are taken under the preset's own attention, as evaluate does
    monkeypatch.setattr(knockout_module, "knockout_eos_states", lambda m, b, mask, **kw: seen.append(mask) or
                        knockout_eos_states(m, b, mask, **kw))
    preset = get_preset("plain", attention="bidirectional")
    assert evaluate_knockout(model, processor, datasets, preset=preset)["datasets"] == base["datasets"]
    assert seen and set(seen) == {"bidirectional"}
    knocked = evaluate_knockout(model, processor, datasets, mask_type="bidirectional", edges=[("EOS", "A")])
    assert knocked["knockout"] == {"edges": [["EOS", "A"]], "layers": None}


def test_knockout_rejects_unknown_groups_and_layers(two_images):
    model, _, batch = two_images
    with pytest.raises(ValueError, match="unknown knockout group 'CLS'; valid groups: A, EOS, B, image, vision, text"):
        knockout_eos_states(model, batch, "causal", [("CLS", "A")])
    with pytest.raises(ValueError, match=r"layers \[7\] out of range: this checkpoint has 4 layers"):
        knockout_eos_states(model, batch, "causal", [("EOS", "A")], layers=[7])


def test_text_group_holds_the_text_only_and_the_vision_markers_are_their_own_group(two_images):
    _, processor, batch = two_images
    tokens = processor.tokenizer.convert_ids_to_tokens(batch.input_ids[0].tolist())
    text = group_positions(batch, "text")[0]
    vision = group_positions(batch, "vision")[0]
    assert " ".join(t for t, keep in zip(tokens, text.tolist()) if keep) == "what is this ?"
    assert [t for t, keep in zip(tokens, vision.tolist()) if keep] == ["<|vision_start|>", "<|vision_end|>"]
    assert not (text & group_positions(batch, "image")[0]).any()
    assert torch.equal(group_positions(batch, "~image"), (batch.roles != PAD) & ~batch.is_image)


@pytest.mark.parametrize("mask_type", ["causal", "bidirectional"])
def test_the_direct_edge_leaves_indirect_paths_and_isolating_the_image_cuts_every_path(two_images, mask_type):
    model, _, batch = two_images
    with torch.no_grad():
        direct = knockout_eos_states(model, batch, mask_type, [("EOS", "image")])
        isolated = knockout_eos_states(model, batch, mask_type, isolate("image"))
        early = knockout_eos_states(model, batch, mask_type, isolate("image"), layers=[0, 1])
    assert (direct[0] - direct[1]).abs().max() > 1e-4  # the image still reaches EOS through the text tokens
    torch.testing.assert_close(isolated[0], isolated[1], atol=1e-5, rtol=0)  # same text, no path from the image
    assert (early[0] - early[1]).abs().max() > 1e-4  # isolated in some layers only: later layers still read it
