"""MMEB-eval from a local directory (nothing is downloaded), streamed: images are files, decoded when embedded.

Layout: `root/<Dataset>/*.parquet|*.jsonl|*.json` (or `root/<Dataset>.parquet|jsonl|json`), one record per
query, candidates positive first, image paths relative to `image_root`. Two record layouts:

- version 1, MMEB-V1 (TIGER-Lab/MMEB-eval, read as VLM2Vec's V1 `src/dataset.py` `EvalDataset` does):
  `qry_text`, `qry_img_path`, `tgt_text` (list), `tgt_img_path` (list). `image_root` defaults to
  `root/eval_images` (where the VLM2Vec README unzips MMEB-eval's `images.zip`) if present, else `root`.
- version 2, MMEB-V2 image tasks (ziyjiang/MMEB_Test_Instruct, as read by TIGER-AI-Lab/VLM2Vec
  `src/data/eval_dataset/image_{cls,qa,i2t_eval,t2i_eval,i2i_vg}*.py`): `qry_inst`, `qry_text`, `qry_img_path`,
  `tgt_text`, and for retrieval / grounding `tgt_inst` and `tgt_img_path`. As those parsers do, text-to-image
  datasets ignore the query image, and classification / VQA / image-to-text datasets ignore candidate images
  and `tgt_inst`. `image_root` defaults to `root/image-tasks` (VLM2Vec's `download_data.sh`) if present.

Texts. V1 `qry_text` mixes the dataset's instruction and the input ("<|image_1|> Represent the given image with
the following question: What is ...") with no marker where the instruction ends, so the `<|image_1|>`
placeholder is dropped, the rest (stripped) becomes `Item.text` and `Item.instruction` stays "". V2 gives the
instruction apart: `Item.instruction` = `qry_inst` / `tgt_inst` without the placeholder, stripped; `Item.text` =
`qry_text` / the candidate's `tgt_text`.

Streaming: jsonl lines and parquet row batches are read one at a time; each distinct (instruction, text,
image) becomes one `Item` with `image_file` set, shared by every query that lists it, so loading decodes no
image and an embedding pass decodes each distinct input once. Meta-task and IND/OOD follow MMEB-V1.
"""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path
from typing import Iterator

from analysis.data.items import EvalDataset, Example, Item
from analysis.errors import UsageError

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
SUFFIXES = (".parquet", ".jsonl", ".json")
REQUIRED = {1: ("qry_text", "qry_img_path", "tgt_text", "tgt_img_path"), 2: ("qry_text", "tgt_text")}
IMAGE_ROOT = {1: "eval_images", 2: "image-tasks"}
# MMEB-V2 datasets whose VLM2Vec parser reads no query image (image_t2i) or no candidate image (cls, qa, i2t)
TEXT_QUERY_V2 = frozenset({"VisDial", "MSCOCO_t2i", "VisualNews_t2i", "WebQA", "EDIS", "Wiki-SS-NQ"})
TEXT_CANDIDATES_V2 = frozenset({name for name, task in META_TASK.items() if task in ("classification", "vqa")}
                               | {"MSCOCO_i2t", "VisualNews_i2t"})


def _check_version(version: int) -> None:
    if version not in REQUIRED:
        raise UsageError(f"unknown MMEB-eval layout version {version!r}; use 1 (MMEB-V1) or 2 (MMEB-V2 image tasks)")


def _check_root(root: Path) -> None:
    if not root.is_dir():
        raise UsageError(f"MMEB-eval directory {root} not found; give the folder that holds <Dataset>/*.parquet "
                         f"(or .jsonl / .json) files")


def _files(root: Path, name: str) -> list[Path]:
    folder = root / name
    if folder.is_dir():
        return sorted(p for p in folder.iterdir() if p.suffix in SUFFIXES and not p.name.startswith("."))
    return [p for p in (root / f"{name}{suffix}" for suffix in SUFFIXES) if p.is_file()]


def available_datasets(root: str | Path) -> list[str]:
    """Names of the datasets under `root` (sub-folders holding record files, or top-level record files)."""
    root = Path(root)
    _check_root(root)
    names = {p.stem if p.is_file() else p.name for p in root.iterdir() if not p.name.startswith(".")}
    return sorted(n for n in names if _files(root, n))


def _dataset_files(root: Path, name: str) -> list[Path]:
    files = _files(root, name)
    if not files:
        available = available_datasets(root)
        raise UsageError(f"MMEB-eval dataset {name!r} not found under {root}; available: "
                         f"{', '.join(available) or f'none (expected e.g. {root}/MSCOCO_i2t/test.parquet)'}")
    return files


def _records(path: Path) -> Iterator[tuple[str, dict]]:
    """`(where, record)` one at a time; `where` names the file and the line / record / row."""
    if path.suffix == ".jsonl":
        with path.open() as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    yield f"{path} line {number}", _json(line, f"{path} line {number}")
    elif path.suffix == ".json":
        records = _json(path.read_text(), str(path))
        if not isinstance(records, list):
            raise UsageError(f"{path}: expected a JSON list of records, got a {type(records).__name__}")
        for number, record in enumerate(records):
            yield f"{path} record {number}", record
    else:
        number = 0
        for batch in _parquet(path).iter_batches(batch_size=256):
            for record in batch.to_pylist():
                yield f"{path} row {number}", record
                number += 1


