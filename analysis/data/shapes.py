"""Shapes world: procedurally drawn scenes of 1-3 coloured objects on a 3x3 grid, with captions.

Every scene is a value (`Scene`), drawn from a seed, so data are deterministic; `render` turns it into
an RGB image and `caption` into text. Some colour-shape combinations are held out of the in-distribution
(IND) split and used only as the main object of out-of-distribution (OOD) scenes.

Training and evaluation scenes are disjoint by construction: `is_eval_scene` assigns every scene (its
set of objects, i.e. its image) by a fixed hash to evaluation (1 in `EVAL_SHARE`) or training, and
`sample_scene(split="train")` draws only training scenes, `split="ind"` only evaluation scenes. OOD scenes
never occur in training (their main object is a held-out combination).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, replace

from PIL import Image, ImageDraw

from analysis.data.vocabulary import COLOURS, COLUMNS, NUMBERS, ROWS, SHAPES, SIZES

IMAGE_SIZE = 112
RGB = {
    "red": (230, 40, 40), "green": (40, 190, 60), "blue": (50, 90, 240), "yellow": (240, 230, 50),
    "purple": (150, 60, 200), "orange": (250, 140, 20), "white": (245, 245, 245), "cyan": (40, 220, 230),
}
HELD_OUT = frozenset({
    ("red", "triangle"), ("green", "diamond"), ("blue", "cross"), ("yellow", "circle"),
    ("purple", "square"), ("cyan", "triangle"),
})
SPLITS = ("ind", "ood")  # evaluation splits; "train" draws the training scenes
EVAL_SHARE = 4  # one IND scene in EVAL_SHARE is evaluation-only
ATTRIBUTES = ("colour", "shape", "size", "position")
CAPTION_TEMPLATES = ("{}", "there is {}", "the image shows {}", "a picture of {}", "this scene contains {}")


@dataclass(frozen=True)
class ShapeObject:
    colour: str
    shape: str
    size: str
    row: str
    column: str

    @property
    def position(self) -> str:
        return f"{self.row} {self.column}"

    def describe(self, with_position: bool = True) -> str:
        text = f"a {self.size} {self.colour} {self.shape}"
        return f"{text} at the {self.position}" if with_position else text


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]

    @property
    def main(self) -> ShapeObject:
        return self.objects[0]

    def labels(self) -> dict[str, str]:
        """Attribute labels of the main object plus the object count (probing targets)."""
        m = self.main
        return {"colour": m.colour, "shape": m.shape, "size": m.size, "position": m.position,
                "count": NUMBERS[len(self.objects)]}

    def caption(self, template: int = 0) -> str:
        body = " and ".join(o.describe() for o in self.objects)
        return CAPTION_TEMPLATES[template % len(CAPTION_TEMPLATES)].format(body)

    @property
    def content(self) -> str:
        """What the image shows, independent of object order: equal for scenes that render alike."""
        return "; ".join(sorted(o.describe() for o in self.objects))


def image_id(scene: Scene, *, size: int = IMAGE_SIZE) -> str:
    """Identity of `render(scene, size)`: equal ids, equal pixels."""
    return f"scene[{scene.content}]@{size}"


def is_eval_scene(scene: Scene) -> bool:
    """Whether `scene` belongs to evaluation (a fixed hash of its content; 1 in `EVAL_SHARE`)."""
    return int(hashlib.sha1(scene.content.encode()).hexdigest(), 16) % EVAL_SHARE == 0


def _combo_ok(colour: str, shape: str, split: str) -> bool:
    return split == "ood" or (colour, shape) not in HELD_OUT


def sample_scene(rng: random.Random, *, split: str = "ind", n_objects: int | None = None,
                 distinct_shapes: bool = False) -> Scene:
    """Draw a scene: `train` from the training scenes, `ind` from the evaluation scenes (both without
    held-out combinations), `ood` with a held-out colour-shape combination as main object."""
    if split not in ("train", *SPLITS):
        raise ValueError(f"unknown split {split!r}; valid splits: train, {', '.join(SPLITS)}")
    while True:
        scene = _draw_scene(rng, split, n_objects, distinct_shapes)
        if split == "ood" or is_eval_scene(scene) == (split == "ind"):
            return scene


def _draw_scene(rng: random.Random, split: str, n_objects: int | None, distinct_shapes: bool) -> Scene:
    n = n_objects if n_objects is not None else rng.randint(1, 3)
    cells = rng.sample([(r, c) for r in ROWS for c in COLUMNS], n)
    objects: list[ShapeObject] = []
    for i, (row, column) in enumerate(cells):
        while True:
            if i == 0 and split == "ood":
                colour, shape = rng.choice(sorted(HELD_OUT))
            else:
                colour, shape = rng.choice(COLOURS), rng.choice(SHAPES)
            if not _combo_ok(colour, shape, "ind") and not (i == 0 and split == "ood"):
                continue
            if distinct_shapes and any(o.shape == shape for o in objects):
                continue
            break
        objects.append(ShapeObject(colour, shape, rng.choice(SIZES), row, column))
    return Scene(tuple(objects))


def perturb(scene: Scene, rng: random.Random, *, attribute: str | None = None, index: int | None = None,
            split: str = "ind") -> Scene:
    """The same scene with exactly one attribute of one object changed (a hard negative)."""
    index = rng.randrange(len(scene.objects)) if index is None else index
    attribute = rng.choice(ATTRIBUTES) if attribute is None else attribute
    obj = scene.objects[index]
    if attribute == "colour":
        options = [c for c in COLOURS if c != obj.colour and _combo_ok(c, obj.shape, split)]
        new = replace(obj, colour=rng.choice(options))
    elif attribute == "shape":
        options = [s for s in SHAPES if s != obj.shape and _combo_ok(obj.colour, s, split)]
        new = replace(obj, shape=rng.choice(options))
    elif attribute == "size":
        new = replace(obj, size=SIZES[1 - SIZES.index(obj.size)])
    elif attribute == "position":
        taken = {(o.row, o.column) for o in scene.objects}
        free = [(r, c) for r in ROWS for c in COLUMNS if (r, c) not in taken]
        row, column = rng.choice(free)
        new = replace(obj, row=row, column=column)
    else:
        raise ValueError(f"unknown attribute {attribute!r}; valid: {', '.join(ATTRIBUTES)}")
    objects = list(scene.objects)
    objects[index] = new
    return Scene(tuple(objects))


def hard_negatives(scene: Scene, rng: random.Random, k: int, *, split: str = "ind") -> list[Scene]:
    """`k` distinct scenes, each differing from `scene` in one attribute of one object."""
    seen = {scene.caption()}
    out: list[Scene] = []
    for _ in range(50 * k):
        if len(out) == k:
            break
        candidate = perturb(scene, rng, split=split)
        if candidate.caption() not in seen:
            seen.add(candidate.caption())
            out.append(candidate)
    if len(out) < k:
        raise RuntimeError(f"could only find {len(out)} of {k} hard negatives for {scene.caption()!r}")
    return out


def random_scenes(scene: Scene, rng: random.Random, k: int, *, split: str = "ind") -> list[Scene]:
    """`k` scenes drawn from `split`, none showing what `scene` shows and no two alike (random negatives)."""
    seen, out = {scene.content}, []
    while len(out) < k:
        other = sample_scene(rng, split=split)
        if other.content not in seen:
            seen.add(other.content)
            out.append(other)
    return out


def cell_box(obj: ShapeObject, *, size: int = IMAGE_SIZE) -> tuple[int, int, int, int]:
    """Pixel box (left, top, right, bottom) of the grid cell holding `obj`."""
    cell = size / 3
    left, top = COLUMNS.index(obj.column) * cell, ROWS.index(obj.row) * cell
    return round(left), round(top), round(left + cell), round(top + cell)


def _draw(draw: ImageDraw.ImageDraw, obj: ShapeObject, size: int) -> None:
    left, top, right, bottom = cell_box(obj, size=size)
    cx, cy = (left + right) / 2, (top + bottom) / 2
    r = (right - left) * (0.42 if obj.size == "large" else 0.24)
    fill = RGB[obj.colour]
    if obj.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif obj.shape == "square":
        draw.rectangle([cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85], fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=fill)
    elif obj.shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    elif obj.shape == "cross":
        w = r * 0.35
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)


def render(scene: Scene, *, size: int = IMAGE_SIZE) -> Image.Image:
    """RGB image of the scene on a dark background."""
    image = Image.new("RGB", (size, size), (20, 20, 24))
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw(draw, obj, size)
    return image


def crop(image: Image.Image, box: tuple[int, int, int, int], *, size: int = 56) -> Image.Image:
    """A region of `image` resized to `size`x`size` (grounding targets)."""
    return image.crop(box).resize((size, size), Image.Resampling.BILINEAR)
