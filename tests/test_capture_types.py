"""Typed capture records: settings (equal settings resume, a changed one is named), sample records and samples
read back from a capture written with numpy alone, the one token-labelling rule, and reading without torch."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from analysis.lens.store import (
    FORMAT,
    INDEX,
    Capture,
    CapturedSample,
    CaptureSettings,
    SampleRecord,
    ShardWriter,
    token_labels,
)

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = CaptureSettings(format=FORMAT, checkpoint="ckpt", checkpoint_digest="sha256:0", preset="plain",
                           mask_type="eos_bridged", dataset="toy", seed=0, n=2, with_target=True, patterns="eos",
                           hooks=("blocks.0.hook_resid_mid",), dtype="float32")
DETAILS = dict(n_layers=2, n_heads=1, d_model=3)
# roles A=0 EOS=1 B=2; segments index analysis.presets.SEGMENTS (template 0, vision 2, image 3, text 4, EOS 5, B 6)
TOKENS = [dict(roles=[0, 0, 0, 0, 1, 2], segments=[0, 3, 3, 4, 5, 6], is_image=[0, 1, 1, 0, 0, 0]),
          dict(roles=[0, 0, 1], segments=[0, 4, 5], is_image=[0, 0, 0])]
RECORDS = [SampleRecord("a", "red", None, True, "a red square", True, {"colour": "red"}, {"dataset": "toy"},
                        (1, 4, 2)),
           SampleRecord("b", "blue", "Find it", False, None, False, {"colour": "blue"}, {"dataset": "toy"})]


def _sample(i: int) -> dict:
    t, n = TOKENS[i], len(TOKENS[i]["roles"])
    rng = np.random.default_rng(i)
    return dict(eos_resid=rng.normal(size=(3, 3)).astype(np.float32), content_mean=np.zeros((3, 3), np.float32),
                eos_final=rng.normal(size=3).astype(np.float32), embedding=np.ones(3, np.float32),
                eos_index=t["roles"].index(1), input_ids=np.arange(n, dtype=np.int32) + 10 * i,
                roles=np.array(t["roles"]), is_image=np.array(t["is_image"], bool), segments=np.array(t["segments"]),
                hooks={"blocks.0.hook_resid_mid": np.zeros(3, np.float32)},
                pattern=rng.random((2, 1, 1, n)).astype(np.float32), query_positions=np.array([t["roles"].index(1)]),
                record=RECORDS[i])


@pytest.fixture
def written(tmp_path) -> Path:
    writer = ShardWriter(tmp_path, SETTINGS, shard_size=1, details=DETAILS)
    for i in range(2):
        writer.add(_sample(i))
    writer.finish()
    return tmp_path


def test_settings_round_trip_through_the_index(written):
    index = json.loads((written / INDEX).read_text())
    assert CaptureSettings.from_index(index) == SETTINGS == Capture.open(written).settings
    assert index["hooks"] == ["blocks.0.hook_resid_mid"] and "world_size" not in index and "first" not in index
    assert index["n_layers"] == 2 and index["complete"] and index["n_with_b"] == 1
    ranked = dataclasses.replace(SETTINGS, world_size=2, first=4)
    assert CaptureSettings.from_index(ranked.to_index()) == ranked and ranked.to_index()["first"] == 4


def test_equal_settings_resume(written):
    writer = ShardWriter(written, CaptureSettings.from_index(SETTINGS.to_index()), details=DETAILS)
    assert writer.n_done == 2


@pytest.mark.parametrize("name, value, message", [
    ("seed", 1, "holds a capture with seed=0, not 1: rerun with the same settings"),
    ("hooks", (), r"holds a capture with hooks=\['blocks.0.hook_resid_mid'\], not \[\]"),
    ("mask_type", "causal", "holds a capture with mask_type='eos_bridged', not 'causal'"),
    ("world_size", 2, "holds a capture with world_size=None, not 2"),
    ("checkpoint_digest", "sha256:1", "the checkpoint at ckpt changed since the capture in .* began \\(weights "
                                      "digest 'sha256:0', now 'sha256:1'\\): delete"),
])
def test_a_changed_setting_refuses_to_resume_and_is_named(written, name, value, message):
    changed = dataclasses.replace(SETTINGS, **{name: value})
    assert SETTINGS.differences(changed) == [name]
    with pytest.raises(ValueError, match=message):
        ShardWriter(written, changed, details=DETAILS)


def test_the_first_differing_setting_is_named(written):
    with pytest.raises(ValueError, match="with checkpoint='ckpt', not 'other'"):  # checkpoint comes before the digest
        ShardWriter(written, dataclasses.replace(SETTINGS, checkpoint="other", checkpoint_digest="x", seed=3))


def test_records_and_samples_read_back_typed(written):
    cap = Capture.open(written)
    assert cap.records == RECORDS and cap.labels("colour") == ["red", "blue"]
    first = json.loads((written / "shard-00000" / "records.json").read_text())
    assert first == [dict(key="a", text="red", instruction=None, has_image=True, target="a red square", has_b=True,
                          labels={"colour": "red"}, meta={"dataset": "toy"}, image_grid=[1, 4, 2])]
    assert SampleRecord.from_json({k: v for k, v in first[0].items() if k != "image_grid"}).image_grid is None
    s = cap.sample(0)
    assert isinstance(s, CapturedSample) and s.record == RECORDS[0]
    assert s.roles == ["A", "A", "A", "A", "EOS", "B"]
    assert s.segments == ["template", "image", "image", "text", "EOS", "B"]
    assert s.is_image.tolist() == [False, True, True, False, False, False]
    assert s.token_labels() == ["text", "image", "image", "text", "EOS", "B"]
    assert s.eos_index == 4 and s.query_positions.tolist() == [4] and s.pattern.shape == (2, 1, 1, 6)
    np.testing.assert_array_equal(s.eos_resid, _sample(0)["eos_resid"])
    np.testing.assert_array_equal(s.pattern, _sample(0)["pattern"])
    last = cap.sample(-1)
    assert last.record.key == "b" and last.token_labels() == ["text", "text", "EOS"] and last.input_ids.tolist() == [
        10, 11, 12]
    assert [s.record.key for s in cap] == ["a", "b"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.record = RECORDS[1]


def test_token_labels_is_the_one_rule():
    assert token_labels(["A", "A", "EOS", "B"], [True, False, False, False]) == ["image", "text", "EOS", "B"]
    with pytest.raises(ValueError, match="3 roles for 2 image flags"):
        token_labels(["A", "A", "EOS"], [True, False])


def test_reading_a_capture_imports_no_torch(written):
    script = (f"import sys\nfrom analysis.lens import Capture\ncap = Capture.open({str(written)!r})\n"
              "s = cap.sample(0)\nassert s.token_labels()[1] == 'image' and cap.records[1].key == 'b'\n"
              "cap.eos_states(); cap.embeddings(); cap.hook('blocks.0.hook_resid_mid'); cap.settings\n"
              "loaded = [m for m in ('torch', 'transformers', 'transformer_lens') if m in sys.modules]\n"
              "assert not loaded, loaded\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
