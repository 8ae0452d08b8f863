"""The unit of data: an `Item` (optional image + instruction + text) and an `Example` (query, candidates, labels)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

from PIL import Image

from analysis.errors import UsageError


def _pixels_digest(image: Image.Image) -> str:
    return hashlib.sha1(f"{image.mode}{image.size}".encode() + image.tobytes()).hexdigest()


@dataclass(frozen=True)
class Item:
    """One input to embed: an image given eagerly (`image`) or as a file decoded when needed (`image_file`).

    Equal `key`s mean identical inputs (each is embedded once). The default key is a digest of the
    instruction, the text and the image (its absolute path, or a digest of an eager image's pixels).
    """

    text: str
    image: Image.Image | None = field(default=None, compare=False, hash=False, repr=False)
    key: str = ""
    image_file: str | None = None
    instruction: str = ""

    def __post_init__(self) -> None:
        if self.image is not None and self.image_file is not None:
            raise UsageError("an Item takes an image or an image_file, not both")
        if self.image_file is not None:
            object.__setattr__(self, "image_file", os.path.abspath(self.image_file))
        if not self.key:
            source = (f"file:{self.image_file}" if self.image_file is not None
                      else f"pixels:{_pixels_digest(self.image)}" if self.image is not None else None)
            content = json.dumps([self.instruction, self.text, source])
            object.__setattr__(self, "key", f"item:{hashlib.sha1(content.encode()).hexdigest()[:20]}")

    @property
    def has_image(self) -> bool:
        return self.image is not None or self.image_file is not None

    def load_image(self) -> Image.Image | None:
        """The image in RGB: the eager one, or `image_file` decoded now (every call, nothing cached)."""
        if self.image is not None:
            return self.image if self.image.mode == "RGB" else self.image.convert("RGB")
        if self.image_file is None:
            return None
        try:
            with Image.open(self.image_file) as img:
                return img.convert("RGB")
        except FileNotFoundError:
            raise UsageError(f"image {self.image_file} not found (moved or deleted since the data was read)") from None
        except OSError as err:
            raise UsageError(f"image {self.image_file} cannot be decoded ({err}); replace or remove it") from None


@dataclass
class Example:
    """An MMEB-style example: a query and its candidates, positive first; labels for probing."""

    query: Item
    candidates: list[Item]
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def positive(self) -> Item:
        return self.candidates[0]


@dataclass
class EvalDataset:
    """One evaluation dataset: a meta-task, a split (ind/ood) and the kind of negatives it uses."""

    name: str
    meta_task: str
    split: str
    negatives: str
    examples: list[Example]

    @property
    def key(self) -> str:
        return f"{self.name}/{self.split}"


@dataclass
class Sample:
    """One input to capture: `item` is the A segment, `target` (if any) the B text."""

    item: Item
    target: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    meta: dict[str, object] = field(default_factory=dict)
