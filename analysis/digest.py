"""A cheap digest of a checkpoint's weights: it changes whenever the weights do, without reading gigabytes.

Per safetensors file: its name, size and header (tensor names, dtypes, shapes, offsets), plus a hash of
sampled data blocks (the first, the last and up to 62 spread between them, 64 KiB each); files under
16 MiB are hashed whole. Retraining into the same directory changes the data, so the digest changes.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

BLOCK, SAMPLES, WHOLE = 64 << 10, 64, 16 << 20


def file_digest(path: Path, hasher) -> None:
    """Feed `path`'s name, size, header and sampled (or all) bytes into `hasher`."""
    size = path.stat().st_size
    hasher.update(f"{path.name}:{size}:".encode())
    with open(path, "rb") as f:
        if size <= WHOLE:
            hasher.update(f.read())
            return
        (n,) = struct.unpack("<Q", f.read(8))
        hasher.update(f.read(n))
        step = max((size - BLOCK) // (SAMPLES - 1), 1)
        for offset in range(0, size - BLOCK + 1, step):
            f.seek(offset)
            hasher.update(f.read(BLOCK))
        f.seek(max(size - BLOCK, 0))
        hasher.update(f.read(BLOCK))


def weights_digest(directory: str | Path) -> str:
    """Hex digest (16 characters) of every `*.safetensors` file in `directory` (sorted by name)."""
    hasher = hashlib.sha256()
    files = sorted(Path(directory).glob("*.safetensors"))
    for path in files:
        file_digest(path, hasher)
    return hasher.hexdigest()[:16] if files else "no-weights"
