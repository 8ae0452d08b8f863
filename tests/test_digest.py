"""The weights digest: the same files give the same digest anywhere; changed weights give another."""

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

import analysis.digest as digest
from analysis.digest import weights_digest
from analysis.errors import UsageError


def _checkpoint(path, seed=0, **config):
    path.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    tensors = {f"layers.{i}.weight": torch.randn(64, 48, generator=g) for i in range(4)}
    save_file(tensors, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"hidden_size": 48, **config}))
    (path / "scores.json").write_text("{}")
    return tensors


@pytest.fixture(params=["whole", "sampled"])
def mode(request, monkeypatch):
    if request.param == "sampled":  # every file counts as large: headers and per-tensor samples only
        monkeypatch.setattr(digest, "FULL_HASH_BYTES", 0)
    return request.param


def test_same_files_same_digest_and_results_do_not_count(tmp_path, mode):
    _checkpoint(tmp_path / "a")
    first = weights_digest(tmp_path / "a")
    assert first.startswith("sha256:") and weights_digest(tmp_path / "a") == first
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    assert weights_digest(tmp_path / "copy") == first
    (tmp_path / "a" / "scores.json").write_text('{"overall": 0.5}')  # rescoring is not a weight change
    assert weights_digest(tmp_path / "a") == first


def test_changed_weights_change_the_digest(tmp_path, mode):
    tensors = _checkpoint(tmp_path / "a")
    before = weights_digest(tmp_path / "a")
    _checkpoint(tmp_path / "a", seed=1)  # retrained into the same folder
    assert weights_digest(tmp_path / "a") != before
    _checkpoint(tmp_path / "a")
    assert weights_digest(tmp_path / "a") == before
    tensors["layers.2.weight"] = tensors["layers.2.weight"] + 1e-3  # one tensor overwritten
    save_file(tensors, str(tmp_path / "a" / "model.safetensors"))
    assert weights_digest(tmp_path / "a") != before
    _checkpoint(tmp_path / "a", hidden_size=64)  # same weights, other config
    assert weights_digest(tmp_path / "a") != before


def test_other_weight_files_are_sampled(tmp_path, monkeypatch):
    monkeypatch.setattr(digest, "FULL_HASH_BYTES", 0)
    (tmp_path / "pytorch_model.bin").write_bytes(bytes(1 << 20))
    before = weights_digest(tmp_path)
    data = bytearray(1 << 20)
    data[-10] = 1  # the last block is always sampled
    (tmp_path / "pytorch_model.bin").write_bytes(bytes(data))
    assert weights_digest(tmp_path) != before


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(UsageError, match="no checkpoint directory"):
        weights_digest(tmp_path / "missing")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UsageError, match="holds no weight files"):
        weights_digest(tmp_path)
