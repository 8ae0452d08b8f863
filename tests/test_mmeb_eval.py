"""The MMEB-eval loader on small directories written here in the public layouts (V1 and V2 image tasks)."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from analysis.data import load_mmeb_eval
from analysis.data.mmeb_eval import available_datasets, count_queries
from analysis.errors import UsageError

COLOURS = {"cat.png": "red", "dog.png": "blue", "owl.png": "green"}
CAPTIONS = {"cat.png": "a cat", "dog.png": "a dog", "owl.png": "an owl"}


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def _rotate(names, first):
    return [first] + [n for n in names if n != first]


@pytest.fixture
def mmeb_dir(tmp_path):
    """MSCOCO_i2t (jsonl), MSCOCO_t2i (parquet), RefCOCO (top-level json); images in eval_images/, shared."""
    images = tmp_path / "eval_images" / "coco"
    images.mkdir(parents=True)
    for name, colour in COLOURS.items():
        Image.new("RGB", (32, 24), colour).save(images / name)
    names = list(COLOURS)
    _jsonl(tmp_path / "MSCOCO_i2t" / "test.jsonl", [
        dict(qry_text="<|image_1|>\nFind an image caption describing the given everyday image.",
             qry_img_path=f"coco/{n}", tgt_text=[CAPTIONS[c] for c in _rotate(names, n)], tgt_img_path=["", "", ""])
        for n in names])
    rows = [dict(qry_text=f"Find me an everyday image that matches the given caption: {CAPTIONS[n]}",
                 qry_img_path="", tgt_text=["<|image_1|>\nRepresent the given image."] * 3,
                 tgt_img_path=[f"coco/{c}" for c in _rotate(names, n)]) for n in names]
    (tmp_path / "MSCOCO_t2i").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "MSCOCO_t2i" / "test-00000-of-00001.parquet")
    (tmp_path / "RefCOCO.json").write_text(json.dumps([dict(
        qry_text="<|image_1|> Select the portion of the image that isolates the object: red thing",
        qry_img_path="coco/cat.png", tgt_text=["<|image_1|>\nRepresent the given cropped image of the object."] * 2,
        tgt_img_path=["coco/cat.png", "coco/dog.png"])]))
    return tmp_path


@pytest.fixture
def decodes(monkeypatch):
    """Paths passed to PIL's `Image.open`, in order."""
    opened = []
    real = Image.open

    def counting(fp, *args, **kwargs):
        opened.append(str(fp))
        return real(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting)
    return opened


def test_loads_mmeb_v1_layout(mmeb_dir):
    assert available_datasets(mmeb_dir) == ["MSCOCO_i2t", "MSCOCO_t2i", "RefCOCO"]
    datasets = {d.name: d for d in load_mmeb_eval(mmeb_dir)}
    coco = datasets["MSCOCO_i2t"]
    assert (coco.meta_task, coco.split, coco.key) == ("retrieval", "ind", "MSCOCO_i2t/ind")
    query = coco.examples[0].query
    assert (query.text, query.instruction) == ("Find an image caption describing the given everyday image.", "")
    assert query.image is None and query.has_image and query.image_file.endswith("eval_images/coco/cat.png")
    assert query.load_image().getpixel((0, 0)) == (255, 0, 0)
    assert [c.text for c in coco.examples[1].candidates] == ["a dog", "a cat", "an owl"]
    assert not any(c.has_image for c in coco.examples[1].candidates)
    t2i = datasets["MSCOCO_t2i"]
    assert not t2i.examples[2].query.has_image
    assert t2i.examples[2].query.text == "Find me an everyday image that matches the given caption: an owl"
    assert t2i.examples[2].positive.text == "Represent the given image."
    assert t2i.examples[2].positive.load_image().getpixel((0, 0)) == (0, 128, 0)
    ref = datasets["RefCOCO"]
    assert (ref.meta_task, ref.split) == ("grounding", "ood")
    assert ref.examples[0].query.text == "Select the portion of the image that isolates the object: red thing"
    assert ref.examples[0].candidates[1].load_image().getpixel((0, 0)) == (0, 0, 255)


def test_one_item_per_distinct_input_and_loading_decodes_nothing(mmeb_dir, decodes):
    datasets = load_mmeb_eval(mmeb_dir, datasets=["MSCOCO_t2i", "RefCOCO"])
    assert decodes == []
    t2i = datasets[0]
    occurrences = [c for ex in t2i.examples for c in ex.candidates]
    assert len(occurrences) == 9 and len({id(c) for c in occurrences}) == 3  # shared objects, not copies
    assert len({c.key for c in occurrences}) == 3
    # the RefCOCO crops carry another text, so the same file is another input
    assert not {c.key for c in occurrences} & {c.key for c in datasets[1].examples[0].candidates}
    # an embedding pass over distinct keys decodes each distinct input once; nothing is cached on the item
    distinct = list({c.key: c for c in occurrences}.values())
    for item in distinct:
        item.load_image()
    assert sorted(decodes) == sorted(c.image_file for c in distinct)
    distinct[0].load_image()
    assert len(decodes) == 4


def test_max_queries_names_and_image_root(mmeb_dir, tmp_path_factory):
    (d,) = load_mmeb_eval(mmeb_dir, datasets=["MSCOCO_i2t"], max_queries=2)
    assert len(d.examples) == 2
    assert count_queries(mmeb_dir, "MSCOCO_i2t") == 3 and count_queries(mmeb_dir, "MSCOCO_t2i") == 3
    moved = tmp_path_factory.mktemp("elsewhere")
    (mmeb_dir / "eval_images").rename(moved / "images")
    (d,) = load_mmeb_eval(mmeb_dir, datasets=["RefCOCO"], image_root=moved / "images")
    assert d.examples[0].query.load_image().size == (32, 24)


