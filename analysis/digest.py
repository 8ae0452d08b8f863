"""A cheap digest of a checkpoint's weights, so that results derived from it can tell when it changed.

`weights_digest(dir)` hashes, for every weight file (`*.safetensors`, `*.bin`, `*.pt`) and the model /
adapter config: the name, the size and the bytes. Configs and files up to `FULL_HASH_BYTES` are hashed whole; a
larger safetensors file contributes its header (names, dtypes, shapes, offsets) and, for every tensor,
`SAMPLE_BYTES` from the start, middle and end of its data; other large files contribute `N_SAMPLES`
evenly spaced blocks. Retraining changes nearly every element of a tensor, so a sample sees it; a
multi-GB checkpoint costs a few MB of reads. Copying a checkpoint keeps its digest.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

from analysis.errors import UsageError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
CONFIG_FILES = ("config.json", "adapter_config.json")
FULL_HASH_BYTES = 64 << 20
SAMPLE_BYTES = 4096
N_SAMPLES = 256


def weights_digest(checkpoint_dir: str | Path) -> str:
    """`"sha256:<20 hex>"` of the weights in `checkpoint_dir` (see the module docstring)."""
    directory = Path(checkpoint_dir)
    if not directory.is_dir():
        raise UsageError(f"no checkpoint directory at {directory}")
    files = sorted(p for p in directory.iterdir()
                   if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name in CONFIG_FILES))
    if not any(p.suffix in WEIGHT_SUFFIXES for p in files):
        raise UsageError(f"{directory} holds no weight files ({', '.join('*' + s for s in WEIGHT_SUFFIXES)})")
    h = hashlib.sha256()
    for path in files:
        size = path.stat().st_size
        h.update(f"{path.name}\0{size}\0".encode())
        with open(path, "rb") as f:
            if size <= FULL_HASH_BYTES or path.name in CONFIG_FILES:
                h.update(f.read())
            elif path.suffix == ".safetensors":
                _sample_safetensors(f, h, path)
            else:
                for i in range(N_SAMPLES):
                    f.seek(max(0, size - SAMPLE_BYTES) * i // (N_SAMPLES - 1))
                    h.update(f.read(SAMPLE_BYTES))
    return "sha256:" + h.hexdigest()[:20]


def _sample_safetensors(f, h, path: Path) -> None:
    (n,) = struct.unpack("<Q", f.read(8))
    raw = f.read(n)
    h.update(raw)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UsageError(f"{path} is not a safetensors file (unreadable header): re-save the checkpoint") from None
    for name, info in sorted(header.items()):
        if name == "__metadata__":
            continue
        start, end = (8 + n + o for o in info["data_offsets"])
        for at in sorted({start, max(start, (start + end) // 2 - SAMPLE_BYTES // 2), max(start, end - SAMPLE_BYTES)}):
            f.seek(at)
            h.update(f.read(min(SAMPLE_BYTES, end - at)))
