"""Scikit-learn's handwritten digits (8x8, shipped with the package) as a small set of real images."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from analysis.data.vocabulary import NUMBERS


@lru_cache(maxsize=1)
def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [1797, 8, 8] in 0..255, labels int [1797])."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = np.clip(bunch.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    return images, bunch.target.astype(int)


def digit_image(index: int, *, size: int = 112) -> Image.Image:
    """Digit `index` upsampled to an RGB `size`x`size` image, white on black."""
    images, _ = load_digits()
    return Image.fromarray(images[index], mode="L").resize((size, size), Image.Resampling.BILINEAR).convert("RGB")


def image_id(index: int, *, size: int = 112) -> str:
    """Identity of `digit_image(index, size)`: equal ids, equal pixels."""
    return f"digit[{index}]@{size}"


def digit_name(label: int) -> str:
    return f"digit {NUMBERS[label]}"


def split_indices(split: str) -> np.ndarray:
    """Disjoint index sets: 'train' (first 1200) and 'eval' (the rest)."""
    n = len(load_digits()[1])
    if split == "train":
        return np.arange(0, 1200)
    if split == "eval":
        return np.arange(1200, n)
    raise ValueError(f"unknown digits split {split!r}; valid: train, eval")
