"""Capture: run one checkpoint over a dataset under one or more mask types, through TransformerLens hooks.

Per sample it keeps the EOS residual stream at every layer (`blocks.0.hook_resid_pre`, then each
`blocks.{l}.hook_resid_post`; raw, no final norm), the final-norm EOS state (`ln_final.hook_out`: the
embedding before L2 normalisation), rows of the attention pattern `blocks.{l}.attn.hook_pattern`, every
position's token, role and image flag, and the sample's labels and metadata. Results stream to disk in
shards (see `analysis.lens.store`); the model is loaded and booted once for all mask types.

Pattern rows (`patterns=`): "eos" the EOS query row, "eos+b" the EOS row then every B row, "full" all
rows, "none" nothing. Stored keys are the sample's own (non-PAD) positions. "full" needs eager attention
(`hook_pattern` fires only there), so `capture` runs it eager; the others run sdpa and compute their rows
from each layer's queries and keys (`analysis.lens.pattern_rows`), equal to eager's rows.
"""

from __future__ import annotations

import json
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, replace
from itertools import islice
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from analysis import distributed
from analysis.checkpoints import open_checkpoint
from analysis.digest import weights_digest
from analysis.embed import pooled
from analysis.errors import UsageError
from analysis.inputs import Batch, encode
from analysis.lens.bridge import boot, check_hook_names
from analysis.lens.pattern_rows import PatternRows
from analysis.lens.sources import samples
from analysis.lens.store import (
    FORMAT,
    INDEX,
    PATTERNS,
    Capture,
    CaptureSettings,
    SampleRecord,
    ShardWriter,
    merge_rank_indexes,
    rank_name,
)
from analysis.lens.validate import check_batch
from analysis.masks import PAD, A, B, check_mask_type
from analysis.presets import Preset, get_preset


def check_patterns(patterns: str) -> str:
    if patterns not in PATTERNS:
        raise ValueError(f"unknown patterns option {patterns!r}; valid: {', '.join(PATTERNS)}")
    return patterns


def residual_hooks(n_layers: int) -> list[str]:
    """The EOS residual stream's hook names: embeddings, then the output of each block."""
    return ["blocks.0.hook_resid_pre"] + [f"blocks.{layer}.hook_resid_post" for layer in range(n_layers)]


def attention_for(patterns: str) -> str:
    """The attention implementation a capture runs: eager for "full" patterns (only it forms them), else sdpa."""
    return "eager" if check_patterns(patterns) == "full" else "sdpa"


def open_model(checkpoint, *, dtype: torch.dtype | str | None = None, device: str | None = None, seed: int = 0,
               base: str | Path | None = None, preset: str | Preset | None = None, attn_implementation: str = "eager",
               device_map: str | dict | None = None):
    """`(model, processor, name, preset, opened)` for a checkpoint (see `analysis.checkpoints`) or `(model, processor)`.

    `opened` is the `Opened` record when the model was loaded here (so booting may wrap it in place), else None.
    The preset is `preset` if given, else what the checkpoint declares (see `analysis.presets.preset_for`).
    `attn_implementation` applies when loading (a given model keeps its own until booted); `device_map` ("auto")
    splits a checkpoint directory's model over the visible devices (see `analysis.checkpoints.open_checkpoint`).
    """
    if isinstance(checkpoint, tuple):
        if dtype is not None or device is not None or device_map is not None:
            raise ValueError("dtype / device apply when loading a checkpoint; move a given model yourself first")
        model, processor = checkpoint
        return model, processor, f"<in-memory {type(model).__name__}>", get_preset(preset or "plain"), None
    opened = open_checkpoint(checkpoint, dtype=dtype, device=device, base=base, seed=seed,
                             attn_implementation=attn_implementation, device_map=device_map)
    return opened.model, opened.processor, opened.name, opened.preset(preset), opened


def _query_index(batch: Batch, patterns: str) -> tuple[torch.Tensor, list[int]]:
    """Pattern rows to keep: `[B, Q]` query positions (padded with the EOS position) and how many are real."""
    eos = batch.eos_index[:, None]
    if patterns != "eos+b":
        return eos, [1] * len(eos)
    length = batch.roles.shape[1]
    is_b = batch.roles == B
    positions = torch.arange(length, device=eos.device).expand_as(batch.roles)
    b_positions = torch.where(is_b, positions, length).sort(dim=1).values[:, :int(is_b.sum(1).max())]
    index = torch.cat([eos, torch.where(b_positions == length, eos, b_positions)], dim=1)
    return index, (is_b.sum(1) + 1).tolist()


