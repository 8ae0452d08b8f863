"""Capture to disk: contents equal independent computations; ragged storage, lazy reopening, resume."""

import importlib
import json

import numpy as np
import pytest
import torch

from analysis.data import build_mini_mmeb
from analysis.embed import eos_states
from analysis.inputs import encode
from analysis.lens import Capture, capture
from analysis.lens.sources import samples
from analysis.masks import PAD, A
from analysis.models import build_tiny

capture_module = importlib.import_module("analysis.lens.recorder")
SETTINGS = dict(n=30, with_target=True, patterns="eos+b", batch_size=8, shard_size=12)



@pytest.fixture(scope="module")
def tiny_vl():
    return build_tiny("tiny-qwen2-vl", seed=1)


@pytest.fixture(scope="module")
def side_by_side(tiny_vl, tmp_path_factory):
    out = tmp_path_factory.mktemp("capture")
    return out, capture(tiny_vl, "mini-mmeb", "causal,eos_bridged", out, **SETTINGS)


def test_mini_mmeb_stream_is_build_mini_mmebs_queries():
    datasets = build_mini_mmeb(2)
    expected = [(ex.query.key, ex.positive.text, ex.labels, d.key) for d in datasets for ex in d.examples]
    name, count, stream = samples("mini-mmeb", n=2 * len(datasets))
    got = [(s.item.key, s.target, s.labels, s.meta["dataset"]) for s in stream]
    assert (name, count) == ("mini-mmeb", len(expected))
    assert got == expected


def test_side_by_side_directories_name_their_setting(side_by_side):
    out, captures = side_by_side
    assert sorted(p.name for p in out.iterdir()) == ["causal", "eos_bridged"]
    for mask_type, cap in captures.items():
        assert len(cap) == 30 and cap.meta["complete"]
        assert (cap.mask_type, cap.dataset) == (mask_type, "mini-mmeb")
        assert cap.checkpoint == "<in-memory Qwen2VLForConditionalGeneration>"
        assert len(cap.meta["shards"]) == 3  # 12 + 12 + 6
        assert cap.meta["attn_implementation"] == "sdpa"  # eos+b rows need no eager attention
    assert "equals bidirectional" in captures["eos_bridged"].meta["b_segment"]  # T2I / grounding positives are images
    with pytest.raises(ValueError, match="causal, eos_bridged"):
        Capture.open(out)
    assert Capture.open(out, mask_type="causal").mask_type == "causal"
    with pytest.raises(ValueError, match="holds a causal capture, not eos_bridged"):
        Capture.open(out / "causal", mask_type="eos_bridged")


