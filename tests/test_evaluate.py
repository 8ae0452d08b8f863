"""`evaluate` and `cocoa-lens evaluate` on an MMEB-eval-layout directory written here; capture's P@1 agrees."""

import json

import numpy as np
import pytest
import torch

from analysis.cli import main
from analysis.data.shapes import Scene, ShapeObject, render
from analysis.evaluate import evaluate
from analysis.lens import capture
from analysis.lens.sources import load_eval_datasets
from analysis.metrics.retrieval import score_candidates
from analysis.models import build_tiny

SCENES = {"red.png": ("red", "circle"), "blue.png": ("blue", "square"), "green.png": ("green", "triangle")}


@pytest.fixture(scope="module")
def mmeb_dir(tmp_path_factory):
    """MSCOCO_i2t (image query -> captions) and MSCOCO_t2i (caption -> images), MMEB-V1 layout."""
    root = tmp_path_factory.mktemp("mmeb")
    (root / "images").mkdir()
    for name, (colour, shape) in SCENES.items():
        render(Scene((ShapeObject(colour, shape, "large", "top", "left"),))).save(root / "images" / name)
    names = list(SCENES)
    caption = {n: f"a {c} {s}" for n, (c, s) in SCENES.items()}

    def rotated(first):
        return [first] + [n for n in names if n != first]

    rows = {"MSCOCO_i2t": [dict(qry_text="<|image_1|>\nselect the caption", qry_img_path=f"images/{n}",
                                tgt_text=[caption[c] for c in rotated(n)], tgt_img_path=[""] * 3) for n in names],
            "MSCOCO_t2i": [dict(qry_text=f"select the image {caption[n]}", qry_img_path="",
                                tgt_text=["<|image_1|>\nthe image"] * 3,
                                tgt_img_path=[f"images/{c}" for c in rotated(n)]) for n in names]}
    for dataset, records in rows.items():
        (root / dataset).mkdir()
        (root / dataset / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def test_cli_prints_the_mmeb_table(mmeb_dir, tmp_path, capsys):
    out = tmp_path / "scores.json"
    assert main(["evaluate", "--checkpoint", "tiny-qwen2-vl", "--data", f"mmeb:{mmeb_dir}", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    for fragment in ("MSCOCO_i2t", "MSCOCO_t2i", "retrieval", "split ind", "overall", "robust", "ties"):
        assert fragment in printed
    scores = json.loads(out.read_text())
    assert {r["dataset"] for r in scores["datasets"]} == {"MSCOCO_i2t/ind", "MSCOCO_t2i/ind"}
    assert scores["overall"] == pytest.approx(np.mean([r["score"] for r in scores["datasets"]]))


@pytest.mark.parametrize("preset", ["plain", "vlm2vec", "moca", "cocoa"])
def test_p_at_1_from_captures_equals_evaluate(mmeb_dir, tmp_path, preset):
    """Queries captured on the query side, candidates on the candidate side, scored alike: the same P@1."""
    model, processor = build_tiny("tiny-qwen2.5-vl", seed=1)
    datasets = load_eval_datasets(f"mmeb:{mmeb_dir}")
    result = evaluate(model, processor, datasets, preset=preset)
    for d, record in zip(datasets, result["datasets"]):
        queries = capture((model, processor), [ex.query for ex in d.examples], None, tmp_path / preset / d.name / "q",
                          preset=preset)
        candidates = [c for ex in d.examples for c in ex.candidates]
        cands = capture((model, processor), candidates, None, tmp_path / preset / d.name / "c", preset=preset,
                        side="candidate")
        (q,), (c,) = queries.values(), cands.values()
        q_vectors = torch.tensor(q.embeddings())
        c_vectors = torch.tensor(c.embeddings()).reshape(len(d.examples), -1, q_vectors.shape[1])
        from_capture = score_candidates(q_vectors, c_vectors, dataset=d.key)
        assert from_capture["score"] == record["score"]
        assert from_capture["score_tie_robust"] == record["score_tie_robust"]