class Recorder:
    """TransformerLens hooks that keep, per sample, the rows that matter; installed once, `run` per batch."""

    def __init__(self, bridge: TransformerBridge, patterns: str = "eos", hooks: Sequence[str] = ()):
        self.bridge, self.patterns, self.hooks = bridge, check_patterns(patterns), list(hooks)
        n_layers = bridge.cfg.n_layers
        self.resid_names = residual_hooks(n_layers)
        self.pattern_names = [] if patterns == "none" else [f"blocks.{i}.attn.hook_pattern" for i in range(n_layers)]
        self.rows = PatternRows(bridge) if patterns in ("eos", "eos+b") else None  # else hook_pattern itself
        self.state_names = list(dict.fromkeys(self.resid_names + ["ln_final.hook_out"] + self.hooks))
        self.stored: dict[str, torch.Tensor] = {}
        self._rows = self._eos = self._query_index = self._shape = None

    def _at_eos(self, name: str):
        def hook(tensor: torch.Tensor, hook) -> None:
            if tensor.shape[:2] != self._shape or name.endswith(("hook_pattern", "hook_attn_scores")):
                raise ValueError(f"hook {name} has shape {tuple(tensor.shape)}, not [batch, pos, ...]: capture stores "
                                 f"activations at the EOS position, so pick a hook on the text stream")
            self.stored[name] = tensor[self._rows, self._eos]
            if name == "ln_final.hook_out":
                self.stored["embedding"] = pooled(tensor, self._batch)
            if name in self.resid_names:  # mean over content (A) positions: the mean-pooling reference
                self.stored[f"content:{name}"] = (tensor * self._content[..., None]).sum(1) / self._content.sum(1, True)
        return hook

    def _full_pattern(self, name: str):
        def hook(tensor: torch.Tensor, hook) -> None:  # [batch, heads, q, k]
            self.stored[name] = tensor
        return hook

    @contextmanager
    def installed(self):
        fwd_hooks = [(n, self._at_eos(n)) for n in self.state_names]
        if self.rows is None:
            fwd_hooks += [(n, self._full_pattern(n)) for n in self.pattern_names]
        with self.bridge.hooks(fwd_hooks=fwd_hooks), (self.rows.installed() if self.rows else nullcontext()):
            yield self

    @torch.no_grad()
    def run(self, batch: Batch, mask_type: str) -> list[dict]:
        """Forward `batch` under `mask_type` (inside `installed()`); per sample a dict of numpy arrays."""
        check_mask_type(mask_type)
        model = self.bridge.original_model
        check_batch(model, batch)
        param = next(model.parameters())
        batch = batch.to(param.device)
        pad = batch.roles == PAD
        if (pad[:, :-1] & ~pad[:, 1:]).any():
            raise ValueError("the batch has PAD before content: capture expects right padding, as "
                             "analysis.inputs.encode makes")
        self._shape = tuple(batch.input_ids.shape)
        self._rows, self._eos, self._batch = torch.arange(self._shape[0], device=param.device), batch.eos_index, batch
        self._content = (batch.roles == A).to(param.dtype)
        self._query_index, n_queries = _query_index(batch, self.patterns)
        self.stored = {}
        if self.rows:
            self.rows.index, self.rows.rows = self._query_index, {}
        inputs = batch.model_inputs(mask_type, dtype=param.dtype)
        self.bridge(inputs.pop("input_ids"), return_type=None, logits_to_keep=1, **inputs)
        if self.rows:
            self.stored.update({self.pattern_names[layer]: r for layer, r in self.rows.rows.items()})
        missing = [n for n in self.state_names + self.pattern_names if n not in self.stored]
        if missing:
            raise RuntimeError(f"hooks {missing} did not fire: install them with Recorder.installed(); full "
                               f"attention patterns need attn_implementation='eager'")
        return self._split(batch, (~pad).sum(1).tolist(), n_queries)

    def _split(self, batch: Batch, lengths: list[int], n_queries: list[int]) -> list[dict]:
        def numpy(names: list[str]) -> np.ndarray:
            return torch.stack([self.stored[n] for n in names], 1).float().cpu().numpy()

        resid = numpy(self.resid_names)
        content = numpy([f"content:{n}" for n in self.resid_names])
        final = self.stored["ln_final.hook_out"].float().cpu().numpy()
        embedding = self.stored["embedding"].float().cpu().numpy()
        extra = {h: self.stored[h].float().cpu().numpy() for h in self.hooks}
        pattern = numpy(self.pattern_names) if self.pattern_names else None  # [B, layers, heads, L | Q, L]
        tokens = {k: getattr(batch, k).cpu().numpy() for k in ("input_ids", "roles", "is_image")}
        tokens["segments"] = batch.segment_ids.cpu().numpy()
        queries, eos_index = self._query_index.cpu().numpy(), batch.eos_index.tolist()
        out = []
        for i, n in enumerate(lengths):
            sample = dict(eos_resid=resid[i], content_mean=content[i], eos_final=final[i], embedding=embedding[i],
                          eos_index=eos_index[i],
                          hooks={h: a[i] for h, a in extra.items()}, pattern=None, query_positions=None,
                          **{k: v[i, :n] for k, v in tokens.items()})
            if pattern is not None:
                q = n if self.patterns == "full" else n_queries[i]
                positions = np.arange(n) if self.patterns == "full" else queries[i, :q]
                sample.update(pattern=np.ascontiguousarray(pattern[i, :, :, :q, :n]), query_positions=positions)
            out.append(sample)
        return out


