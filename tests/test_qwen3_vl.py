"""tiny-qwen3-vl through every path: config, images and M-RoPE positions, capture parity with Hugging Face under
all four mask types, hook names shared with the Qwen2 family, DeepStack, save / load, training stages, and
`cocoa-lens evaluate --data mmeb2:DIR`.

References come from an untouched `copy.deepcopy` made before booting (eager attention, `output_attentions` /
`output_hidden_states`), on a batch with images of two grid sizes, a B segment, a sample without B, a text-only
sample and padding.
"""

import copy
import json

import numpy as np
import pytest
import torch
from mixed import assert_full_capture_equals_hugging_face, mixed_batch
from PIL import Image

from analysis.cli import main
from analysis.embed import eos_states
from analysis.lens import boot, run_batch
from analysis.masks import MASK_TYPES, PAD, B, rope_position_ids
from analysis.models import ALL_TINY_BACKBONES, TINY_BACKBONES, build_tiny, save_checkpoint

TOL = 1e-5
NAME = "tiny-qwen3-vl"


@pytest.fixture(scope="module")
def qwen3():
    return build_tiny(NAME, seed=0)


@pytest.fixture(scope="module")
def setup(qwen3):
    model, processor = qwen3
    reference = copy.deepcopy(model)  # untouched by booting
    return reference, boot(model, processor), mixed_batch(processor, reference)


def test_qwen3_vl_is_a_separate_tiny_backbone():
    assert NAME in ALL_TINY_BACKBONES and NAME not in TINY_BACKBONES  # the shared `tiny` fixture stays Qwen2


def test_tiny_qwen3_vl_has_qwen3_vl_geometry(qwen3):
    model, processor = qwen3
    config, text, vision = model.config, model.config.text_config, model.config.vision_config
    assert config.model_type == "qwen3_vl" and 0.5e6 < sum(p.numel() for p in model.parameters()) < 2e6
    assert config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert text.head_dim * text.num_attention_heads == text.hidden_size
    # interleaved M-RoPE: height at frequencies 1, 4, .., width at 2, 5, .., time the rest of head_dim / 2 = 16
    assert text.rope_parameters["mrope_section"] == [6, 5, 5] and text.rope_parameters["mrope_interleaved"]
    assert (vision.patch_size, list(vision.deepstack_visual_indexes)) == (16, [0])
    assert processor.image_processor.patch_size * processor.image_processor.merge_size == 32
    assert type(processor).__name__ == "Qwen3VLProcessor"


def test_images_expand_to_32_pixel_tokens(setup):
    _, _, batch = setup
    assert batch.image_grid_thw.tolist() == [[1, 8, 8], [1, 4, 4], [1, 8, 8]]  # 112 -> 128 px, 56 -> 64 px
    assert batch.is_image.sum(1).tolist() == [16, 0, 4, 16]


def test_positions_of_a_padded_batch_are_each_samples_own(setup):
    """M-RoPE ids from the model's own get_rope_index: image tokens on their 2-D grid, text resuming after it,
    each sample as if alone (PAD ignored)."""
    reference, _, batch = setup
    n = (batch.roles != PAD).sum(1)
    grids = iter(batch.image_grid_thw)
    for i in range(len(n)):
        alone = batch.input_ids[i:i + 1, :n[i]]
        images = int(batch.is_image[i].any())
        grid = torch.stack([next(grids) for _ in range(images)]) if images else None
        own = rope_position_ids(reference, alone, batch.roles[i:i + 1, :n[i]],
                                batch.mm_token_type_ids[i:i + 1, :n[i]], grid)
        assert torch.equal(batch.position_ids[:, i, :n[i]], own[:, 0])
    first = batch.position_ids[:, 0, batch.is_image[0]]  # the 4x4 merged grid of sample 0, after vision_start
    assert first[0].unique().tolist() == [1]
    assert first[1].unique().tolist() == first[2].unique().tolist() == [1, 2, 3, 4]
    after = int(batch.is_image[0].nonzero().max()) + 1
    assert batch.position_ids[:, 0, after].tolist() == [5, 5, 5]  # vision_end: 1 + max(4, 4)


def test_batch_exercises_images_b_and_padding(setup):
    _, _, batch = setup
    assert batch.image_grid_thw.prod(-1).unique().numel() == 2
    has_b = (batch.roles == B).any(1)
    assert (batch.roles == PAD).any() and has_b.any() and not has_b.all()


