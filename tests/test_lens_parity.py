"""Bridge parity: captured patterns and EOS states equal Hugging Face's own, for both tiny backbones.

References come from an untouched `copy.deepcopy` made before booting (eager attention,
`output_attentions` / `output_hidden_states`), on a batch with images of two grid sizes, a B segment,
a sample without B, a text-only sample and padding. Pattern rows captured under sdpa (computed from each
layer's queries and keys) equal the eager bridge's `hook_pattern` rows.
"""

import copy

import numpy as np
import pytest
import torch
from mixed import assert_full_capture_equals_hugging_face, mixed_batch

from analysis.lens import boot, run_batch
from analysis.masks import MASK_TYPES, PAD, B
from analysis.models import TINY_BACKBONES

TOL = 1e-5



@pytest.fixture(scope="module")
def setup(tiny):
    name, model, processor = tiny
    reference = copy.deepcopy(model)  # untouched by booting
    bridge = boot(model, processor)
    batch = mixed_batch(processor, reference)
    return name, reference, bridge, batch


@pytest.fixture(scope="module")
def fast(tiny):
    """The same model booted with sdpa, as `capture` runs every `patterns` but "full"."""
    _, model, processor = tiny
    return boot(model, processor, attn_implementation="sdpa")


def test_batch_exercises_images_b_and_padding(setup):
    _, _, _, batch = setup
    assert batch.image_grid_thw.prod(-1).unique().numel() == 2  # two grid sizes
    assert (batch.roles == PAD).any() and batch.is_image.any()
    has_b = (batch.roles == B).any(1)
    assert has_b.any() and not has_b.all()


@pytest.mark.parametrize("mask_type", MASK_TYPES)
def test_patterns_and_eos_states_equal_hugging_face(setup, mask_type):
    _, reference, bridge, batch = setup
    assert_full_capture_equals_hugging_face(reference, bridge, batch, mask_type, TOL)


@pytest.mark.parametrize("mask_type", MASK_TYPES)
@pytest.mark.parametrize("patterns", ["eos", "eos+b"])
def test_sdpa_pattern_rows_equal_eager_hook_pattern_rows(setup, fast, mask_type, patterns):
    _, _, bridge, batch = setup
    full = run_batch(bridge, batch, mask_type, patterns="full")  # eager: hook_pattern itself
    rows = run_batch(fast, batch, mask_type, patterns=patterns)  # sdpa: rows from each layer's q and k
    for f, r in zip(full, rows):
        b_rows = [j for j, role in enumerate(f["roles"]) if role == B] if patterns == "eos+b" else []
        expected = [f["eos_index"]] + b_rows
        assert r["query_positions"].tolist() == expected
        assert r["pattern"].shape == (f["pattern"].shape[0], f["pattern"].shape[1], len(expected), len(f["roles"]))
        np.testing.assert_allclose(r["pattern"], f["pattern"][:, :, expected, :], atol=TOL, rtol=0)
        for key in ("eos_resid", "content_mean", "eos_final", "embedding"):
            np.testing.assert_allclose(r[key], f[key], atol=TOL, rtol=0)


def test_the_fast_bridge_runs_sdpa(setup, fast):
    _, _, _, batch = setup
    assert fast.original_model.config.text_config._attn_implementation == "sdpa"
    with pytest.raises(RuntimeError, match="did not fire.*full attention patterns need attn_implementation='eager'"):
        run_batch(fast, batch, "causal", patterns="full")  # no [L, L] pattern exists under sdpa


def test_none_patterns_store_no_rows(setup):
    _, _, bridge, batch = setup
    assert all(s["pattern"] is None for s in run_batch(bridge, batch, "causal", patterns="none"))


def test_boot_leaves_the_callers_model_untouched(setup, tiny):
    _, reference, bridge, batch = setup
    _, model, _ = tiny
    assert bridge.original_model is not model
    inputs = batch.model_inputs("causal")
    with torch.no_grad():
        ours, theirs = model(**inputs, output_attentions=True), reference(**inputs, output_attentions=True)
    for a, b in zip(ours.attentions, theirs.attentions):
        assert torch.equal(a, b)


def test_both_backbones_expose_the_same_text_hooks():
    from analysis.models import build_tiny

    names = {}
    for backbone in TINY_BACKBONES:
        model, processor = build_tiny(backbone)
        bridge = boot(model, processor, copy=False)
        assert bridge.original_model is model  # copy=False hands the model over
        names[backbone] = set(bridge.hook_dict)
    text = [{n for n in hooks if not n.startswith("vision_encoder.")} for hooks in names.values()]
    assert text[0] == text[1]
    assert {"blocks.3.attn.hook_pattern", "blocks.0.hook_resid_pre", "ln_final.hook_out"} <= text[0]
    qwen2 = names["tiny-qwen2-vl"]
    assert {"vision_encoder.blocks.1.hook_out", "vision_encoder.blocks.0.mlp.in.hook_out",
            "vision_projector.hook_out"} <= qwen2


def test_qwen2_vl_adapter_is_registered_and_declared():
    from importlib.metadata import entry_points

    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES

    from analysis.lens.qwen2_vl_adapter import ARCHITECTURE, Qwen2VLArchitectureAdapter, register

    register()
    assert SUPPORTED_ARCHITECTURES[ARCHITECTURE] is Qwen2VLArchitectureAdapter
    declared = {ep.name: ep for ep in entry_points(group="transformer_lens.architectures")}
    assert declared[ARCHITECTURE].load() is Qwen2VLArchitectureAdapter