def run_batch(bridge: TransformerBridge, batch: Batch, mask_type: str, *, patterns: str = "eos",
              hooks: Sequence[str] = ()) -> list[dict]:
    """Forward one batch under `mask_type` through the bridge; per sample a dict of numpy arrays.

    Keys: eos_resid `[layers+1, d]`, content_mean `[layers+1, d]` (mean over A positions), eos_final `[d]`,
    eos_index, input_ids / roles / is_image `[L_i]`, pattern `[layers, heads, rows, L_i]` (None for "none"),
    query_positions `[rows]`, hooks `{name: [...]}`.
    """
    recorder = Recorder(bridge, patterns, hooks)
    with recorder.installed():
        return recorder.run(batch, mask_type)


def capture(checkpoint, dataset, mask_types: str | Iterable[str] | None = None, out_dir: str | Path = "captures", *,
            n: int | None = None, seed: int = 0, init_seed: int = 0, with_target: bool = False, patterns: str = "eos",
            hooks: Sequence[str] = (), batch_size: int = 16, shard_size: int = 512,
            dtype: torch.dtype | str | None = None, device: str | None = None, base: str | Path | None = None,
            preset: str | Preset | None = None, side: str = "query", copy: bool = True,
            progress: bool = False, device_map: str | dict | None = None) -> dict[str, Capture]:
    """Capture `checkpoint` over `dataset` under each mask type into `out_dir/<mask type>/`: `{mask: Capture}`.

    checkpoint: a checkpoint directory (full or PEFT adapter, `base` for the adapter's base), a tiny backbone
        name (random init, `init_seed`) or `(model, processor)`; `dtype` / `device` apply when loading. A given
        model is deep-copied before booting unless `copy=False` (then it is wrapped in place: see
        `analysis.lens.bridge`).
    dataset: a name or spec ("mini-mmeb", "shapes", "digits", "mmeb:DIR", "jsonl:FILE", "images:DIR"; `n`
        samples drawn with `seed`) or a list of Examples / EvalDatasets / Items (see `analysis.lens.sources`).
    preset: the embedder preset that prompts each input and reads its embedding (default: what the
        checkpoint declares, else `plain`); `side` picks its query or candidate prompt. `mask_types`
        default to the preset's own attention.
    with_target: put the sample's target text (the positive candidate's) as the B segment.
    hooks: extra hook names stored at the EOS position. Rerunning with the same settings resumes; a
        checkpoint whose weights changed since refuses to resume.
    device_map: "auto" splits a checkpoint directory's model over the visible devices (a model larger than
        one device); the bridge wraps it where it lies.

    Under torchrun / accelerate launch (WORLD_SIZE > 1) each rank captures a contiguous block of whole
    batches into its own shards and rank 0 merges the index (see `analysis.lens.store`): the result equals
    the single-process capture sample for sample.
    """
    attention = attention_for(patterns)
    name, total, stream = samples(dataset, n=n, seed=seed, with_target=with_target)
    model, processor, checkpoint_name, preset, opened = open_model(checkpoint, dtype=dtype, device=device,
                                                                   seed=init_seed, base=base, preset=preset,
                                                                   attn_implementation=attention, device_map=device_map)
    masks = mask_types.split(",") if isinstance(mask_types, str) else list(mask_types or [preset.attention])
    masks = list(dict.fromkeys(m.strip() for m in masks if m.strip()))
    if not masks:
        raise ValueError("no mask type given; valid mask types: causal, bidirectional, eos_bridged, eos_bridged_strict")
    for mask_type in masks:
        check_mask_type(mask_type)
    bridge = boot(model, processor, copy=copy and opened is None, attn_implementation=attention)
    model = bridge.original_model
    hooks = check_hook_names(bridge, hooks)
    cfg = bridge.cfg
    settings = dict(format=FORMAT, checkpoint=checkpoint_name, checkpoint_digest=_digest(checkpoint, opened),
                    preset=preset.name, dataset=name, seed=seed, n=total, with_target=with_target, patterns=patterns,
                    hooks=tuple(hooks), dtype=str(next(model.parameters()).dtype).removeprefix("torch."))
    details = dict(backbone=model.config.model_type, preset_record=asdict(preset), side=side,
                   attn_implementation=attention, n_layers=cfg.n_layers, n_heads=cfg.n_heads, d_model=cfg.d_model,
                   eos_resid_hooks=residual_hooks(cfg.n_layers), eos_final_hook="ln_final.hook_out",
                   final_norm="eos_resid is the raw residual (no final norm); eos_final is the final-norm EOS state; "
                              f"embedding is the preset's ({preset.pooling} pooling) before L2 normalisation",
                   checkpoint_recipe=opened.recipe if opened else None)
    out_dir = Path(out_dir)
    rank, size = distributed.init()
    mine = range(total)
    if size > 1:  # whole batches per rank, so each batch (padding, numerics) is the single-process one
        batches = distributed.blocks(-(-total // batch_size), size)[rank]
        mine = range(min(batches.start * batch_size, total), min(batches.stop * batch_size, total))
        for m in masks:
            _check_parallel_target(out_dir / m, size)
    writers = {m: ShardWriter(_rank_dir(out_dir / m, rank, size),
                              _rank_settings(CaptureSettings(mask_type=m, **settings), mine, size), shard_size,
                              details=details) for m in masks}
    # restart at a batch boundary: batches (and so padding and numerics) match an uninterrupted run
    start = mine.start + min(w.n_done for w in writers.values()) // batch_size * batch_size
    position = start
    recorder = Recorder(bridge, patterns, hooks)
    with tqdm(total=len(mine), initial=start - mine.start, desc="capture" + (f" rank {rank}" if size > 1 else ""),
              disable=not progress) as bar, recorder.installed():
        for chunk in _batched(islice(stream, start, mine.stop), batch_size):
            targets = [s.target or "" for s in chunk] if with_target else None
            batch = encode(processor, model, [s.item for s in chunk], targets, preset=preset, side=side)
            grids = iter(batch.image_grid_thw.tolist() if batch.image_grid_thw is not None else [])
            records = [SampleRecord(key=s.item.key, text=s.item.text, instruction=s.item.instruction,
                                    has_image=s.item.has_image, target=targets[k] if targets else None,
                                    has_b=bool((batch.roles[k] == B).any()), labels=s.labels, meta=s.meta,
                                    image_grid=tuple(next(grids)) if s.item.has_image else None)
                       for k, s in enumerate(chunk)]
            for mask_type, writer in writers.items():
                todo = [k for k in range(len(chunk)) if position - mine.start + k >= writer.n_done]
                if todo:
                    captured = recorder.run(batch, mask_type)
                    for k in todo:
                        writer.add(dict(captured[k], record=records[k]))
            position += len(chunk)
            bar.update(len(chunk))
    for writer in writers.values():
        writer.finish()
    if size > 1:
        distributed.barrier()  # every rank's shards are complete before rank 0 merges their indexes
        if rank == 0:
            for m in masks:
                merge_rank_indexes(out_dir / m, size)
        distributed.barrier()
    return {m: Capture.open(out_dir / m) for m in masks}


def _rank_dir(directory: Path, rank: int, size: int) -> Path:
    """Where a rank writes its shards: the mask directory itself in one process, else `rank-0000r/` in it."""
    return directory if size == 1 else directory / rank_name(rank)


def _rank_settings(settings: CaptureSettings, mine: range, size: int) -> CaptureSettings:
    """A rank's own capture settings: its sample count, and (several processes) the world size and first sample."""
    if size == 1:
        return settings
    return replace(settings, n=len(mine), world_size=size, first=mine.start)


def _check_parallel_target(directory: Path, size: int) -> None:
    """Refuse to write a data-parallel capture over a single-process one or one of another world size."""
    index = directory / INDEX
    if index.is_file():
        held = json.loads(index.read_text()).get("world_size", 1)
        if held != size:
            raise UsageError(f"{directory} holds a capture made by {held} process(es), not {size}: resume it with "
                             f"--nproc-per-node {held}, or choose another --out")


def _digest(checkpoint, opened) -> str:
    """What identifies the weights: a digest of a checkpoint directory's files, or how they were made."""
    if opened is None:
        return "in-memory model (not resumable across processes)"
    if opened.path is None:
        return opened.name
    return weights_digest(opened.path) + (f"+{weights_digest(opened.base)}" if opened.base else "")


def _batched(stream, size: int):
    while chunk := list(islice(stream, size)):
        yield chunk
