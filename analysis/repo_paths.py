"""Paths the notebooks take relative to the repository, so that a default runs from any working folder."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def located(path: str) -> str:
    """A checkpoint path as given (or a tiny backbone name, or ""), else the same path under the repository."""
    return path if not path or path.startswith("tiny-") or Path(path).exists() else str(REPO / path)
