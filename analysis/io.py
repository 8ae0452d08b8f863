"""Atomic file writes (a reader never sees a half-written file: write a temp file, then rename) and reads.

Temp files and folders are created with `os.open` / `os.mkdir` under a unique name, so they get the
user's umask like any other output (`tempfile.mkstemp` / `mkdtemp` would make them 0600 / 0700);
`give_umask` fixes the files of writers that ignore it.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from analysis.errors import UsageError


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` via a temp file in the same directory and `os.replace`.

    A symlink is followed (its target is replaced); a device or pipe (`/dev/stdout`) is written directly.
    """
    path = Path(os.path.realpath(path))
    if path.exists() and not path.is_file() and not path.is_dir():
        with open(path, "w") as f:
            f.write(text)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def make_temp_dir(parent: str | Path, prefix: str) -> Path:
    """A new empty folder `parent/<prefix><random>` (mode 0777 less the umask), to be renamed into place."""
    path = Path(parent) / f"{prefix}{secrets.token_hex(6)}"
    path.mkdir(mode=0o777)
    return path


def umask() -> int:
    """The process's umask, read without changing it where Linux's /proc tells it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def give_umask(directory: str | Path) -> None:
    """Set the files in `directory` to 0666 less the umask (safetensors writes 0600 files)."""
    mode = 0o666 & ~umask()
    for path in Path(directory).iterdir():
        if path.is_file():
            path.chmod(mode)


def write_json(path: str | Path, obj) -> Path:
    """`obj` as indented JSON (numpy scalars and arrays converted), written atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_plain) + "\n")


def read_json(path: str | Path):
    """The JSON in `path`, or None when there is no such file; a file that does not parse is named."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UsageError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}): restore or delete it") from None


def read_yaml(path: str | Path):
    """The YAML document in `path`; a syntax error is a `UsageError` naming the file, line and column."""
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        raise UsageError(f"{path} is not valid YAML: {yaml_problem(err)}") from None


def yaml_problem(err) -> str:
    """A YAML error's problem and where it is, on one line."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return " ".join(f"{getattr(err, 'problem', None) or err}{where}".split())


def _plain(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
