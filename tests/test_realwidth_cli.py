"""The README's capture command on real-width checkpoints (full and LoRA adapter) with real photographs."""

import json

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_sample_images

from analysis.cli import main
from analysis.lens import Capture


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A JSONL file: a photograph with an instruction and a question, and a text-only line."""
    root = tmp_path_factory.mktemp("inputs")
    Image.fromarray(load_sample_images().images[0]).save(root / "china.jpg")  # 640x427: 345 image tokens
    lines = [{"image": "china.jpg", "text": "what is in the image?", "instruction": "Represent the given image.",
              "labels": {"kind": "photo"}},
             {"text": "a photo of a temple", "labels": {"kind": "caption"}}]
    (root / "inputs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root / "inputs.jsonl"


@pytest.mark.parametrize("checkpoint", ["qwen2-vl-2b", "qwen2-vl-2b-lora"])
def test_capture_command_on_real_width_checkpoints(realwidth, inputs, tmp_path, checkpoint):
    out = tmp_path / "caps"
    argv = ["capture", "--checkpoint", str(realwidth[checkpoint]), "--preset", "vlm2vec", "--data", f"jsonl:{inputs}",
            "--mask", "causal,bidirectional", "--out", str(out)]
    assert main(argv) == 0
    causal, bidirectional = Capture.open(out, mask_type="causal"), Capture.open(out, mask_type="bidirectional")
    assert len(causal) == len(bidirectional) == 2
    assert causal.meta["preset"] == "vlm2vec" and causal.meta["d_model"] == 1536
    photo = causal.sample(0)
    assert photo.segments.count("image") == 345 and "vision" not in photo.segments  # bare <|image_pad|>
    assert photo.segments[-1] == "EOS" and causal.labels("kind") == ["photo", "caption"]
    # the masks were applied: the photograph's embedding differs between them
    assert not np.allclose(causal.embeddings()[0], bidirectional.embeddings()[0], atol=1e-4)


def test_a_jsonl_line_with_a_missing_image_is_named(realwidth, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"image": "gone.jpg", "text": "x"}) + "\n")
    argv = ["capture", "--checkpoint", str(realwidth["qwen2-vl-2b"]), "--data", f"jsonl:{bad}", "--out",
            str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cocoa-lens capture: ") and "line 2" in err and "gone.jpg" in err and "\n" not in err