def test_loader_errors_name_the_problem(mmeb_dir, tmp_path):
    with pytest.raises(UsageError, match="MMEB-eval directory .*nowhere not found"):
        load_mmeb_eval(tmp_path / "nowhere")
    with pytest.raises(UsageError, match="'VizWiz' not found under .*; available: MSCOCO_i2t, MSCOCO_t2i, RefCOCO"):
        load_mmeb_eval(mmeb_dir, datasets=["VizWiz"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="no MMEB-eval datasets under"):
        load_mmeb_eval(empty)
    (mmeb_dir / "eval_images" / "coco" / "owl.png").unlink()
    with pytest.raises(UsageError, match=r"test-00000-of-00001.parquet row 0: image coco/owl.png not found in"):
        load_mmeb_eval(mmeb_dir, datasets=["MSCOCO_t2i"])
    with pytest.raises(UsageError, match=r"MSCOCO_i2t/test.jsonl line 3: image coco/owl.png not found"):
        load_mmeb_eval(mmeb_dir, datasets=["MSCOCO_i2t"])


def test_bad_records_name_file_and_line(tmp_path):
    good = dict(qry_text="q", qry_img_path="", tgt_text=["a", "b"], tgt_img_path=["", ""])
    path = tmp_path / "OK-VQA" / "test.jsonl"
    _jsonl(path, [good, {k: v for k, v in good.items() if k != "tgt_img_path"}])
    with pytest.raises(UsageError, match=r"OK-VQA/test.jsonl line 2: record lacks tgt_img_path; MMEB-V1 records need"):
        load_mmeb_eval(tmp_path)
    path.write_text(json.dumps(good) + "\n{oops\n")
    with pytest.raises(UsageError, match=r"test.jsonl line 2: not valid JSON"):
        load_mmeb_eval(tmp_path)
    _jsonl(path, [dict(good, tgt_img_path=[""])])
    with pytest.raises(UsageError, match=r"line 1: tgt_text has 2 entries but tgt_img_path 1"):
        load_mmeb_eval(tmp_path)
    _jsonl(path, [dict(good, tgt_text="a")])
    with pytest.raises(UsageError, match=r"line 1: tgt_text must be a list"):
        load_mmeb_eval(tmp_path)


def test_loads_mmeb_v2_image_layout(tmp_path):
    images = tmp_path / "image-tasks" / "img"
    images.mkdir(parents=True)
    for name, colour in COLOURS.items():
        Image.new("RGB", (16, 16), colour).save(images / name)
    _jsonl(tmp_path / "ImageNet-1K" / "test.jsonl", [dict(
        qry_inst="<|image_1|> Represent the given image for classification", qry_text="", qry_img_path="img/cat.png",
        tgt_text=["tabby cat", "beagle"], tgt_img_path=["img/owl.png", ""])])
    _jsonl(tmp_path / "VisualNews_t2i" / "test.jsonl", [dict(
        qry_inst="Retrieve an image of this news caption.", qry_text="A dog wins.", qry_img_path="img/owl.png",
        tgt_inst="<|image_1|> Represent the given image.", tgt_text=["", ""], tgt_img_path=["img/dog.png",
                                                                                            "img/cat.png"])])
    _jsonl(tmp_path / "RefCOCO-Matching" / "test.jsonl", [dict(
        qry_inst="<|image_1|> Select the portion of the image that follows the language expressions.",
        qry_text="the red one", qry_img_path="img/cat.png", tgt_inst="<|image_1|> Select the portion of the image "
        "that follows the language expressions.", tgt_text=["red one", "blue one"],
        tgt_img_path=["img/cat.png", "img/cat.png"])])
    cls, t2i, vg = (load_mmeb_eval(tmp_path, datasets=[n], version=2)[0]
                    for n in ("ImageNet-1K", "VisualNews_t2i", "RefCOCO-Matching"))
    query = cls.examples[0].query
    assert (query.instruction, query.text, query.image_file.endswith("image-tasks/img/cat.png")) == (
        "Represent the given image for classification", "", True)
    assert [(c.text, c.has_image) for c in cls.examples[0].candidates] == [("tabby cat", False), ("beagle", False)]
    query, positive = t2i.examples[0].query, t2i.examples[0].positive
    assert (query.instruction, query.text, query.has_image) == ("Retrieve an image of this news caption.",
                                                               "A dog wins.", False)
    assert (positive.instruction, positive.text, positive.load_image().getpixel((0, 0))) == (
        "Represent the given image.", "", (0, 0, 255))
    a, b = vg.examples[0].candidates
    assert (a.instruction, a.text, b.text) == ("Select the portion of the image that follows the language "
                                               "expressions.", "red one", "blue one")
    assert a.image_file == b.image_file and a.key != b.key
    with pytest.raises(UsageError, match="record lacks qry_text; MMEB-V2 records need qry_text, tgt_text"):
        _jsonl(tmp_path / "GQA" / "test.jsonl", [dict(qry_inst="q", tgt_text=["a"])])
        load_mmeb_eval(tmp_path, datasets=["GQA"], version=2)
    with pytest.raises(UsageError, match="unknown MMEB-eval layout version 3"):
        load_mmeb_eval(tmp_path, version=3)
