"""What a capture runs over: a stream of samples (item, optional B target, labels, metadata).

Named datasets are generated one sample at a time, so memory stays flat however many are asked for:

  mini-mmeb  the queries of `build_mini_mmeb` (same seeds, same order), spread evenly over its 20
             datasets; target = the positive candidate's text; labels = the example's labels;
             metadata dataset / task / meta_task / split / negatives
  shapes     shapes-world images (IND scenes); target = the scene caption; labels = `Scene.labels()`
  digits     scikit-learn digits (a seeded permutation, repeated if n > 1797); target "digit seven";
             label `digit`

Data on disk (read in file order, `seed` unused; `n` defaults to all, images decoded only when embedded):

  mmeb:DIR[:Dataset,...]   MMEB-V1 eval layout (`analysis.data.mmeb_eval`): the queries, the first of each
  mmeb2:DIR[:Dataset,...]  dataset spread evenly over the datasets (all, or those named); target = the positive
                           candidate's text; metadata dataset / task / meta_task / split / negatives.
                           mmeb2 reads the MMEB-V2 image-task layout
  jsonl:FILE               one sample per line (`analysis.data.user_data.load_jsonl`)
  images:DIR               every image under DIR, label `folder` (`analysis.data.user_data.load_image_folder`)

A list of `Example`s (query, positive text as target, labels), `EvalDataset`s (all their examples) or
`Item`s (no target, no labels) is taken as given.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from analysis.data import digits, shapes
from analysis.data.items import EvalDataset, Example, Item, Sample
from analysis.data.mini_mmeb import TASKS, build_mini_mmeb
from analysis.data.mmeb_eval import available_datasets, count_queries, load_mmeb_eval
from analysis.data.user_data import load_image_folder, load_jsonl
from analysis.data.vocabulary import NUMBERS
from analysis.errors import UsageError

DATASETS = ("mini-mmeb", "shapes", "digits")
SPEC_FORMS = (*DATASETS, "mmeb:DIR[:Dataset,...]", "mmeb2:DIR[:Dataset,...]", "jsonl:FILE", "images:DIR")
MMEB_VERSION = {"mmeb": 1, "mmeb2": 2}
DEFAULT_N = 2000


@dataclass(frozen=True)
class DataSpec:
    """A parsed `--data` value: a named dataset, or a kind (mmeb, mmeb2, jsonl, images) with a path."""

    kind: str
    path: str = ""
    names: tuple[str, ...] = ()


def parse_data_spec(spec: str) -> DataSpec:
    """`spec` -> `DataSpec`; an unknown form raises `UsageError` listing the valid ones."""
    if spec in DATASETS:
        return DataSpec(spec)
    kind, _, rest = spec.partition(":")
    if kind in MMEB_VERSION and rest:
        path, names = (rest, None) if ":" not in rest or Path(rest).is_dir() else rest.rsplit(":", 1)
        datasets = tuple(n.strip() for n in (names or "").split(",") if n.strip())
        if path and (datasets or names is None):
            return DataSpec(kind, path, datasets)
    elif kind in ("jsonl", "images") and rest:
        return DataSpec(kind, rest)
    raise UsageError(f"unknown dataset {spec!r}; valid names: {', '.join(SPEC_FORMS)}")


def check_data_spec(spec: str) -> str:
    """`spec` if it has a valid form (an argparse `type`: a bad one becomes one usage line)."""
    try:
        parse_data_spec(spec)
    except UsageError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return spec


def samples(dataset: str | Sequence, *, n: int | None = None, seed: int = 0,
            with_target: bool = False) -> tuple[str, int, Iterator[Sample]]:
    """`(name, count, stream)` for a data spec (see the module docstring) or a list of Examples / EvalDatasets / Items.

    `with_target=True` checks that every sample has a target text (named datasets always do).
    """
    if n is not None and n < 1:
        raise UsageError(f"n must be at least 1, got {n}")
    if isinstance(dataset, str):
        spec = parse_data_spec(dataset)
        if spec.kind in DATASETS:
            n = DEFAULT_N if n is None else n
            stream = {"mini-mmeb": _mini_mmeb, "shapes": _shapes, "digits": _digits}[spec.kind](n, seed)
            return dataset, n, stream
        given = _mmeb_queries(spec, n) if spec.kind in MMEB_VERSION else _user_data(spec)
        what = f"{dataset} holds"
    else:
        given, what = list(_from_list(dataset)), "the list holds"
    if not given:
        raise UsageError("the dataset list is empty: nothing to capture")
    if n is not None and n > len(given):
        raise UsageError(f"asked for n={n} samples but {what} {len(given)}; pass n <= {len(given)} or None")
    given = given[:n] if n is not None else given
    missing = next((s for s in given if s.target is None), None) if with_target else None
    if missing is not None:
        raise UsageError(f"with_target=True needs a target text per sample, but {_source(dataset, missing)}; "
                         f"use with_target=False or give targets")
    return dataset if isinstance(dataset, str) else "custom", len(given), iter(given)


def _source(dataset, sample: Sample) -> str:
    """Where a sample without a target came from, and how to give one."""
    if "line" in sample.meta:
        return f"{dataset} line {sample.meta['line']} has no `target` key"
    if isinstance(dataset, str):
        return f"{dataset} has no target texts"
    return "Items carry none (pass Examples: their positive candidate's text becomes B)"


def _user_data(spec: DataSpec) -> list[Sample]:
    return load_jsonl(spec.path) if spec.kind == "jsonl" else load_image_folder(spec.path)


def _mmeb_queries(spec: DataSpec, n: int | None) -> list[Sample]:
    """The first queries of each dataset, `n` spread evenly (a short dataset's share goes to the others)."""
    names = list(spec.names) or available_datasets(spec.path)
    if n is None:
        counts = [None] * len(names)
    else:
        sizes = [count_queries(spec.path, name) for name in names]
        counts = _spread(min(n, sum(sizes)), sizes)
    out = []
    for name, count in zip(names, counts):
        if count != 0:
            d = load_mmeb_eval(spec.path, datasets=[name], max_queries=count, version=MMEB_VERSION[spec.kind])[0]
            meta = _meta(d.name, d.split, d.meta_task, d.negatives)
            out += [Sample(ex.query, ex.positive.text, dict(ex.labels), dict(meta)) for ex in d.examples]
    return out


def _spread(n: int, sizes: list[int]) -> list[int]:
    counts = [0] * len(sizes)
    while n:
        for i in (i for i, size in enumerate(sizes) if counts[i] < size):
            if not n:
                break
            counts[i] += 1
            n -= 1
    return counts


def load_eval_datasets(spec: str, *, n: int | None = None, seed: int = 0) -> list[EvalDataset]:
    """Datasets to score for `cocoa-lens evaluate --data`: `mini-mmeb` (`n` per dataset, `seed`) or
    `mmeb:` / `mmeb2:` (the first `n` queries of each dataset, all by default)."""
    parsed = parse_data_spec(spec)
    if parsed.kind == "mini-mmeb":
        return build_mini_mmeb(seed=seed) if n is None else build_mini_mmeb(n, seed=seed)
    if parsed.kind in MMEB_VERSION:
        return load_mmeb_eval(parsed.path, datasets=list(parsed.names) or None, max_queries=n,
                              version=MMEB_VERSION[parsed.kind])
    raise UsageError(f"{spec} has no candidate lists to score; evaluate takes mini-mmeb, mmeb:DIR[:Dataset,...] "
                     f"or mmeb2:DIR[:Dataset,...]")


def _mini_mmeb(n: int, seed: int) -> Iterator[Sample]:
    """The first queries of each mini-MMEB dataset, drawn exactly as `build_mini_mmeb(…, seed)` draws them."""
    datasets = [(task, split) for task in TASKS for split in shapes.SPLITS if split in task.splits]
    per, extra = divmod(n, len(datasets))
    for index, (task, split) in enumerate(datasets):
        rng = random.Random(f"eval:{seed}:{task.name}:{split}")
        meta = _meta(task.name, split, task.meta_task, task.negatives)
        for _ in range(per + (index < extra)):
            example = task.make(rng, split, True)
            yield Sample(example.query, example.positive.text, dict(example.labels), dict(meta))


def _meta(task: str, split: str, meta_task: str, negatives: str) -> dict[str, object]:
    return dict(dataset=f"{task}/{split}", task=task, meta_task=meta_task, split=split, negatives=negatives)


def _shapes(n: int, seed: int) -> Iterator[Sample]:
    rng = random.Random(f"capture:shapes:{seed}")
    for _ in range(n):
        scene = shapes.sample_scene(rng, split="ind")
        item, caption = Item("", shapes.render(scene), key=f"{shapes.image_id(scene)}|"), scene.caption()
        yield Sample(item, caption, scene.labels(), dict(dataset="shapes", split="ind", caption=caption))


def _digits(n: int, seed: int) -> Iterator[Sample]:
    _, labels = digits.load_digits()
    order = list(range(len(labels)))
    random.Random(f"capture:digits:{seed}").shuffle(order)
    for i in range(n):
        index = order[i % len(order)]
        label = int(labels[index])
        item = Item("", digits.digit_image(index), key=f"{digits.image_id(index)}|")
        yield Sample(item, digits.digit_name(label), {"digit": NUMBERS[label]}, dict(dataset="digits", index=index))


def _from_list(objects: Sequence) -> Iterator[Sample]:
    for obj in objects:
        if isinstance(obj, Sample):
            yield obj
        elif isinstance(obj, Example):
            yield Sample(obj.query, obj.positive.text, dict(obj.labels), dict(dataset="custom"))
        elif isinstance(obj, EvalDataset):
            meta = _meta(obj.name, obj.split, obj.meta_task, obj.negatives)
            yield from (Sample(ex.query, ex.positive.text, dict(ex.labels), dict(meta)) for ex in obj.examples)
        elif isinstance(obj, Item):
            yield Sample(obj, None, {}, dict(dataset="custom"))
        else:
            raise TypeError(f"cannot capture a {type(obj).__name__}; pass Example, EvalDataset or Item objects")


