"""Mini-MMEB: the four MMEB-V1 meta-tasks on the shapes world and digits, in MMEB's own shape.

Each query has its own candidate list, positive first, at least 8 candidates; `hard` datasets use
negatives that differ from the positive in one attribute. Shapes datasets come in an `ind` split and an
`ood` split whose main object is a held-out colour-shape combination.

Keys: an image item's key is `<image id>|<text>`, the image id naming everything that makes its pixels
(the scene's objects or the digit index, the size, the crop box), so one key never stands for two inputs.

Training and evaluation are disjoint by construction: `training_examples` draws its (query, positive)
pairs from the training scenes (`shapes.sample_scene(split="train")`, a fixed hash split of the scene
space) and the digits' train indices; `build_mini_mmeb` draws IND queries from the evaluation scenes and
the digits' eval indices, OOD queries around held-out combinations no training pair contains. Negative
candidates (perturbed or random scenes, answer words) may show training scenes, and a grounding crop (one
object in one cell) can equal a training crop. Not disjoint: the shipped base captioner (experiments/bases/)
was pretrained before this split, on pairs drawn from every IND scene.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Callable

from PIL import Image

from analysis.data import digits, shapes
from analysis.data.items import EvalDataset, Example, Item
from analysis.data.vocabulary import COLOURS, COLUMNS, NUMBERS, ROWS, SHAPES

META_TASKS = ("classification", "vqa", "retrieval", "grounding")
N_NEGATIVES = 8
CROP_SIZE = 56


def _image_item(text: str, image: Image.Image, image_id: str) -> Item:
    return Item(text, image, key=f"{image_id}|{text}")


def _scene_item(scene: shapes.Scene, text: str = "") -> Item:
    return _image_item(text, shapes.render(scene), shapes.image_id(scene))


def _crop_item(image: Image.Image, image_id: str, box: tuple[int, int, int, int]) -> Item:
    crop_id = f"{image_id}/crop({','.join(map(str, box))})@{CROP_SIZE}"
    return _image_item("", shapes.crop(image, box, size=CROP_SIZE), crop_id)


def _texts(positive: str, negatives: list[str]) -> list[Item]:
    return [Item(t) for t in [positive, *negatives]]


def _pick(rng: random.Random, options: list[str], exclude: str, k: int = N_NEGATIVES) -> list[str]:
    pool = sorted({o for o in options if o != exclude})
    return rng.sample(pool, min(k, len(pool)))


def _object_cls(rng: random.Random, split: str, negatives: bool) -> Example:
    scene = shapes.sample_scene(rng, split=split, n_objects=1)
    m = scene.main
    positive = f"a {m.colour} {m.shape}"
    options = [f"a {c} {m.shape}" for c in COLOURS] + [f"a {m.colour} {s}" for s in SHAPES]
    negs = _pick(rng, options, positive) if negatives else []
    return Example(_scene_item(scene, "what object is in this image ?"), _texts(positive, negs), scene.labels())


def _position_cls(rng: random.Random, split: str, negatives: bool) -> Example:
    scene = shapes.sample_scene(rng, split=split, n_objects=1)
    positive = scene.main.position
    negs = _pick(rng, [f"{r} {c}" for r in ROWS for c in COLUMNS], positive) if negatives else []
    return Example(_scene_item(scene, "where is the object ?"), _texts(positive, negs), scene.labels())


def _digit_cls(rng: random.Random, split: str, negatives: bool) -> Example:
    images, labels = digits.load_digits()
    index = int(rng.choice(digits.split_indices("train" if split == "train" else "eval")))
    label = int(labels[index])
    positive = digits.digit_name(label)
    negs = [digits.digit_name(d) for d in range(10) if d != label] if negatives else []
    if negatives:
        rng.shuffle(negs)
    query = _image_item("classify the handwritten digit .", digits.digit_image(index), digits.image_id(index))
    return Example(query, _texts(positive, negs), {"digit": NUMBERS[label]})


def _colour_vqa(rng: random.Random, split: str, negatives: bool) -> Example:
    scene = shapes.sample_scene(rng, split=split, distinct_shapes=True)
    m = scene.main
    negs = _pick(rng, list(COLOURS), m.colour, k=len(COLOURS) - 1) if negatives else []
    return Example(_scene_item(scene, f"what colour is the {m.shape} ?"), _texts(m.colour, negs), scene.labels())


def _where_vqa(rng: random.Random, split: str, negatives: bool) -> Example:
    scene = shapes.sample_scene(rng, split=split)
    m = scene.main
    positive = m.describe(with_position=False)
    options = ([f"a {m.size} {c} {m.shape}" for c in COLOURS] + [f"a {m.size} {m.colour} {s}" for s in SHAPES]
               + [shapes.perturb(scene, rng, attribute="size", index=0).main.describe(with_position=False)])
    negs = _pick(rng, options, positive) if negatives else []
    return Example(_scene_item(scene, f"what is at the {m.position} ?"), _texts(positive, negs), scene.labels())


def _count_vqa(rng: random.Random, split: str, negatives: bool) -> Example:
    scene = shapes.sample_scene(rng, split=split)
    positive = NUMBERS[len(scene.objects)]
    negs = _pick(rng, list(NUMBERS[1:9]), positive, k=7) if negatives else []
    return Example(_scene_item(scene, "how many objects are there ?"), _texts(positive, negs), scene.labels())


def _i2t(hard: bool) -> Callable[[random.Random, str, bool], Example]:
    def make(rng: random.Random, split: str, negatives: bool) -> Example:
        scene = shapes.sample_scene(rng, split=split)
        draw = shapes.hard_negatives if hard else shapes.random_scenes
        others = [s.caption() for s in draw(scene, rng, N_NEGATIVES, split=split)]
        return Example(_scene_item(scene, "describe the image ."), _texts(scene.caption(), others if negatives else []),
                       scene.labels())
    return make


def _t2i(rng: random.Random, split: str, negatives: bool) -> Example:
    scene = shapes.sample_scene(rng, split=split)
    others = shapes.hard_negatives(scene, rng, N_NEGATIVES, split=split) if negatives else []
    return Example(Item(scene.caption()), [_scene_item(s) for s in [scene, *others]], scene.labels())


def _shape_ground(rng: random.Random, split: str, negatives: bool) -> Example:
    scene = shapes.sample_scene(rng, split=split, n_objects=rng.randint(2, 3), distinct_shapes=True)
    m, image = scene.main, shapes.render(scene)
    candidates: list[Item] = []
    shown: set[tuple[str, int, int]] = set()

    def add(source: shapes.Scene, cell: shapes.ShapeObject, what: str) -> None:
        """Crop `cell` of `source` unless a candidate already shows the same (equal pixels: a tie)."""
        box = shapes.cell_box(cell)
        view = (what, box[2] - box[0], box[3] - box[1])
        if view not in shown:
            shown.add(view)
            candidates.append(_crop_item(image if source is scene else shapes.render(source), shapes.image_id(source),
                                         box))

    add(scene, m, m.describe(with_position=False))
    if negatives:
        for o in scene.objects[1:]:
            add(scene, o, o.describe(with_position=False))
        taken = {(o.row, o.column) for o in scene.objects}
        row, column = rng.choice([(r, c) for r in ROWS for c in COLUMNS if (r, c) not in taken])
        add(scene, replace(m, row=row, column=column), "empty")
        attributes = iter(("colour", "shape", "size", "colour", "shape", "colour"))
        while len(candidates) < N_NEGATIVES + 1:  # then colour or shape, until the list is full
            other = shapes.perturb(scene, rng, attribute=next(attributes, None) or rng.choice(("colour", "shape")),
                                   index=0, split=split)
            add(other, other.main, other.main.describe(with_position=False))
    query = _image_item(f"select the {m.colour} {m.shape} .", image, shapes.image_id(scene))
    return Example(query, candidates, scene.labels())


def _digit_ground(rng: random.Random, split: str, negatives: bool) -> Example:
    images, labels = digits.load_digits()
    pool = digits.split_indices("train" if split == "train" else "eval")
    chosen: list[int] = []
    while len(chosen) < 3:
        index = int(rng.choice(pool))
        if all(labels[index] != labels[c] for c in chosen):
            chosen.append(index)
    canvas = Image.new("RGB", (shapes.IMAGE_SIZE, shapes.IMAGE_SIZE))
    cell = shapes.IMAGE_SIZE // 3
    boxes = [(i * cell, cell, (i + 1) * cell, 2 * cell) for i in range(3)]
    for index, box in zip(chosen, boxes):
        canvas.paste(digits.digit_image(index, size=cell), box[:2])
    source = f"digits[{','.join(map(str, chosen))}]@{shapes.IMAGE_SIZE}"
    target = rng.randrange(3)
    candidates = [_crop_item(canvas, source, boxes[target])]
    if negatives:
        candidates += [_crop_item(canvas, source, boxes[i]) for i in range(3) if i != target]
        while len(candidates) < N_NEGATIVES + 1:
            other = int(rng.choice(pool))
            item = _image_item("", digits.digit_image(other, size=CROP_SIZE), digits.image_id(other, size=CROP_SIZE))
            if labels[other] != labels[chosen[target]] and item.key not in {c.key for c in candidates}:
                candidates.append(item)
    name = NUMBERS[int(labels[chosen[target]])]
    query = _image_item(f"find the digit {name} .", canvas, source)
    return Example(query, candidates, {"digit": name})


@dataclass(frozen=True)
class Task:
    """A dataset generator: name, MMEB meta-task, kind of negatives and the splits it exists in."""

    name: str
    meta_task: str
    negatives: str
    make: Callable[[random.Random, str, bool], Example]
    splits: tuple[str, ...] = shapes.SPLITS


TASKS: tuple[Task, ...] = (
    Task("ShapesObject", "classification", "hard", _object_cls),
    Task("ShapesPosition", "classification", "all", _position_cls),
    Task("Digits", "classification", "all", _digit_cls, ("ind",)),
    Task("ShapesColourVQA", "vqa", "all", _colour_vqa),
    Task("ShapesWhereVQA", "vqa", "hard", _where_vqa),
    Task("ShapesCountVQA", "vqa", "all", _count_vqa),
    Task("ShapesI2T", "retrieval", "hard", _i2t(hard=True)),
    Task("ShapesI2TRandom", "retrieval", "random", _i2t(hard=False)),
    Task("ShapesT2I", "retrieval", "hard", _t2i),
    Task("ShapesGround", "grounding", "hard", _shape_ground),
    Task("DigitsGround", "grounding", "hard", _digit_ground, ("ind",)),
)
TASK_NAMES = tuple(t.name for t in TASKS)


def _task(name: str) -> Task:
    for t in TASKS:
        if t.name == name:
            return t
    raise ValueError(f"unknown mini-MMEB task {name!r}; valid: {', '.join(TASK_NAMES)}")


def build_mini_mmeb(n_per_dataset: int = 100, *, seed: int = 0, splits: tuple[str, ...] = shapes.SPLITS,
                    tasks: tuple[str, ...] | None = None) -> list[EvalDataset]:
    """Evaluation datasets, deterministic in `seed`: IND queries show evaluation scenes only."""
    datasets = []
    for task in (_task(n) for n in (tasks or TASK_NAMES)):
        for split in (s for s in splits if s in task.splits):
            rng = random.Random(f"eval:{seed}:{task.name}:{split}")
            examples = [task.make(rng, split, True) for _ in range(n_per_dataset)]
            datasets.append(EvalDataset(task.name, task.meta_task, split, task.negatives, examples))
    return datasets


def training_examples(n: int, *, seed: int = 0, tasks: tuple[str, ...] | None = None) -> list[Example]:
    """`n` (query, positive) training pairs mixed evenly over `tasks`, from the training scenes and digits."""
    chosen = [_task(name) for name in (tasks or TASK_NAMES)]
    rng = random.Random(f"train:{seed}")
    out = []
    for i in range(n):
        task = chosen[i % len(chosen)]
        out.append(task.make(rng, "train", False))
    rng.shuffle(out)
    return out
