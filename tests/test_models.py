"""Embedded backbones: construction, tokenizer, save/load round trip, clear errors."""

import json

import pytest
import torch

from analysis.checkpoints import open_checkpoint
from analysis.data import build_mini_mmeb
from analysis.embed import embed_items
from analysis.errors import UsageError
from analysis.models import TINY_BACKBONES, build_tiny, save_checkpoint


def test_tiny_backbones_are_small_and_typed(tiny):
    name, model, processor = tiny
    n_params = sum(p.numel() for p in model.parameters())
    assert 0.5e6 < n_params < 2e6
    expected = {"tiny-qwen2.5-vl": "qwen2_5_vl", "tiny-qwen2-vl": "qwen2_vl"}[name]
    assert model.config.model_type == expected
    assert model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")


def test_same_seed_same_weights():
    a, _ = build_tiny("tiny-qwen2-vl", seed=3)
    b, _ = build_tiny("tiny-qwen2-vl", seed=3)
    c, _ = build_tiny("tiny-qwen2-vl", seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(x, y) for x, y in zip(a.parameters(), c.parameters()))


def test_unknown_backbone_lists_valid():
    with pytest.raises(ValueError, match="tiny-qwen2.5-vl, tiny-qwen2-vl, tiny-qwen3-vl"):
        build_tiny("tiny-llama")


def test_tokenizer_covers_every_generated_text():
    _, processor = build_tiny(TINY_BACKBONES[0])
    tok = processor.tokenizer
    texts = {it.text for d in build_mini_mmeb(5) for ex in d.examples for it in (ex.query, *ex.candidates)}
    for text in texts:
        assert tok.unk_token_id not in tok(text, add_special_tokens=False).input_ids, text


def test_image_expands_to_merged_patch_tokens():
    from analysis.data.items import Item
    from analysis.data.shapes import Scene, ShapeObject, render
    from analysis.inputs import encode

    model, processor = build_tiny(TINY_BACKBONES[0])
    image = render(Scene((ShapeObject("red", "circle", "large", "top", "left"),)))
    batch = encode(processor, model, [Item("", image), Item("", image.resize((56, 56)))])
    assert batch.is_image.sum(dim=1).tolist() == [16, 4]  # 112x112 -> 8x8 patches -> 4x4 merged; 56 -> 2x2


def test_save_load_round_trip(tiny, tmp_path):
    _, model, processor = tiny
    save_checkpoint(model, processor, tmp_path / "ckpt", extra={"recipe.json": {"seed": 0}})
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "ckpt" / "recipe.json").read_text()) == {"seed": 0}
    opened = open_checkpoint(tmp_path / "ckpt")
    loaded, loaded_processor = opened.model, opened.processor
    assert type(loaded) is type(model)
    items = [ex.query for ex in build_mini_mmeb(3, tasks=("ShapesI2T", "ShapesT2I"))[0].examples]
    for mask in ("causal", "eos_bridged"):
        ours = embed_items(model, processor, items, mask_type=mask)
        assert torch.equal(ours, embed_items(loaded, loaded_processor, items, mask_type=mask))


def test_load_missing_checkpoint_names_path(tmp_path):
    with pytest.raises(UsageError, match=str(tmp_path / "nowhere")):
        open_checkpoint(tmp_path / "nowhere")


def test_load_rejects_other_architectures(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(UsageError, match="qwen2_5_vl, qwen2_vl, qwen3_vl"):
        open_checkpoint(tmp_path)


@pytest.mark.parametrize("name", ["tiny-qwen2.5-vl", "tiny-qwen3-vl"])
def test_patch_embedding_as_matmul_equals_the_convolution(name):
    """The training path's matrix-product patch embedding against Hugging Face's Conv3d on an untouched copy."""
    import copy

    from analysis.models import build_tiny, patch_embedding_as_matmul

    model, processor = build_tiny(name)
    reference = copy.deepcopy(model)
    assert patch_embedding_as_matmul(model) == 1
    pixels = torch.randn(64, 3 * 2 * 14 * 14)
    ours = model.model.visual.patch_embed(pixels)
    theirs = reference.model.visual.patch_embed(pixels)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    ours.sum().backward()
    assert model.model.visual.patch_embed.proj.weight.grad is not None


@pytest.mark.parametrize("name", ["tiny-qwen2.5-vl", "tiny-qwen3-vl"])
def test_patch_embedding_of_a_still_image_equals_the_convolution(name):
    """A still image (the processor repeats its frame over the temporal patch) takes the one-frame product: same
    output and same weight gradient as Hugging Face's Conv3d."""
    import copy

    from analysis.data.shapes import Scene, ShapeObject, render
    from analysis.models import build_tiny, patch_embedding_as_matmul

    model, processor = build_tiny(name)
    reference = copy.deepcopy(model)
    patch_embedding_as_matmul(model)
    image = render(Scene((ShapeObject("red", "circle", "large", "top", "left"),)))
    pixels = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    frames = pixels.view(pixels.shape[0], 3, 2, -1)
    assert torch.equal(frames[:, :, 0], frames[:, :, 1])  # the processor's repeated frame
    for embed in (model.model.visual.patch_embed, reference.model.visual.patch_embed):
        embed(pixels).square().sum().backward()
    ours, theirs = model.model.visual.patch_embed.proj.weight, reference.model.visual.patch_embed.proj.weight
    torch.testing.assert_close(model.model.visual.patch_embed(pixels), reference.model.visual.patch_embed(pixels),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.grad, theirs.grad, atol=1e-4, rtol=1e-4)
