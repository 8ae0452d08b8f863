"""The unit of data: an `Item` (optional image + text) and an `Example` (query, candidates, labels)."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image


@dataclass(frozen=True)
class Item:
    """One input to embed. Equal `key`s mean identical inputs (used to embed each only once)."""

    text: str
    image: Image.Image | None = field(default=None, compare=False, hash=False)
    key: str = ""

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", self.text if self.image is None else f"{self.text}|{id(self.image)}")


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
    """One mini-MMEB dataset: a meta-task, a split (ind/ood) and the kind of negatives it uses."""

    name: str
    meta_task: str
    split: str
    negatives: str
    examples: list[Example]

    @property
    def key(self) -> str:
        return f"{self.name}/{self.split}"
