"""Mask patching: patching every layer (or the last, all positions) gives the source run exactly, patching none
the target run; EOS's own state after block 0 is the same under causal and bidirectional attention."""

import random

import numpy as np
import pytest
import torch

from analysis.data import build_mini_mmeb
from analysis.data.items import Item
from analysis.data.shapes import render, sample_scene
from analysis.inputs import encode
from analysis.lens import boot
from analysis.lens.patching import mask_patching, patched_embeddings, patching_retrieval, positions_of, run
from analysis.models import build_tiny

LAYERS = 5  # residual stream entries of the tiny model: embeddings + 4 blocks


@pytest.fixture(scope="module")
def bridge():
    model, processor = build_tiny("tiny-qwen2.5-vl", seed=6)
    return boot(model, processor, attn_implementation="sdpa")


@pytest.fixture(scope="module")
def items():
    scenes = [sample_scene(random.Random(s)) for s in (1, 2)]
    return [Item("what is this ?", render(scene), key=f"scene{k}") for k, scene in enumerate(scenes)] + [
        Item("a red circle on the left")]


@pytest.fixture(scope="module")
def batch(bridge, items):
    return encode(bridge.processor, bridge.original_model, items)


def test_patching_every_layer_or_the_last_gives_the_source_run_exactly(bridge, batch):
    stream, source = run(bridge, batch, "bidirectional")
    _, target = run(bridge, batch, "causal", keep_stream=False)
    everywhere = positions_of(batch, "all")
    assert stream.shape[:3] == (LAYERS, *batch.input_ids.shape) and (source - target).abs().max() > 1e-3
    every_layer = run(bridge, batch, "causal", patch=dict(enumerate(stream)), where=everywhere)[1]
    last = run(bridge, batch, "causal", patch={LAYERS - 1: stream[-1]}, where=everywhere)[1]
    eos_last = run(bridge, batch, "causal", patch={LAYERS - 1: stream[-1]}, where=positions_of(batch, "EOS"))[1]
    assert torch.equal(every_layer, source) and torch.equal(last, source) and torch.equal(eos_last, source)
    assert torch.equal(run(bridge, batch, "causal", patch={}, where=everywhere)[1], target)


def test_the_profile_runs_from_the_target_to_the_source(bridge, batch):
    out = patched_embeddings(bridge, batch, "bidirectional", "causal", positions="all")
    assert out["patched"].shape == (LAYERS, 3, out["source"].shape[1])
    assert torch.equal(out["patched"][0], out["target"])  # the embeddings do not depend on the mask
    assert torch.equal(out["patched"][-1], out["source"])
    middle = out["patched"][2]
    assert (middle - out["source"]).abs().max() > 1e-4 and (middle - out["target"]).abs().max() > 1e-4


def test_mask_patching_recovery(bridge, items):
    eos = mask_patching(bridge, items, "bidirectional", "causal", positions="EOS", batch_size=2)
    everything = mask_patching(bridge, items, "bidirectional", "causal", positions="all", batch_size=2)
    assert eos["n"] == 3 and eos["n_equal"] == 0 and eos["baseline"] < 1 - 1e-4
    # EOS comes last, so causal attention already lets it read every position: after block 0 its state is
    # the causal one in both runs, and patching it there changes nothing
    assert eos["recovery"][:2] == pytest.approx([0.0, 0.0], abs=1e-5)
    assert eos["cos_target"][1] == pytest.approx(1.0, abs=1e-6)
    assert everything["recovery"][0] == pytest.approx(0.0, abs=1e-6)
    assert everything["recovery"][-1] == eos["recovery"][-1] == pytest.approx(1.0, abs=1e-5)
    assert 0.05 < everything["recovery"][2] < 0.999


def test_bridged_masks_differ_only_with_a_b_segment(bridge, items):
    without_b = mask_patching(bridge, items, "eos_bridged", "bidirectional", positions="EOS")
    assert without_b["n_equal"] == 3 and np.isnan(without_b["recovery"]).all()
    with_b = mask_patching(bridge, items, "eos_bridged", "bidirectional", positions="EOS", targets=["a red circle"] * 3)
    assert with_b["n_equal"] == 0 and with_b["recovery"][-1] == pytest.approx(1.0, abs=1e-5)


def test_patching_retrieval_runs_from_the_target_runs_score_to_the_source_runs(bridge):
    datasets = build_mini_mmeb(2, tasks=("ShapesObject", "ShapesT2I"), splits=("ind",))
    result = patching_retrieval(bridge, datasets, "bidirectional", "causal", positions="all", batch_size=32)
    assert len(result["overall"]) == LAYERS and len(result["datasets"]) == 2
    for key in ("overall", "overall_tie_robust"):
        assert result[key][0] == result["target_run"][key]
        assert result[key][-1] == result["source_run"][key]