@pytest.mark.parametrize("mask_type", MASK_TYPES)
def test_patterns_and_eos_states_equal_hugging_face(setup, mask_type):
    reference, bridge, batch = setup
    assert_full_capture_equals_hugging_face(reference, bridge, batch, mask_type, TOL)


@pytest.mark.parametrize("mask_type", MASK_TYPES)
def test_sdpa_pattern_rows_equal_eager_hook_pattern_rows(setup, qwen3, mask_type):
    _, bridge, batch = setup
    model, processor = qwen3
    fast = boot(model, processor, attn_implementation="sdpa")
    full = run_batch(bridge, batch, mask_type, patterns="full")
    for f, r in zip(full, run_batch(fast, batch, mask_type, patterns="eos+b")):
        np.testing.assert_allclose(r["pattern"], f["pattern"][:, :, r["query_positions"], :], atol=TOL, rtol=0)


def test_text_hooks_are_the_qwen2_familys_plus_qk_norms(setup):
    _, bridge, _ = setup
    qwen2_model, qwen2_processor = build_tiny("tiny-qwen2-vl")
    qwen2 = {n for n in boot(qwen2_model, qwen2_processor, copy=False).hook_dict if not n.startswith("vision_")}
    qwen3 = set(bridge.hook_dict)
    text = {n for n in qwen3 if not n.startswith("vision_")}
    assert qwen2 <= text
    assert {n.split(".", 2)[2].split(".")[1] for n in text - qwen2} == {"q_norm", "k_norm"}  # blocks.l.attn.X.hook_*
    assert {"blocks.3.attn.hook_pattern", "blocks.0.hook_resid_pre", "blocks.3.hook_resid_post",
            "ln_final.hook_out"} <= text
    assert {"vision_encoder.blocks.1.hook_out", "vision_encoder.deepstack_mergers.0.hook_out",
            "vision_projector.hook_out"} <= qwen3


def test_deepstack_is_added_between_blocks(setup):
    """DeepStack adds vision block 0's merged features to the image tokens after text layer 0, outside the block:
    `blocks.1.hook_resid_pre` = `blocks.0.hook_resid_post` + those features at image tokens, equal elsewhere (so
    EOS states are unaffected, but a residual read at image tokens must pick its side)."""
    reference, bridge, batch = setup
    stored = {}

    def keep(name):
        def hook(tensor, hook):
            stored[name] = tensor.detach().clone()
        return hook

    inputs = batch.model_inputs("causal")
    names = ("blocks.0.hook_resid_post", "blocks.1.hook_resid_pre")
    with torch.no_grad(), bridge.hooks(fwd_hooks=[(name, keep(name)) for name in names]):
        bridge(inputs.pop("input_ids"), return_type=None, **inputs)
        features = reference.model.get_image_features(batch.pixel_values, batch.image_grid_thw)
    added = stored["blocks.1.hook_resid_pre"] - stored["blocks.0.hook_resid_post"]
    assert added[~batch.is_image].abs().max() == 0
    torch.testing.assert_close(added[batch.is_image], torch.cat(features.deepstack_features[0]), atol=TOL, rtol=0)


def test_save_load_round_trip(qwen3, tmp_path):
    from analysis.checkpoints import open_checkpoint

    model, processor = qwen3
    save_checkpoint(model, processor, tmp_path / "ckpt")
    opened = open_checkpoint(tmp_path / "ckpt")
    loaded, loaded_processor = opened.model, opened.processor
    assert type(loaded) is type(model) and type(loaded_processor) is type(processor)
    assert loaded_processor.image_processor.patch_size == 16
    batch = mixed_batch(processor, model)
    with torch.no_grad():
        assert torch.equal(eos_states(model, batch, "eos_bridged"), eos_states(loaded, batch, "eos_bridged"))
    assert loaded.config.model_type == "qwen3_vl"


def test_open_checkpoint_knows_the_tiny_name():
    from analysis.checkpoints import open_checkpoint

    assert open_checkpoint(NAME).model.config.model_type == "qwen3_vl"


# --- training ---------------------------------------------------------------------------------------------

def test_training_forward_equals_the_models_own(qwen3):
    from analysis.train.objectives import forward_hidden

    model, processor = qwen3
    batch = mixed_batch(processor, model)
    with torch.no_grad():
        ours = forward_hidden(model, batch, mask_type="eos_bridged")
        theirs = model.model(**batch.model_inputs("eos_bridged")).last_hidden_state
    torch.testing.assert_close(ours, theirs, atol=TOL, rtol=0)


