"""A user's own data as capture samples with lazy images: a JSONL file, or a folder of images.

JSONL: one JSON object per line with `text`, optional `image` (a path relative to the file's folder, or
absolute), `instruction`, `target` (the B text) and `labels` (an object of strings / numbers); a line
needs text or an image. Image folder: every jpg / jpeg / png / webp / bmp under the folder (hidden files
skipped), sorted by path, labelled `{"folder": <sub-folder path, "." at the top>}`.
Images are checked to exist here and decoded only when embedded.
"""

from __future__ import annotations

import json
from pathlib import Path

from analysis.data.items import Item, Sample
from analysis.errors import UsageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
JSONL_KEYS = ("text", "image", "instruction", "target", "labels")


def load_jsonl(path: str | Path) -> list[Sample]:
    """One `Sample` per non-blank line of `path`; errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"JSONL file {path} not found")
    out = []
    with path.open() as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                out.append(_sample(path, number, line))
    if not out:
        raise UsageError(f"{path} holds no samples; write one JSON object per line, e.g. "
                         f'{{"image": "cat.jpg", "text": "a cat", "target": "a photo of a cat"}}')
    return out


def _sample(path: Path, number: int, line: str) -> Sample:
    where = f"{path} line {number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise UsageError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict):
        raise UsageError(f"{where}: expected a JSON object, got a {type(record).__name__}")
    unknown = sorted(set(record) - set(JSONL_KEYS))
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(JSONL_KEYS)}")
    for key in ("text", "image", "instruction", "target"):
        if record.get(key) is not None and not isinstance(record[key], str):
            raise UsageError(f"{where}: {key} must be a string, got {type(record[key]).__name__}")
    text, image = record.get("text") or "", record.get("image") or None
    if not text and not image:
        raise UsageError(f"{where}: give a text, an image or both")
    file = None
    if image:
        file = Path(image) if Path(image).is_absolute() else path.parent / image
        if not file.is_file():
            raise UsageError(f"{where}: image {image} not found (looked for {file.absolute()})")
    item = Item(text, image_file=file, instruction=record.get("instruction") or "")
    meta = dict(dataset=path.stem, line=number)
    return Sample(item, record.get("target"), _labels(record.get("labels"), where), meta)


def _labels(labels, where: str) -> dict[str, str]:
    if labels is None:
        return {}
    if not isinstance(labels, dict) or any(isinstance(v, (dict, list)) or v is None for v in labels.values()):
        raise UsageError(f'{where}: labels must be an object of strings or numbers, e.g. {{"colour": "red"}}')
    return {str(k): str(v) for k, v in labels.items()}


def load_image_folder(folder: str | Path) -> list[Sample]:
    """One image-only `Sample` per image file under `folder`, labelled by its sub-folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"image folder {folder} not found")
    files = sorted((p.relative_to(folder) for p in folder.rglob("*")
                    if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                   key=lambda p: p.as_posix())
    files = [p for p in files if not any(part.startswith(".") for part in p.parts)]
    if not files:
        raise UsageError(f"no images ({', '.join(s[1:] for s in IMAGE_SUFFIXES)}) under {folder}")
    return [Sample(Item("", image_file=folder / p), None, {"folder": p.parent.as_posix()},
                   dict(dataset=folder.name, file=p.as_posix())) for p in files]
