"""`--data` specs: parsing, the argparse type, capture samples and evaluation datasets from disk."""

import argparse
import json

import pytest
from PIL import Image

from analysis.errors import UsageError
from analysis.lens.sources import DataSpec, check_data_spec, load_eval_datasets, parse_data_spec, samples


@pytest.fixture
def mmeb_dir(tmp_path):
    """MMEB-V1 layout: MSCOCO_i2t with 5 queries, VisDial with 2, N24News with 1; images in the root."""
    Image.new("RGB", (8, 8), "red").save(tmp_path / "q.png")
    for name, n in (("MSCOCO_i2t", 5), ("VisDial", 2), ("N24News", 1)):
        (tmp_path / name).mkdir()
        rows = [dict(qry_text=f"<|image_1|> {name} query {i}", qry_img_path="q.png", tgt_text=[f"pos {i}", "neg"],
                     tgt_img_path=["", ""]) for i in range(n)]
        (tmp_path / name / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return tmp_path


@pytest.mark.parametrize("spec, parsed", [
    ("mini-mmeb", DataSpec("mini-mmeb")),
    ("mmeb:/data/MMEB", DataSpec("mmeb", "/data/MMEB")),
    ("mmeb:/data/MMEB:MSCOCO_i2t, VisDial", DataSpec("mmeb", "/data/MMEB", ("MSCOCO_i2t", "VisDial"))),
    ("mmeb2:v2:ImageNet-1K", DataSpec("mmeb2", "v2", ("ImageNet-1K",))),
    ("jsonl:my data.jsonl", DataSpec("jsonl", "my data.jsonl")),
    ("images:photos/", DataSpec("images", "photos/")),
])
def test_parse_data_spec(spec, parsed):
    assert parse_data_spec(spec) == parsed


@pytest.mark.parametrize("spec", ["mnist", "mmeb:", "mmeb:/data:", "jsonl:", "images", "csv:x.csv"])
def test_bad_spec_is_one_usage_line(spec, capsys):
    with pytest.raises(UsageError, match=r"unknown dataset .*; valid names: mini-mmeb, shapes, digits, mmeb:DIR\["):
        parse_data_spec(spec)
    parser = argparse.ArgumentParser(prog="cocoa-lens capture")
    parser.add_argument("--data", type=check_data_spec)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--data", spec])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("cocoa-lens capture: error: argument --data: unknown dataset") and "jsonl:FILE" in err
    assert parser.parse_args(["--data", "mmeb:x:VisDial"]).data == "mmeb:x:VisDial"


def test_a_directory_with_a_colon_is_a_directory(tmp_path):
    folder = tmp_path / "a:b"
    folder.mkdir()
    assert parse_data_spec(f"mmeb:{folder}") == DataSpec("mmeb", str(folder))


def test_mmeb_samples_are_the_queries_spread_over_datasets(mmeb_dir):
    name, count, stream = samples(f"mmeb:{mmeb_dir}", n=6, with_target=True)
    got = list(stream)
    assert name == f"mmeb:{mmeb_dir}" and count == len(got) == 6
    # 6 over (5, 1, 2) in name order: 2 each, N24News' missing share goes to the others
    assert [s.meta["dataset"] for s in got] == ["MSCOCO_i2t/ind"] * 3 + ["N24News/ind"] + ["VisDial/ind"] * 2
    first = got[0]
    assert (first.item.text, first.target, first.meta["meta_task"], first.meta["split"]) == (
        "MSCOCO_i2t query 0", "pos 0", "retrieval", "ind")
    assert first.item.has_image and first.item.image is None
    assert samples(f"mmeb:{mmeb_dir}")[1] == 8
    _, count, stream = samples(f"mmeb:{mmeb_dir}:VisDial,N24News")
    assert count == 3 and [s.meta["task"] for s in stream] == ["VisDial", "VisDial", "N24News"]
    with pytest.raises(UsageError, match=r"asked for n=9 samples but mmeb:.* holds 8; pass n <= 8"):
        samples(f"mmeb:{mmeb_dir}", n=9)
    with pytest.raises(UsageError, match="'GQA' not found .* available: MSCOCO_i2t, N24News, VisDial"):
        samples(f"mmeb:{mmeb_dir}:GQA")


def test_user_data_samples(tmp_path):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    (tmp_path / "d.jsonl").write_text('{"image": "a.png", "target": "red"}\n{"text": "no target"}\n')
    name, count, stream = samples(f"jsonl:{tmp_path / 'd.jsonl'}", n=1, with_target=True)
    assert count == 1 and next(stream).target == "red"
    with pytest.raises(UsageError, match=r"with_target=True needs a target text per sample, but jsonl:.*d.jsonl "
                                         r"line 2 has no `target` key"):
        samples(f"jsonl:{tmp_path / 'd.jsonl'}", with_target=True)
    name, count, stream = samples(f"images:{tmp_path}")
    assert count == 1 and next(stream).labels == {"folder": "."}
    with pytest.raises(UsageError, match=r"but images:.* has no target texts"):
        samples(f"images:{tmp_path}", with_target=True)
    with pytest.raises(UsageError, match=r"image folder .*missing not found"):
        samples(f"images:{tmp_path / 'missing'}")


def test_load_eval_datasets(mmeb_dir):
    datasets = load_eval_datasets(f"mmeb:{mmeb_dir}:MSCOCO_i2t", n=2)
    assert [(d.key, len(d.examples)) for d in datasets] == [("MSCOCO_i2t/ind", 2)]
    assert [d.name for d in load_eval_datasets(f"mmeb:{mmeb_dir}")] == ["MSCOCO_i2t", "N24News", "VisDial"]
    mini = load_eval_datasets("mini-mmeb", n=2, seed=1)
    assert len(mini) == 20 and all(len(d.examples) == 2 for d in mini)
    with pytest.raises(UsageError, match="jsonl:x.jsonl has no candidate lists to score; evaluate takes mini-mmeb"):
        load_eval_datasets("jsonl:x.jsonl")