@pytest.mark.parametrize("stage", ["warmup", "bridged", "contrastive"])
def test_each_training_stage_runs(stage):
    """Two steps of each stage on tiny-qwen3-vl (warm-up with MAE on 16-pixel patches): finite losses, moved weights."""
    from analysis.train import Recipe, apply_overrides
    from analysis.train.batches import make_batch_fn, prefetch
    from analysis.train.objectives import mask_token_id
    from analysis.train.runner import make_decoder, run_stage

    model, processor = build_tiny(NAME, seed=1, attn_implementation="sdpa", hidden_size=32, vision_width=32)
    recipe = apply_overrides(Recipe(name="q3"), [f"stages.{stage}.steps=2", f"stages.{stage}.batch_size=4",
                                                 "device=cpu",
                                                 *(["stages.bridged.recon_weight=0.5"] * (stage == "bridged"))])
    decoder = make_decoder(model, processor) if stage == "warmup" else None
    before = [p.detach().clone() for p in model.parameters()]
    make = make_batch_fn(recipe, stage, processor, model, mask_token_id(processor.tokenizer))
    curve = run_stage(recipe, stage, model, decoder, prefetch(make, range(2)), torch.device("cpu"), progress=False)
    assert len(curve) == 2 and all(np.isfinite(c["loss"]) for c in curve)
    if stage == "warmup":
        assert all(np.isfinite(c["mae"]) for c in curve)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_train_runs_a_recipe_on_tiny_qwen3_vl(tmp_path):
    from analysis.train import Recipe, apply_overrides, train

    sets = [f"stages.{s}.{k}={v}" for s in ("warmup", "bridged", "contrastive") for k, v in (("steps", 2),
                                                                                          ("batch_size", 4))]
    recipe = apply_overrides(Recipe(name="q3"), sets + [f"backbone.name={NAME}", "eval.n_per_dataset=2",
                                                        "backbone.hidden_size=32", "backbone.vision_width=32",
                                                        "device=cpu"])
    out = train(recipe, tmp_path / "run", progress=False)
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen3_vl"
    assert "overall" in json.loads((out / "scores.json").read_text())


# --- MMEB-V2 layout through the command line ----------------------------------------------------------------

def test_evaluate_reads_the_mmeb_v2_layout(qwen3, tmp_path, capsys):
    """`cocoa-lens evaluate --data mmeb2:DIR` on a V2 image-task directory (qry_inst / qry_text records, images
    under image-tasks/), with a saved tiny-qwen3-vl checkpoint."""
    model, processor = qwen3
    ckpt = save_checkpoint(model, processor, tmp_path / "ckpt")
    root = tmp_path / "mmeb2"
    (root / "image-tasks" / "img").mkdir(parents=True)
    colours = {"red.png": "red", "blue.png": "blue", "green.png": "green"}
    for name, colour in colours.items():
        Image.new("RGB", (112, 112), colour).save(root / "image-tasks" / "img" / name)
    names = list(colours)
    records = {
        "ImageNet-1K": [dict(qry_inst="<|image_1|> Represent the given image for classification", qry_text="",
                             qry_img_path=f"img/{n}", tgt_text=[colours[n]] + [colours[m] for m in names if m != n],
                             tgt_img_path=[""] * 3) for n in names],
        "MSCOCO_t2i": [dict(qry_inst="Find me an everyday image that matches the given caption:",
                            qry_text=f"a {colours[n]} image", qry_img_path="", tgt_inst="<|image_1|> Represent the "
                            "given image.", tgt_text=[""] * 3, tgt_img_path=[f"img/{n}"] + [f"img/{m}" for m in names
                                                                                            if m != n])
                       for n in names],
    }
    for dataset, rows in records.items():
        (root / dataset).mkdir()
        (root / dataset / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scores.json"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", f"mmeb2:{root}", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ImageNet-1K" in printed and "MSCOCO_t2i" in printed
    scores = json.loads(out.read_text())
    assert {(r["dataset"], r["meta_task"], r["n"], r["n_candidates"]) for r in scores["datasets"]} == {
        ("ImageNet-1K/ind", "classification", 3, 3), ("MSCOCO_t2i/ind", "retrieval", 3, 3)}
    assert set(scores["meta_task"]) == {"classification", "retrieval"}
