"""Loader for the public MMEB-eval layout kept in a local directory (nothing is downloaded).

Layout: `root/<Dataset>/*.jsonl|*.json|*.parquet` (or `root/<Dataset>.jsonl`), one record per query with
`qry_text`, `qry_img_path`, `tgt_text` (list) and `tgt_img_path` (list), positive first; image paths are
relative to `image_root` (default: `root`). The `<|image_1|>` placeholder in texts is dropped, since our
encoder always puts the image before the text.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from analysis.data.items import EvalDataset, Example, Item

META_TASK = {
    **dict.fromkeys(["ImageNet-1K", "N24News", "HatefulMemes", "VOC2007", "SUN397", "Place365", "ImageNet-A",
                     "ImageNet-R", "ObjectNet", "Country211"], "classification"),
    **dict.fromkeys(["OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA", "ChartQA", "Visual7W", "ScienceQA",
                     "VizWiz", "GQA", "TextVQA"], "vqa"),
    **dict.fromkeys(["VisDial", "CIRR", "VisualNews_t2i", "VisualNews_i2t", "MSCOCO_t2i", "MSCOCO_i2t", "NIGHTS",
                     "WebQA", "FashionIQ", "Wiki-SS-NQ", "OVEN", "EDIS"], "retrieval"),
    **dict.fromkeys(["MSCOCO", "RefCOCO", "RefCOCO-Matching", "Visual7W-Pointing"], "grounding"),
}
OOD = frozenset({"Place365", "ImageNet-A", "ImageNet-R", "ObjectNet", "Country211", "ScienceQA", "VizWiz", "GQA",
                 "TextVQA", "FashionIQ", "Wiki-SS-NQ", "OVEN", "EDIS", "RefCOCO", "RefCOCO-Matching",
                 "Visual7W-Pointing"})
PLACEHOLDER = "<|image_1|>"
REQUIRED = ("qry_text", "qry_img_path", "tgt_text", "tgt_img_path")


def _records(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if path.suffix == ".json":
        return json.loads(path.read_text())
    if path.suffix == ".parquet":
        import pandas as pd

        return pd.read_parquet(path).to_dict("records")
    raise ValueError(f"unsupported MMEB-eval file {path}; use .jsonl, .json or .parquet")


def _files(root: Path, name: str) -> list[Path]:
    folder = root / name
    if folder.is_dir():
        return sorted(p for p in folder.iterdir() if p.suffix in (".jsonl", ".json", ".parquet"))
    return [p for p in (root / f"{name}.jsonl", root / f"{name}.json", root / f"{name}.parquet") if p.exists()]


def _item(text: str, image_path: str, image_root: Path) -> Item:
    text = text.replace(PLACEHOLDER, "").strip()
    if not image_path:
        return Item(text)
    path = image_root / image_path
    if not path.exists():
        raise FileNotFoundError(f"MMEB-eval image {path} is missing; pass image_root= the folder holding the images")
    with Image.open(path) as img:
        return Item(text, img.convert("RGB"), key=f"{text}|{image_path}")


def load_mmeb_eval(root: str | Path, datasets: list[str] | None = None, image_root: str | Path | None = None,
                   max_queries: int | None = None) -> list[EvalDataset]:
    """Read MMEB-eval datasets from `root` into `EvalDataset`s (meta-task and IND/OOD from MMEB-V1)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"MMEB-eval directory {root} does not exist")
    image_root = Path(image_root) if image_root else root
    names = datasets or sorted(n for n in META_TASK if _files(root, n))
    if not names:
        raise FileNotFoundError(f"no MMEB-eval datasets under {root}; expected e.g. {root}/MSCOCO_i2t/test.jsonl")
    out = []
    for name in names:
        files = _files(root, name)
        if not files:
            raise FileNotFoundError(f"dataset {name!r} not found under {root}")
        records = [r for f in files for r in _records(f)][:max_queries]
        examples = []
        for i, r in enumerate(records):
            missing = [k for k in REQUIRED if k not in r]
            if missing:
                raise ValueError(f"{name} record {i} lacks {', '.join(missing)}; MMEB-eval records need {REQUIRED}")
            query = _item(r["qry_text"], r["qry_img_path"], image_root)
            candidates = [_item(t, p, image_root) for t, p in zip(list(r["tgt_text"]), list(r["tgt_img_path"]))]
            examples.append(Example(query, candidates))
        out.append(EvalDataset(name, META_TASK.get(name, "unknown"), "ood" if name in OOD else "ind", "all", examples))
    return out