@pytest.mark.parametrize("mask_type", ["causal", "eos_bridged"])
def test_stored_states_equal_an_independent_forward(side_by_side, tiny_vl, mask_type):
    out, _ = side_by_side
    cap = Capture.open(out / mask_type)
    model, processor = tiny_vl
    stream = list(samples("mini-mmeb", n=30)[2])
    batch = encode(processor, model, [s.item for s in stream], [s.target for s in stream])
    assert model.config._attn_implementation == "eager"  # the capture booted a copy; the reference stays eager
    with torch.no_grad():
        expected = eos_states(model, batch, mask_type)
        out = model(**batch.model_inputs(mask_type), output_hidden_states=True, output_attentions=True)
    hidden, attentions = out.hidden_states, torch.stack(out.attentions, 1)  # [B, layers, heads, L, L]
    np.testing.assert_allclose(cap.embeddings(), expected.numpy(), atol=1e-5)
    rows = torch.arange(30)
    np.testing.assert_allclose(cap.eos_states(layer=1), hidden[1][rows, batch.eos_index].numpy(), atol=1e-5)
    assert cap.eos_states().shape == (30, 5, 128)
    content = (batch.roles == A).float()  # mean-pooling reference, written differently: masked average per layer
    for layer in (0, 2):  # hidden_states[-1] is after the final norm; content_mean, like eos_resid, is not
        pooled = torch.einsum("bl,bld->bd", content, hidden[layer]) / content.sum(1, keepdim=True)
        np.testing.assert_allclose(cap.content_mean(layer=layer), pooled.numpy(), atol=1e-5)
    records = cap.records
    assert [r.key for r in records] == [s.item.key for s in stream]
    assert cap.labels("colour") == [s.labels.get("colour") for s in stream]
    assert {r.meta["meta_task"] for r in records} == {"classification", "vqa", "retrieval", "grounding"}
    for i in (0, 7, 29):  # ragged: each sample keeps exactly its own positions
        sample, n = cap.sample(i), int((batch.roles[i] != PAD).sum())
        assert len(sample.roles) == n and sample.input_ids.tolist() == batch.input_ids[i, :n].tolist()
        assert sample.segments == batch.segments(i)[:n]
        assert sample.is_image.tolist() == batch.is_image[i, :n].tolist()
        assert sample.pattern.shape == (4, 4, 1 + sample.roles.count("B"), n)
        assert sample.record == records[i] and sample.record.has_b == ("B" in sample.roles)
        rows = attentions[i][:, :, sample.query_positions.tolist(), :n]  # eager's own rows
        np.testing.assert_allclose(sample.pattern, rows.numpy(), atol=1e-5, rtol=0)
    total_tokens = int((batch.roles != PAD).sum())
    assert sum(np.load(p / "roles.npy").size for p in sorted(cap.directory.glob("shard-*"))) == total_tokens


def test_reopening_is_lazy_memory_mapped(side_by_side):
    out, _ = side_by_side
    cap = Capture.open(out / "causal")
    shard = cap._shards[0]
    assert shard._arrays == {}  # nothing read at open
    cap.sample(3)
    assert all(isinstance(a, np.memmap) for a in shard._arrays.values())


