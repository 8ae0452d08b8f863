"""On-disk capture: shards of numpy arrays plus a JSON index; reopened lazily as memory maps.

One directory per (checkpoint, dataset, mask type):

  index.json            metadata (checkpoint, mask type, dataset, shapes, notes) + the list of complete shards
  shard-00000/          `n` samples, `T` tokens (their non-PAD positions), `P` stored pattern values
    eos_resid.npy       float32 [n, layers+1, d]  EOS residual: embeddings, then after each block (no final norm)
    content_mean.npy    float32 [n, layers+1, d]  residual averaged over the content (A) positions, same layers
    eos_final.npy       float32 [n, d]            final-norm EOS state
    embedding.npy       float32 [n, d]            the preset's embedding before L2 normalisation: eos_final for
                                                  presets that read a token, the mean final-norm state over the
                                                  input's positions for mean-pooling presets (MoCa)
    eos_index.npy       int32   [n]
    token_offsets.npy   int64   [n+1]  sample i owns tokens [o[i], o[i+1]) of:
    input_ids.npy       int32   [T]
    roles.npy           int8    [T]    A=0, EOS=1, B=2 (PAD is never stored)
    is_image.npy        bool    [T]
    segments.npy        int8    [T]    index into analysis.presets.SEGMENTS (template, instruction, vision, ...)
    query_offsets.npy   int64   [n+1]  sample i's pattern rows are queries query_positions[q[i]:q[i+1]]
    query_positions.npy int32   [Q]
    pattern_offsets.npy int64   [n+1]  sample i's patterns are patterns[p[i]:p[i+1]] as [layers, heads, rows, L_i]
    patterns.npy        float32 [P]
    hook.<name>.npy     float32 [n, ...]  extra hooks, at the EOS position
    records.json        per sample (`SampleRecord`): key, text, instruction, has_image, target, has_b, labels,
                        meta, and image_grid: the [t, h, w] patch grid of the sample's image before merging
                        (`image_grid_thw`; Qwen merges 2x2 patches into one token), null for text only

The index's settings keys (`CaptureSettings`: format, checkpoint, checkpoint_digest, preset, mask_type, dataset,
seed, n, with_target, patterns, hooks, dtype, and for a rank's own capture world_size and first) fix which
samples land where: a capture resumes only under equal settings.

Reading needs numpy only (no torch): `Capture.open(...).sample(i)` is a `CapturedSample`, whose
`token_labels()` is the one labelling rule of token axes (image / text / EOS / B).

Shards are written to a temporary directory and renamed; the index is rewritten (temp + rename) after
each shard, so an interrupted capture keeps every complete shard and resumes after the last one.

A data-parallel capture (torchrun / accelerate launch, N processes) gives rank r a contiguous block of
whole batches and writes it as a capture of its own, `rank-0000r/` (index.json + shards, index keys
`world_size` and `first`, its first sample), inside the mask directory; each rank resumes its own. When
every rank is complete, rank 0 writes the mask directory's index.json with `world_size` N and the
ranks' shards in rank order (names `rank-0000r/shard-0000k`), so `Capture.open` reads the samples in the
single-process order with the same values. A single-process capture keeps the layout above unchanged.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from analysis.io import write_json
from analysis.masks import ROLES
from analysis.presets import SEGMENTS

FORMAT = "cocoa-lens-capture/2"
PATTERNS = ("eos", "eos+b", "full", "none")  # pattern rows kept: EOS, EOS then B, all, none
INDEX, RECORDS = "index.json", "records.json"
SHARD = re.compile(r"^\.?shard-\d{5}(\.tmp)?$")
BRIDGED = ("eos_bridged", "eos_bridged_strict")


@dataclass(frozen=True)
class CaptureSettings:
    """The settings that fix which samples land where, as index.json holds them: a capture resumes only under
    equal settings (resuming under different ones would mix two captures). `world_size` and `first` (its first
    sample) are set for one rank's own capture of a data-parallel run only (None otherwise, and not written)."""

    format: str
    checkpoint: str
    checkpoint_digest: str | None
    preset: str
    mask_type: str
    dataset: str
    seed: int
    n: int
    with_target: bool
    patterns: str
    hooks: tuple[str, ...]
    dtype: str
    world_size: int | None = None
    first: int | None = None

    @classmethod
    def from_index(cls, index: Mapping[str, Any]) -> "CaptureSettings":
        """The settings of an index.json dict (a key it lacks reads as None)."""
        values = {f.name: index.get(f.name) for f in fields(cls)}
        if values["hooks"] is not None:
            values["hooks"] = tuple(values["hooks"])
        return cls(**values)

    def to_index(self) -> dict[str, Any]:
        """The settings' index.json keys: every field, `hooks` as a list; `world_size` / `first` only when set."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["hooks"] = list(self.hooks) if self.hooks is not None else None
        for optional in ("world_size", "first"):
            if out[optional] is None:
                del out[optional]
        return out

    def differences(self, other: "CaptureSettings") -> list[str]:
        """The fields (in index order) where `other` differs."""
        return [f.name for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]

    def check_resume(self, held: "CaptureSettings", directory: str | Path) -> None:
        """Raise unless a capture made under `held` (in `directory`) may resume under these settings."""
        different = held.differences(self)
        if not different:
            return
        name = different[0]
        if name == "checkpoint_digest":
            raise ValueError(
                f"the checkpoint at {self.checkpoint} changed since the capture in {directory} began (weights "
                f"digest {held.checkpoint_digest!r}, now {self.checkpoint_digest!r}): delete {directory} or "
                f"choose another output directory to start over")
        raise ValueError(
            f"{directory} holds a capture with {name}={held.to_index().get(name)!r}, not "
            f"{self.to_index().get(name)!r}: rerun with the same settings to resume it, or choose another output "
            f"directory")


@dataclass(frozen=True)
class SampleRecord:
    """What a capture keeps of one sample's input (records.json): its key, text, instruction, whether it has an
    image, the target text put as B (None without), whether the sample has B tokens, its labels (for probing),
    its metadata, and `image_grid`: the `[t, h, w]` patch grid of its image before merging (None: no image)."""

    key: str
    text: str | None
    instruction: str | None
    has_image: bool
    target: str | None
    has_b: bool
    labels: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    image_grid: tuple[int, int, int] | None = None

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> "SampleRecord":
        """A records.json entry (a capture made before `image_grid` was kept has none)."""
        grid = record.get("image_grid")
        return cls(key=record["key"], text=record.get("text"), instruction=record.get("instruction"),
                   has_image=record["has_image"], target=record.get("target"), has_b=record["has_b"],
                   labels=record.get("labels") or {}, meta=record.get("meta") or {},
                   image_grid=tuple(grid) if grid is not None else None)

    def to_json(self) -> dict[str, Any]:
        """The records.json entry, keys in the order written since format 2."""
        return dict(key=self.key, text=self.text, instruction=self.instruction, has_image=self.has_image,
                    target=self.target, has_b=self.has_b, labels=self.labels, meta=self.meta,
                    image_grid=list(self.image_grid) if self.image_grid is not None else None)


def token_labels(roles: Sequence[str], is_image: Sequence[bool]) -> list[str]:
    """The one rule that labels token positions (attention-map axes, token tables): "image" for image tokens,
    "text" for the rest of A (prompt template, instruction, vision markers, input text: coarser than the
    `segments`, where "text" is the input text alone), else the role ("EOS", "B"). `roles` and `is_image` are
    per position, length L."""
    if len(roles) != len(is_image):
        raise ValueError(f"{len(roles)} roles for {len(is_image)} image flags")
    return ["image" if image else "text" if role == "A" else str(role) for role, image in zip(roles, is_image)]


@dataclass(frozen=True, eq=False)
class CapturedSample:
    """Everything a capture stores for one sample (`Capture.sample`); L is its token count (PAD never stored).

    roles: `[L]` role names "A" / "EOS" / "B". is_image: bool `[L]`, True at image tokens. segments: `[L]`
    names from `analysis.presets.SEGMENTS` (template, instruction, vision, image, text, EOS, B). input_ids: int32
    `[L]`. eos_index: the EOS position. eos_resid: float32 `[layers+1, d]`, the EOS residual (0 = embeddings, l =
    after block l; no final norm). eos_final: float32 `[d]`, the final-norm EOS state. record: the `SampleRecord`.
    pattern: float32 `[layers, heads, rows, L]`, the attention rows of queries `query_positions` (int32 `[rows]`),
    both None for a capture with patterns "none".
    """

    roles: list[str]
    is_image: np.ndarray
    segments: list[str]
    input_ids: np.ndarray
    eos_index: int
    eos_resid: np.ndarray
    eos_final: np.ndarray
    record: SampleRecord
    pattern: np.ndarray | None = None
    query_positions: np.ndarray | None = None

    def token_labels(self) -> list[str]:
        """Per-position labels image / text / EOS / B (`token_labels`): what labels attention-map axes."""
        return token_labels(self.roles, self.is_image)


class ShardWriter:
    """Appends captured samples to `directory`; resumes a partial capture.

    A shard closes at `shard_size` samples or `shard_bytes` of arrays, whichever comes first, which
    bounds memory (full patterns of a 2B model are ~100 MB per sample).

    settings: what fixes the samples (a partial capture resumes only under equal settings); details: the
    index's other, descriptive keys (shapes, hook names, notes), written after the settings.
    """

    def __init__(self, directory: str | Path, settings: CaptureSettings, shard_size: int = 512,
                 shard_bytes: int = 256 << 20, *, details: Mapping[str, Any] | None = None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.shard_size, self.shard_bytes = shard_size, shard_bytes
        self.buffer: list[dict] = []
        self._buffer_bytes = 0
        index_path = self.directory / INDEX
        if index_path.is_file():
            self.index = json.loads(index_path.read_text())
            settings.check_resume(CaptureSettings.from_index(self.index), self.directory)
        else:
            self.index = dict(settings.to_index(), **(details or {}), n_done=0, n_with_b=0, complete=False, shards=[])
        self._remove_strays()

    @property
    def n_done(self) -> int:
        return self.index["n_done"] + len(self.buffer)

    def _remove_strays(self) -> None:
        """Shards not in the index (a crash between rename and index update) and temporary directories."""
        listed = {s["name"] for s in self.index["shards"]}
        for path in self.directory.iterdir():
            if path.is_dir() and SHARD.match(path.name) and path.name not in listed:
                shutil.rmtree(path)

    def add(self, sample: dict) -> None:
        self.buffer.append(sample)
        self._buffer_bytes += sum(a.nbytes for a in _arrays_of(sample))
        if len(self.buffer) >= self.shard_size or self._buffer_bytes >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        name = f"shard-{len(self.index['shards']):05d}"
        tmp = self.directory / f".{name}.tmp"
        tmp.mkdir()
        for array_name, array in _shard_arrays(self.buffer).items():
            np.save(tmp / f"{array_name}.npy", array)
        (tmp / RECORDS).write_text(json.dumps([s["record"].to_json() for s in self.buffer]))
        os.replace(tmp, self.directory / name)
        n_with_b = sum(s["record"].has_b for s in self.buffer)
        self.index["shards"].append({"name": name, "n": len(self.buffer)})
        self.index["n_done"] += len(self.buffer)
        self.index["n_with_b"] += n_with_b
        self.index["b_segment"] = _b_note(self.index)
        self.buffer, self._buffer_bytes = [], 0
        self.write_index()

    def finish(self) -> None:
        self.flush()
        self.index["complete"] = self.index["n_done"] >= self.index["n"]
        self.write_index()

    def write_index(self) -> None:
        write_json(self.directory / INDEX, self.index)


def rank_name(rank: int) -> str:
    """The sub-directory a data-parallel rank writes its shards into."""
    return f"rank-{rank:05d}"


def merge_rank_indexes(directory: str | Path, size: int) -> dict:
    """Write `directory/index.json` over the complete captures of ranks 0..size-1 (rank order): the merged index."""
    directory = Path(directory)
    parts = [json.loads((directory / rank_name(r) / INDEX).read_text()) for r in range(size)]
    unfinished = [r for r, p in enumerate(parts) if not p["complete"]]
    if unfinished:
        raise ValueError(f"{directory}: ranks {unfinished} have not finished; rerun the same command to resume them")
    index = {k: v for k, v in parts[0].items() if k not in ("first", "shards")}
    index.update(n=sum(p["n"] for p in parts), n_done=sum(p["n_done"] for p in parts),
                 n_with_b=sum(p["n_with_b"] for p in parts), complete=True, world_size=size,
                 shards=[{"name": f"{rank_name(r)}/{s['name']}", "n": s["n"]} for r, p in enumerate(parts)
                         for s in p["shards"]])
    index["b_segment"] = _b_note(index)
    write_json(directory / INDEX, index)
    return index


def _arrays_of(sample: dict) -> list[np.ndarray]:
    arrays = [sample["eos_resid"], sample["content_mean"], sample["input_ids"], *sample["hooks"].values()]
    return arrays + ([sample["pattern"]] if sample["pattern"] is not None else [])


def _b_note(index: dict) -> str:
    missing, mask = index["n_done"] - index["n_with_b"], index["mask_type"]
    if not missing:
        return "every sample has a B segment"
    what = "no sample has" if missing == index["n_done"] else f"{missing} of {index['n_done']} samples have no"
    if mask in BRIDGED:
        return f"{what} B segment: for those, {mask} equals bidirectional"
    return f"{what} B segment"


def _offsets(sizes: list[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)


def _shard_arrays(samples: list[dict]) -> dict[str, np.ndarray]:
    arrays = {
        "eos_resid": np.stack([s["eos_resid"] for s in samples]).astype(np.float32),
        "content_mean": np.stack([s["content_mean"] for s in samples]).astype(np.float32),
        "eos_final": np.stack([s["eos_final"] for s in samples]).astype(np.float32),
        "embedding": np.stack([s["embedding"] for s in samples]).astype(np.float32),
        "eos_index": np.array([s["eos_index"] for s in samples], dtype=np.int32),
        "token_offsets": _offsets([len(s["roles"]) for s in samples]),
        "input_ids": np.concatenate([s["input_ids"] for s in samples]).astype(np.int32),
        "roles": np.concatenate([s["roles"] for s in samples]).astype(np.int8),
        "is_image": np.concatenate([s["is_image"] for s in samples]).astype(bool),
        "segments": np.concatenate([s["segments"] for s in samples]).astype(np.int8),
    }
    if samples[0]["pattern"] is not None:
        arrays["query_offsets"] = _offsets([len(s["query_positions"]) for s in samples])
        arrays["query_positions"] = np.concatenate([s["query_positions"] for s in samples]).astype(np.int32)
        arrays["pattern_offsets"] = _offsets([s["pattern"].size for s in samples])
        arrays["patterns"] = np.concatenate([s["pattern"].ravel() for s in samples]).astype(np.float32)
    for name in samples[0]["hooks"]:
        arrays[f"hook.{name}"] = np.stack([s["hooks"][name] for s in samples]).astype(np.float32)
    return arrays


class _Shard:
    """One shard's arrays, memory-mapped on first use."""

    def __init__(self, path: Path, n: int):
        self.path, self.n = path, n
        self._arrays: dict[str, np.ndarray] = {}

    def __getitem__(self, field: str) -> np.ndarray:
        if field not in self._arrays:
            file = self.path / f"{field}.npy"
            if not file.is_file():
                raise KeyError(f"{self.path} has no {field!r} (was it captured? see the capture's index.json)")
            self._arrays[field] = np.load(file, mmap_mode="r")
        return self._arrays[field]

    @cached_property
    def records(self) -> list[SampleRecord]:
        return [SampleRecord.from_json(r) for r in json.loads((self.path / RECORDS).read_text())]


