"""Bad input fails early with an error that names the problem and the fix; the CLI end to end."""

import dataclasses

import pytest
import torch

from analysis.cli import main
from analysis.data import build_mini_mmeb
from analysis.data.items import Item
from analysis.inputs import encode
from analysis.lens import Capture, boot, capture, check_batch, check_hook_names, run_batch
from analysis.models import build_tiny


@pytest.fixture(scope="module")
def tiny_pair():
    return build_tiny("tiny-qwen2.5-vl", seed=4)


@pytest.fixture(scope="module")
def image_batch(tiny_pair):
    model, processor = tiny_pair
    ground = build_mini_mmeb(1, tasks=("ShapesGround",), splits=("ind",))[0].examples[0]
    items = [ground.query, Item("", ground.candidates[0].image, key="crop")]  # grids 8x8 and 4x4
    return encode(processor, model, items)


def test_unknown_mask_type(tiny_pair, tmp_path, image_batch):
    with pytest.raises(ValueError, match="unknown mask type 'eos_bridge'; valid mask types: causal, bidirectional"):
        capture(tiny_pair, "shapes", "causal,eos_bridge", tmp_path, n=2)
    assert not list(tmp_path.iterdir())  # nothing written before the settings are checked
    with pytest.raises(ValueError, match="unknown mask type"):
        run_batch(boot(*tiny_pair), image_batch, "full")


def test_unknown_hook_name_suggests_close_ones(tiny_pair, tmp_path):
    bridge = boot(*tiny_pair)
    with pytest.raises(KeyError, match="'blocks.1.hook_resid_psot'.*did you mean blocks.1.hook_resid_post"):
        check_hook_names(bridge, ["blocks.1.hook_resid_psot"])
    with pytest.raises(KeyError, match="unknown hook name 'no_such_hook'"):
        capture(tiny_pair, "shapes", "causal", tmp_path, n=2, hooks=["no_such_hook"])


def test_vision_hook_cannot_be_stored_at_eos(tiny_pair, image_batch):
    with pytest.raises(ValueError, match="not \\[batch, pos, ...\\]: capture stores activations at the EOS position"):
        run_batch(boot(*tiny_pair), image_batch, "causal", hooks=["vision_encoder.blocks.0.hook_out"])


def test_image_grid_that_does_not_match_its_tokens(tiny_pair, image_batch):
    model, _ = tiny_pair
    check_batch(model, image_batch)  # as encoded: fine
    swapped = dataclasses.replace(image_batch, image_grid_thw=image_batch.image_grid_thw.flip(0))
    with pytest.raises(ValueError, match=r"image 0 has grid \(1, 4, 4\) = 4 tokens .* holds 16 image tokens; re-enc"):
        check_batch(model, swapped)
    with pytest.raises(ValueError, match="image 0 has grid"):
        run_batch(boot(*tiny_pair), swapped, "causal")
    narrow = dataclasses.replace(image_batch, pixel_values=image_batch.pixel_values[:, :588])
    with pytest.raises(ValueError, match="588 values per patch .* takes 3 x 2 x 14\\^2 = 1176"):
        check_batch(model, narrow)
    no_pixels = dataclasses.replace(image_batch, pixel_values=None, image_grid_thw=None)
    with pytest.raises(ValueError, match="holds 20 image tokens but no pixel_values"):
        check_batch(model, no_pixels)


def test_target_needs_examples_and_datasets_need_names(tiny_pair, tmp_path):
    with pytest.raises(ValueError, match="with_target=True needs a target text per sample"):
        capture(tiny_pair, [Item("a red circle")], "eos_bridged", tmp_path, with_target=True)
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; valid names: mini-mmeb, shapes, digits"):
        capture(tiny_pair, "mnist", "causal", tmp_path)
    with pytest.raises(ValueError, match="unknown patterns option 'rows'"):
        capture(tiny_pair, "shapes", "causal", tmp_path, patterns="rows")
    with pytest.raises(ValueError, match="dtype / device apply when loading"):
        capture(tiny_pair, "shapes", "causal", tmp_path, dtype="bfloat16")
    with pytest.raises(FileNotFoundError, match="no capture at"):
        Capture.open(tmp_path / "nowhere")


def test_only_qwen_vl_models_are_bridged():
    with pytest.raises(TypeError, match="cannot bridge a Linear"):
        boot(torch.nn.Linear(2, 2), None)


def test_boot_leaves_the_callers_tokenizer_alone(tiny_pair):
    _, processor = tiny_pair
    boot(*tiny_pair)
    boot(*tiny_pair)  # a second boot of the same objects works
    assert processor.tokenizer.bos_token is None


def test_cli_capture_end_to_end(tmp_path, capsys):
    out = tmp_path / "cap"
    argv = ["capture", "--checkpoint", "tiny-qwen2-vl", "--mask", "causal,eos_bridged_strict", "--data", "mini-mmeb",
            "--out", str(out), "--n", "6", "--patterns", "eos+b", "--with-target"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "eos_bridged_strict" in printed and "6 samples" in printed
    cap = Capture.open(out, mask_type="eos_bridged_strict")
    assert cap.checkpoint == "tiny-qwen2-vl (random init, seed 0)" and cap.meta["with_target"]
    with pytest.raises(SystemExit):
        main(["capture", "--checkpoint", "tiny-qwen2-vl", "--mask", "causal,strict", "--out", str(out)])
    assert "unknown mask type(s) ['strict']" in capsys.readouterr().err
    assert main(["capture", "--checkpoint", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    assert main(argv + ["--hooks", "blocks.0.hook_nope"]) == 2
    assert "unknown hook name 'blocks.0.hook_nope'" in capsys.readouterr().err