def _json(text: str, where: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None


def _parquet(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError(f"reading {path} needs pyarrow: pip install pyarrow (or convert it to .jsonl)") from None
    return pq.ParquetFile(path)


def count_queries(root: str | Path, name: str) -> int:
    """Number of query records of dataset `name` under `root` (nothing but the records is read)."""
    root = Path(root)
    _check_root(root)
    total = 0
    for path in _dataset_files(root, name):
        if path.suffix == ".parquet":
            total += _parquet(path).metadata.num_rows
        elif path.suffix == ".jsonl":
            with path.open() as f:
                total += sum(1 for line in f if line.strip())
        else:
            total += sum(1 for _ in _records(path))
    return total


class _Reader:
    """Records -> `Example`s whose `Item`s are shared across queries and datasets (one per distinct input)."""

    def __init__(self, root: Path, image_root: Path, version: int):
        self.root, self.image_root, self.version = root, image_root, version
        self.items: dict[tuple[str, str, str], Item] = {}
        self.found: dict[str, bool] = {}

    def item(self, where: str, instruction, text, image_path) -> Item:
        instruction = (instruction or "").replace(PLACEHOLDER, "").strip()
        text = (text or "").replace(PLACEHOLDER, "").strip()
        image_path = image_path or ""
        key = (instruction, text, image_path)
        if key not in self.items:
            file = None
            if image_path:
                file = self.image_root / image_path
                if not self.found.setdefault(image_path, file.is_file()):
                    raise UsageError(f"{where}: image {image_path} not found in {self.image_root}; put MMEB-eval's "
                                     f"images there ({self.root}/{IMAGE_ROOT[self.version]} is used when present) "
                                     f"or pass image_root=")
            self.items[key] = Item(text, image_file=file, instruction=instruction)
        return self.items[key]

    def example(self, name: str, where: str, record: dict) -> Example:
        if not isinstance(record, dict):
            raise UsageError(f"{where}: expected a JSON object per record, got a {type(record).__name__}")
        missing = [k for k in REQUIRED[self.version] if k not in record]
        if missing:
            raise UsageError(f"{where}: record lacks {', '.join(missing)}; MMEB-V{self.version} records need "
                             f"{', '.join(REQUIRED[self.version])}")
        texts = _strings(record["tgt_text"], where, "tgt_text")
        if not texts:
            raise UsageError(f"{where}: tgt_text is empty; each query needs its candidates, positive first")
        if self.version == 1:
            return Example(self.item(where, "", record["qry_text"], record["qry_img_path"]),
                           [self.item(where, "", t, p) for t, p in _pairs(record, texts, where)])
        query_image = "" if name in TEXT_QUERY_V2 else record.get("qry_img_path")
        query = self.item(where, record.get("qry_inst"), record["qry_text"], query_image)
        if name in TEXT_CANDIDATES_V2:
            return Example(query, [self.item(where, "", t, "") for t in texts])
        instruction = record.get("tgt_inst")
        return Example(query, [self.item(where, instruction, t, p) for t, p in _pairs(record, texts, where)])


def _strings(value, where: str, key: str) -> list[str]:
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        raise UsageError(f"{where}: {key} must be a list (one entry per candidate), got {type(value).__name__}")
    return [v or "" for v in value]


def _pairs(record: dict, texts: list[str], where: str) -> list[tuple[str, str]]:
    if record.get("tgt_img_path") is None:
        return [(t, "") for t in texts]
    paths = _strings(record["tgt_img_path"], where, "tgt_img_path")
    if len(paths) != len(texts):
        raise UsageError(f"{where}: tgt_text has {len(texts)} entries but tgt_img_path {len(paths)}; "
                         f"they must pair up, one per candidate")
    return list(zip(texts, paths))


def load_mmeb_eval(root: str | Path, *, datasets: list[str] | None = None, image_root: str | Path | None = None,
                   max_queries: int | None = None, version: int = 1) -> list[EvalDataset]:
    """The MMEB-eval datasets under `root` (all, or those named), each cut to its first `max_queries` queries.

    `version` picks the record layout (1: MMEB-V1, 2: MMEB-V2 image tasks). Items are lazy (`image_file`);
    a missing image, dataset or record key raises `UsageError` naming it.
    """
    _check_version(version)
    root = Path(root)
    _check_root(root)
    if image_root is None:
        image_root = root / IMAGE_ROOT[version] if (root / IMAGE_ROOT[version]).is_dir() else root
    reader = _Reader(root, Path(image_root).absolute(), version)
    names = datasets or available_datasets(root)
    if not names:
        raise UsageError(f"no MMEB-eval datasets under {root}; expected e.g. {root}/MSCOCO_i2t/test.parquet")
    out = []
    for name in names:
        records = (r for path in _dataset_files(root, name) for r in _records(path))
        examples = [reader.example(name, where, record) for where, record in islice(records, max_queries)]
        if not examples:
            raise UsageError(f"MMEB-eval dataset {name!r} under {root} holds no records")
        out.append(EvalDataset(name, META_TASK.get(name, "unknown"), "ood" if name in OOD else "ind", "all",
                               examples))
    return out