class Capture:
    """A capture directory, read lazily: arrays are memory-mapped, shard by shard, when first used."""

    def __init__(self, directory: Path, index: dict):
        self.directory, self.meta = directory, index
        self._shards = [_Shard(directory / s["name"], s["n"]) for s in index["shards"]]
        self._starts = np.cumsum([0] + [s.n for s in self._shards])

    @classmethod
    def open(cls, path: str | Path, *, mask_type: str | None = None) -> "Capture":
        """Open a capture directory, or pick `mask_type` from a directory holding one per mask type."""
        path = Path(path)
        if mask_type is not None and (path / mask_type / INDEX).is_file():
            path = path / mask_type
        if not (path / INDEX).is_file():
            masks = sorted(p.parent.name for p in path.glob(f"*/{INDEX}"))
            if len(masks) == 1:
                path = path / masks[0]
            elif masks:
                raise ValueError(f"{path} holds captures under masks {', '.join(masks)}: "
                                 f"pass mask_type= (or open {path}/<mask type>)")
            else:
                raise FileNotFoundError(f"no capture at {path}: expected {path / INDEX} (written by capture())")
        index = json.loads((path / INDEX).read_text())
        if index.get("format") != FORMAT:
            raise ValueError(f"{path} is in format {index.get('format')!r}; this reader expects {FORMAT!r}")
        if mask_type is not None and index["mask_type"] != mask_type:
            raise ValueError(f"{path} holds a {index['mask_type']} capture, not {mask_type}")
        return cls(path, index)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __repr__(self) -> str:
        m = self.meta
        state = "complete" if m["complete"] else f"partial {len(self)}/{m['n']}"
        return f"Capture({m['checkpoint']!r}, mask={m['mask_type']}, dataset={m['dataset']}, {state}, {self.directory})"

    @property
    def mask_type(self) -> str:
        return self.meta["mask_type"]

    @property
    def checkpoint(self) -> str:
        return self.meta["checkpoint"]

    @property
    def dataset(self) -> str:
        return self.meta["dataset"]

    def _stack(self, field: str, index=()) -> np.ndarray:
        parts = [np.asarray(s[field][(slice(None), *index)]) for s in self._shards]
        return np.concatenate(parts) if parts else np.empty((0,), dtype=np.float32)

    def eos_states(self, layer: int | None = None) -> np.ndarray:
        """EOS residual stream `[N, layers+1, d]`, or one layer `[N, d]` (0 = embeddings, l+1 = after block l)."""
        return self._stack("eos_resid") if layer is None else self._stack("eos_resid", (layer,))

    def content_mean(self, layer: int | None = None) -> np.ndarray:
        """Residual stream mean-pooled over content (A) positions, `[N, layers+1, d]` or `[N, d]` for one layer."""
        return self._stack("content_mean") if layer is None else self._stack("content_mean", (layer,))

    def embeddings(self) -> np.ndarray:
        """The model's embeddings as its preset reads them, `[N, d]`, before L2 normalisation."""
        return self._stack("embedding")

    def hook(self, name: str) -> np.ndarray:
        """An extra hook's activation at EOS, `[N, ...]`."""
        return self._stack(f"hook.{name}")

    @property
    def settings(self) -> CaptureSettings:
        """The settings the capture ran under."""
        return CaptureSettings.from_index(self.meta)

    @property
    def records(self) -> list[SampleRecord]:
        """Every sample's record, in sample order."""
        return [r for s in self._shards for r in s.records]

    def labels(self, name: str) -> list:
        """Label `name` of every sample (None where a sample has no such label), for probing."""
        return [r.labels.get(name) for r in self.records]

    def sample(self, i: int) -> CapturedSample:
        """Everything stored for sample `i`; `pattern` is `[layers, heads, rows, L]` for queries `query_positions`."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} out of range for a capture of {len(self)}")
        i %= len(self)
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        shard, j = self._shards[k], i - int(self._starts[k])
        t0, t1 = shard["token_offsets"][j:j + 2]
        pattern = query_positions = None
        if self.meta["patterns"] != "none":
            q0, q1 = shard["query_offsets"][j:j + 2]
            p0, p1 = shard["pattern_offsets"][j:j + 2]
            shape = (self.meta["n_layers"], self.meta["n_heads"], int(q1 - q0), int(t1 - t0))
            query_positions = np.asarray(shard["query_positions"][q0:q1])
            pattern = np.asarray(shard["patterns"][p0:p1]).reshape(shape)
        return CapturedSample(
            roles=[ROLES[r] for r in np.asarray(shard["roles"][t0:t1])], is_image=np.asarray(shard["is_image"][t0:t1]),
            segments=[SEGMENTS[c] for c in np.asarray(shard["segments"][t0:t1])],
            input_ids=np.asarray(shard["input_ids"][t0:t1]), eos_index=int(shard["eos_index"][j]),
            eos_resid=np.asarray(shard["eos_resid"][j]), eos_final=np.asarray(shard["eos_final"][j]),
            record=shard.records[j], pattern=pattern, query_positions=query_positions)

    def __iter__(self) -> Iterator[CapturedSample]:
        return (self.sample(i) for i in range(len(self)))
