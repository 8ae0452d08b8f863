"""The MMEB-eval loader on a tiny fixture written here in the public layout."""

import json

import pytest
from PIL import Image

from analysis.data import load_mmeb_eval


@pytest.fixture
def mmeb_dir(tmp_path):
    (tmp_path / "images").mkdir()
    for name, colour in (("cat.png", "red"), ("dog.png", "blue")):
        Image.new("RGB", (64, 64), colour).save(tmp_path / "images" / name)
    (tmp_path / "MSCOCO_i2t").mkdir()
    rows = [dict(qry_text="<|image_1|>\nFind a caption for the image.", qry_img_path="images/cat.png",
                 tgt_text=["a cat", "a dog"], tgt_img_path=["", ""]),
            dict(qry_text="<|image_1|>\nFind a caption.", qry_img_path="images/dog.png",
                 tgt_text=["a dog", "a cat"], tgt_img_path=["", ""])]
    (tmp_path / "MSCOCO_i2t" / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "RefCOCO.json").write_text(json.dumps([dict(
        qry_text="<|image_1|> select the red thing", qry_img_path="images/cat.png",
        tgt_text=["", ""], tgt_img_path=["images/cat.png", "images/dog.png"])]))
    return tmp_path


def test_loads_mmeb_layout(mmeb_dir):
    datasets = {d.name: d for d in load_mmeb_eval(mmeb_dir)}
    assert set(datasets) == {"MSCOCO_i2t", "RefCOCO"}
    coco = datasets["MSCOCO_i2t"]
    assert (coco.meta_task, coco.split) == ("retrieval", "ind")
    assert coco.examples[0].query.text == "Find a caption for the image."
    assert coco.examples[0].query.image.getpixel((0, 0)) == (255, 0, 0)
    assert [c.text for c in coco.examples[1].candidates] == ["a dog", "a cat"]
    ref = datasets["RefCOCO"]
    assert (ref.meta_task, ref.split) == ("grounding", "ood")
    assert ref.examples[0].candidates[1].image.getpixel((0, 0)) == (0, 0, 255)


def test_loader_errors_name_the_problem(mmeb_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_mmeb_eval(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="'VizWiz' not found"):
        load_mmeb_eval(mmeb_dir, datasets=["VizWiz"])
    (mmeb_dir / "images" / "cat.png").unlink()
    with pytest.raises(FileNotFoundError, match="cat.png"):
        load_mmeb_eval(mmeb_dir, datasets=["MSCOCO_i2t"])