def test_interrupted_capture_resumes_from_the_last_complete_shard(side_by_side, tiny_vl, tmp_path, monkeypatch):
    reference_dir, _ = side_by_side
    calls = {"n": 0}
    real = capture_module.Recorder.run

    def dies_after_five(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(capture_module.Recorder, "run", dies_after_five)
    with pytest.raises(KeyboardInterrupt):
        capture(tiny_vl, "mini-mmeb", "causal,eos_bridged", tmp_path, **SETTINGS)
    # batches of 8 under two masks: 2 complete shards of causal (24 samples), 1 of eos_bridged (16 > 12)
    done = {m: json.loads((tmp_path / m / "index.json").read_text())["n_done"] for m in ("causal", "eos_bridged")}
    assert done == {"causal": 24, "eos_bridged": 12}
    (tmp_path / "causal" / ".shard-00002.tmp").mkdir()  # debris of a shard being written
    calls["n"] = -100
    resumed = capture(tiny_vl, "mini-mmeb", "causal,eos_bridged", tmp_path, **SETTINGS)
    assert calls["n"] == -100 + 3 + 1  # eos_bridged reruns batches 2-4, causal only batch 4
    assert not (tmp_path / "causal" / ".shard-00002.tmp").exists()
    for mask_type, cap in resumed.items():
        reference = Capture.open(reference_dir / mask_type)
        assert len(cap) == 30 and cap.meta["complete"]
        np.testing.assert_array_equal(cap.eos_states(), reference.eos_states())
        for i in range(30):
            np.testing.assert_array_equal(cap.sample(i).pattern, reference.sample(i).pattern)
        assert cap.records == reference.records


def test_resuming_with_other_settings_is_refused(side_by_side, tiny_vl):
    out, _ = side_by_side
    with pytest.raises(ValueError, match="patterns='eos\\+b', not 'eos'"):
        capture(tiny_vl, "mini-mmeb", "causal", out, **dict(SETTINGS, patterns="eos"))


def test_full_patterns_run_eager_and_hold_the_eos_row(tiny_vl, tmp_path):
    full = capture(tiny_vl, "shapes", "causal", tmp_path / "full", n=3, patterns="full")["causal"]
    eos = capture(tiny_vl, "shapes", "causal", tmp_path / "eos", n=3, patterns="eos")["causal"]
    assert (full.meta["attn_implementation"], eos.meta["attn_implementation"]) == ("eager", "sdpa")
    for i in range(3):
        f, e = full.sample(i), eos.sample(i)
        assert f.pattern.shape[2:] == (len(f.roles), len(f.roles))
        np.testing.assert_allclose(e.pattern[:, :, 0], f.pattern[:, :, f.eos_index], atol=1e-5, rtol=0)


def test_bridged_without_b_equals_bidirectional_and_says_so(tiny_vl, tmp_path):
    caps = capture(tiny_vl, "shapes", ["bidirectional", "eos_bridged_strict"], tmp_path, n=6, patterns="none")
    assert caps["eos_bridged_strict"].meta["b_segment"] == (
        "no sample has B segment: for those, eos_bridged_strict equals bidirectional")
    np.testing.assert_array_equal(caps["eos_bridged_strict"].eos_states(), caps["bidirectional"].eos_states())
    assert caps["bidirectional"].labels("shape")[0] in {"circle", "square", "triangle", "cross", "diamond"}


def test_extra_hooks_and_checkpoint_directories(tmp_path):
    from analysis.models import save_checkpoint

    model, processor = build_tiny("tiny-qwen2.5-vl", seed=2)
    save_checkpoint(model, processor, tmp_path / "ckpt")
    # as the training runner writes it (analysis.train.runner.RECIPE_FILE)
    (tmp_path / "ckpt" / "recipe.yaml").write_text("embed_mask: causal\nseed: 2\n")
    cap = capture(tmp_path / "ckpt", "digits", None, tmp_path / "out", n=5,
                  hooks=["blocks.1.hook_resid_mid", "blocks.2.attn.hook_z"])["causal"]
    assert cap.checkpoint == str((tmp_path / "ckpt").resolve())
    assert cap.meta["checkpoint_recipe"] == {"embed_mask": "causal", "seed": 2}
    assert cap.meta["preset"] == "plain"  # under the recipe's embed_mask: the default mask list is ["causal"]
    assert cap.hook("blocks.1.hook_resid_mid").shape == (5, 128)
    assert cap.hook("blocks.2.attn.hook_z").shape[0] == 5
    assert cap.labels("digit")[0] is not None and cap.records[0].meta["dataset"] == "digits"


def test_the_data_seed_and_the_random_init_seed_are_apart(tmp_path):
    """`cocoa-lens capture --seed` draws the samples, `--init-seed` initialises a tiny backbone: changing one leaves
    the other's part of the capture as it was (states compared against a forward of `build_tiny(seed=...)`)."""
    from analysis.cli import main

    def run(name, *flags):
        args = ["capture", "--checkpoint", "tiny-qwen2.5-vl", "--data", "shapes", "--n", "3", "--mask", "causal",
                "--out", str(tmp_path / name), *flags]
        assert main(args) == 0
        return Capture.open(tmp_path / name, mask_type="causal")

    base, data, init = run("base"), run("data", "--seed", "4"), run("init", "--init-seed", "4")
    assert [r.key for r in init.records] == [r.key for r in base.records] != [r.key for r in data.records]
    assert data.meta["checkpoint"] == base.meta["checkpoint"] != init.meta["checkpoint"]
    model, processor = build_tiny("tiny-qwen2.5-vl", seed=4)
    items = [s.item for s in samples("shapes", n=3, seed=0)[2]]
    with torch.no_grad():
        expected = eos_states(model, encode(processor, model, items), "causal")
    np.testing.assert_allclose(init.embeddings(), expected.numpy(), atol=1e-5)
