"""Items with lazy images, and a user's own data: JSONL files and image folders."""

import json

import pytest
from PIL import Image

from analysis.data.items import Item
from analysis.data.user_data import load_image_folder, load_jsonl
from analysis.errors import UsageError


def test_item_keys_are_content_digests(tmp_path):
    red = Image.new("RGB", (8, 8), "red")
    assert Item("a cat").key == Item("a cat").key != Item("a dog").key
    assert Item("a cat", instruction="Represent").key != Item("a cat").key
    assert Item("", red).key == Item("", red.copy()).key != Item("", Image.new("RGB", (8, 8), "blue")).key
    assert Item("x", key="mine").key == "mine"
    path = tmp_path / "red.png"
    red.save(path)
    lazy = Item("", image_file=str(path))
    assert lazy.key == Item("", image_file=path).key != Item("other", image_file=path).key
    assert lazy.key != Item("", red).key  # a file is keyed by its path, an eager image by its pixels
    with pytest.raises(UsageError, match="an image or an image_file, not both"):
        Item("", red, image_file=path)


def test_item_loads_images_lazily_every_time(tmp_path):
    path = tmp_path / "grey.png"
    Image.new("L", (8, 6), 128).save(path)
    lazy = Item("", image_file=path)
    assert lazy.has_image and lazy.image is None
    first, second = lazy.load_image(), lazy.load_image()
    assert first.mode == "RGB" and first.size == (8, 6) and first is not second
    eager = Image.new("RGB", (4, 4))
    assert Item("", eager).load_image() is eager and Item("", eager).has_image
    assert Item("text").load_image() is None and not Item("text").has_image
    path.unlink()
    with pytest.raises(UsageError, match="grey.png not found"):
        lazy.load_image()
    path.write_text("not an image")
    with pytest.raises(UsageError, match="grey.png cannot be decoded"):
        lazy.load_image()


@pytest.fixture
def user_dir(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (10, 10), "red").save(tmp_path / "img" / "a.png")
    other = tmp_path / "elsewhere.jpg"
    Image.new("RGB", (10, 10), "blue").save(other)
    lines = [dict(image="img/a.png", text="a red square", target="red", labels=dict(colour="red", n=1)),
             dict(text="only text", instruction="Represent the sentence"),
             dict(image=str(other))]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(x) for x in lines[:2]) + "\n\n" + json.dumps(lines[2]))
    return tmp_path


def test_load_jsonl(user_dir):
    a, b, c = load_jsonl(user_dir / "data.jsonl")
    assert (a.item.text, a.target, a.labels, a.meta) == ("a red square", "red", {"colour": "red", "n": "1"},
                                                         {"dataset": "data", "line": 1})
    assert a.item.image_file == str(user_dir / "img" / "a.png") and a.item.image is None
    assert a.item.load_image().getpixel((0, 0)) == (255, 0, 0)
    assert (b.item.instruction, b.item.has_image, b.target, b.labels) == ("Represent the sentence", False, None, {})
    assert c.meta["line"] == 4 and c.item.text == "" and c.item.load_image().getpixel((0, 0))[2] > 200


@pytest.mark.parametrize("line, message", [
    ('{"image": "img/missing.png", "text": "x"}', "line 2: image img/missing.png not found"),
    ('{"text": "x",', "line 2: not valid JSON"),
    ('["x"]', "line 2: expected a JSON object, got a list"),
    ('{"txt": "x"}', "line 2: unknown key.s. txt; valid keys: text, image, instruction, target, labels"),
    ('{"instruction": "x"}', "line 2: give a text, an image or both"),
    ('{"text": 3}', "line 2: text must be a string"),
    ('{"text": "x", "labels": ["a"]}', "line 2: labels must be an object"),
])
def test_jsonl_errors_name_the_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n")
    with pytest.raises(UsageError, match=f"bad.jsonl {message}"):
        load_jsonl(path)


def test_jsonl_file_errors(tmp_path):
    with pytest.raises(UsageError, match="JSONL file .*none.jsonl not found"):
        load_jsonl(tmp_path / "none.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(UsageError, match="empty.jsonl holds no samples"):
        load_jsonl(tmp_path / "empty.jsonl")


def test_load_image_folder(tmp_path, monkeypatch):
    for rel in ("dogs/b.JPG", "dogs/a.png", "cats/z.webp", "top.bmp", "cats/deep/x.jpeg", ".hidden/h.png",
                "cats/._z.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (6, 6), "white").save(tmp_path / rel, format="PNG")
    (tmp_path / "notes.txt").write_text("not an image")
    opened = []
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a))
    got = load_image_folder(tmp_path)
    assert opened == []
    assert [s.meta["file"] for s in got] == ["cats/deep/x.jpeg", "cats/z.webp", "dogs/a.png", "dogs/b.JPG", "top.bmp"]
    assert [s.labels["folder"] for s in got] == ["cats/deep", "cats", "dogs", "dogs", "."]
    assert all(s.item.text == "" and s.item.has_image and s.target is None for s in got)
    assert len({s.item.key for s in got}) == 5


def test_image_folder_errors(tmp_path):
    with pytest.raises(UsageError, match="image folder .*nowhere not found"):
        load_image_folder(tmp_path / "nowhere")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(UsageError, match=r"no images \(jpg, jpeg, png, webp, bmp\) under"):
        load_image_folder(tmp_path)
