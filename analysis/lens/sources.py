"""What a capture runs over: a stream of samples (item, optional B target, labels, metadata).

Named datasets are generated one sample at a time, so memory stays flat however many are asked for:

  mini-mmeb  the queries of `build_mini_mmeb` (same seeds, same order), spread evenly over its 20
             datasets; target = the positive candidate's text; labels = the example's labels;
             metadata dataset / task / meta_task / split / negatives
  shapes     shapes-world images (IND scenes); target = the scene caption; labels = `Scene.labels()`
  digits     scikit-learn digits (a seeded permutation, repeated if n > 1797); target "digit seven";
             label `digit`

A list of `Example`s (query, positive text as target, labels), `EvalDataset`s (all their examples) or
`Item`s (no target, no labels) is taken as given.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from analysis.data import digits, shapes
from analysis.data.items import EvalDataset, Example, Item
from analysis.data.mini_mmeb import TASKS
from analysis.data.vocabulary import NUMBERS

DATASETS = ("mini-mmeb", "shapes", "digits")
DEFAULT_N = 2000


@dataclass
class Sample:
    """One input to capture: `item` is the A segment, `target` (if any) the B text."""

    item: Item
    target: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    meta: dict[str, object] = field(default_factory=dict)


def samples(dataset: str | Sequence, n: int | None = None, seed: int = 0,
            with_target: bool = False) -> tuple[str, int, Iterator[Sample]]:
    """`(name, count, stream)` for a dataset name or a list of Examples / EvalDatasets / Items.

    `with_target=True` checks that every sample has a target text (named datasets always do).
    """
    if isinstance(dataset, str):
        if dataset not in DATASETS:
            raise ValueError(f"unknown dataset {dataset!r}; valid names: {', '.join(DATASETS)} "
                             f"(or pass a list of Example / EvalDataset / Item objects)")
        n = DEFAULT_N if n is None else n
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        stream = {"mini-mmeb": _mini_mmeb, "shapes": _shapes, "digits": _digits}[dataset](n, seed)
        return dataset, n, stream
    given = list(_from_list(dataset))
    if n is not None and n > len(given):
        raise ValueError(f"asked for n={n} samples but the list holds {len(given)}; pass n <= {len(given)} or None")
    given = given[:n] if n is not None else given
    if not given:
        raise ValueError("the dataset list is empty: nothing to capture")
    if with_target and any(s.target is None for s in given):
        raise ValueError("with_target=True needs a target text per sample, but Items carry none: pass Examples "
                         "(their positive candidate's text becomes B) or use with_target=False")
    return "custom", len(given), iter(given)


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
    for i in range(n):
        scene = shapes.sample_scene(rng, "ind")
        item, caption = Item("", shapes.render(scene), key=f"shapes:{seed}:{i}"), scene.caption()
        yield Sample(item, caption, scene.labels(), dict(dataset="shapes", split="ind", caption=caption))


def _digits(n: int, seed: int) -> Iterator[Sample]:
    _, labels = digits.load_digits()
    order = list(range(len(labels)))
    random.Random(f"capture:digits:{seed}").shuffle(order)
    for i in range(n):
        index = order[i % len(order)]
        label = int(labels[index])
        item = Item("", digits.digit_image(index), key=f"digit:{index}")
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


