"""Shared fixtures: offline Hugging Face, deterministic single-process torch, tiny models built once."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from analysis.models import TINY_BACKBONES, build_tiny  # noqa: E402

torch.set_num_threads(1)  # tiny models: more threads only add overhead


@pytest.fixture(scope="session", params=TINY_BACKBONES)
def tiny(request):
    """(name, model, processor) for each embedded backbone, random weights, eager attention."""
    model, processor = build_tiny(request.param, seed=0)
    return request.param, model, processor


@pytest.fixture(scope="session")
def realwidth(tmp_path_factory):
    """Real-width 2-layer checkpoint directories, written once per session (tests/realwidth.py, ~20 s, ~3 GB RSS):
    {"qwen2-vl-2b", "qwen2.5-vl-3b", "qwen2-vl-2b-lora", "qwen2-vl-2b-dora"} -> Path."""
    from realwidth import write_all

    return write_all(tmp_path_factory.mktemp("realwidth"))


@pytest.fixture(scope="session")
def realwidth_qwen3(tmp_path_factory):
    """The real-width 2-layer Qwen3-VL-2B stand-in, written once per session (tests/realwidth.py, ~10 s, ~3 GB RSS):
    {"qwen3-vl-2b": Path}."""
    from realwidth import QWEN3_BACKBONE, write_qwen3_checkpoint

    return {QWEN3_BACKBONE: write_qwen3_checkpoint(tmp_path_factory.mktemp("realwidth-qwen3") / QWEN3_BACKBONE)}
