"""Training pairs -> the three stage layouts, and a deterministic background stream of batches.

Every step draws fresh pairs from `analysis.data.training_examples` with a seed derived from
(recipe seed, stage, step), so a stage's batches do not depend on what ran before it: resuming after an
interrupted run reproduces exactly the batches an uninterrupted run would have used.

Layouts built from one (query, positive) pair:
- pretrain:  `[A][EOS][B]` as below, B unmasked (captioning / answering, the MLLM's own objective)
- warm-up:   `[image][query text + positive text][EOS]` (the pair's image; all of its text)
- bridged:   `[A][EOS][B]` with A = query and B = the positive's text; when the positive has no text
             (text->image retrieval, grounding crops), A = the positive image and B = the query text
- contrastive: `[query][EOS]` and `[positive][EOS]`, encoded in one batch (queries first), plus optional
             text hard negatives (a positive text with one attribute word changed) as extra targets

Several processes (torchrun / accelerate launch) build the same global batch and each keeps its rows
(`local_part`: a contiguous block of the queries and one of the targets), so masking draws and padding
are those of the single-process batch.
"""

from __future__ import annotations

import queue
import random
import threading
import zlib
from typing import Callable, Iterator

import torch

from analysis import distributed
from analysis.data import TASK_NAMES, training_examples
from analysis.data.items import Example, Item
from analysis.data.shapes import HELD_OUT
from analysis.data.vocabulary import COLOURS, COLUMNS, NUMBERS, ROWS, SHAPES, SIZES
from analysis.inputs import Batch, encode
from analysis.masks import A, B
from analysis.train.objectives import (
    IGNORE,
    MaskedBatch,
    PairBatch,
    base_model,
    mae_token_mask,
    mntp_mask,
    text_candidates,
)


def derived_seed(*parts: object) -> int:
    """A stable 31-bit seed from any parts (Python's hash() of strings is salted per process)."""
    return zlib.crc32(":".join(map(str, parts)).encode()) & 0x7FFFFFFF


def warmup_item(ex: Example) -> Item:
    image = ex.query.image if ex.query.image is not None else ex.positive.image
    text = " ".join(t for t in (ex.query.text, ex.positive.text) if t)
    return Item(text, image, key=f"warmup|{ex.query.key}|{ex.positive.key}")


def bridged_pair(ex: Example) -> tuple[Item, str]:
    if ex.positive.text:
        return ex.query, ex.positive.text
    if ex.query.text:
        return ex.positive, ex.query.text
    raise ValueError(f"pair {ex.query.key!r} -> {ex.positive.key!r} has no text to reconstruct")


def warmup_batch(processor, model, examples: list[Example], mntp_prob: float, mae_ratio: float, mask_id: int,
                 generator: torch.Generator, *, max_text_tokens: int | None = None) -> MaskedBatch:
    """Warm-up layout with MNTP-masked text and, unless `mae_ratio` is 0, the image tokens MAE masks."""
    batch = encode(processor, model, [warmup_item(ex) for ex in examples], max_text_tokens=max_text_tokens)
    ids, labels = mntp_mask(batch.input_ids, text_candidates(batch, A), mntp_prob, mask_id, generator=generator)
    batch.input_ids = ids
    mae = None
    if batch.image_grid_thw is not None and mae_ratio > 0:
        merge = processor.image_processor.merge_size ** 2
        mae = mae_token_mask(batch.image_grid_thw, mae_ratio, merge=merge, generator=generator)
    return MaskedBatch(batch, labels, mae)


def recon_batch(processor, model, examples: list[Example], mntp_prob: float, mask_id: int,
                generator: torch.Generator, *, max_text_tokens: int | None = None) -> MaskedBatch:
    items, targets = zip(*(bridged_pair(ex) for ex in examples))
    batch = encode(processor, model, list(items), list(targets), max_text_tokens=max_text_tokens)
    ids, labels = mntp_mask(batch.input_ids, text_candidates(batch, B), mntp_prob, mask_id, generator=generator)
    batch.input_ids = ids
    return MaskedBatch(batch, labels)


def caption_batch(processor, model, examples: list[Example], *, max_text_tokens: int | None = None) -> MaskedBatch:
    """`[A][EOS][B]` with every B token a label and nothing masked (teacher-forced captioning)."""
    items, targets = zip(*(bridged_pair(ex) for ex in examples))
    batch = encode(processor, model, list(items), list(targets), max_text_tokens=max_text_tokens)
    labels = batch.input_ids.masked_fill(batch.roles != B, IGNORE)
    return MaskedBatch(batch, labels)


ATTRIBUTE_WORDS = (COLOURS, SHAPES, SIZES, ROWS, COLUMNS, NUMBERS)


def perturb_text(text: str, rng: random.Random) -> str | None:
    """`text` with one attribute word (colour, shape, size, row, column or number) replaced by another of
    its kind: a hard negative differing in one attribute, like mini-MMEB's. None if `text` has no such
    word. Never creates a held-out (OOD) colour-shape combination, so no OOD pairing leaks into training."""
    words = text.split()
    spots = [(i, kind) for i, w in enumerate(words) for kind in ATTRIBUTE_WORDS if w in kind]
    rng.shuffle(spots)
    for i, kind in spots:
        options = [w for w in kind if w != words[i]]
        rng.shuffle(options)
        for option in options:
            new = words[:i] + [option] + words[i + 1:]
            pairs = zip(new, new[1:])
            if not any((c, sh) in HELD_OUT for c, sh in pairs):
                return " ".join(new)
    return None


def pair_batch(processor, model, examples: list[Example], *, max_text_tokens: int | None = None,
               hard_negatives: int = 0, rng: random.Random | None = None) -> PairBatch:
    """Queries, their positives, then up to `hard_negatives` perturbed texts per text positive (extra targets)."""
    queries, positives = [ex.query for ex in examples], [ex.positive for ex in examples]
    extra: list[Item] = []
    rng = rng or random.Random(0)
    for p in positives:
        if p.image is not None or not p.text:
            continue
        for _ in range(hard_negatives):
            text = perturb_text(p.text, rng)
            if text is not None:
                extra.append(Item(text))
    targets = positives + extra
    batch = encode(processor, model, queries + targets, max_text_tokens=max_text_tokens)
    return PairBatch(batch, len(examples), [t.key for t in targets])


class TaskSchedule:
    """Which tasks step `s` draws from: all of them (`mixed`) or one, cycling in seeded shuffled rounds (`task`)."""

    def __init__(self, tasks: list[str] | None, batching: str, seed: int):
        self.tasks = tuple(tasks or TASK_NAMES)
        self.batching, self.seed = batching, seed

    def __call__(self, step: int) -> tuple[str, ...]:
        if self.batching == "mixed":
            return self.tasks
        n = len(self.tasks)
        order = list(self.tasks)
        random.Random(derived_seed(self.seed, "round", step // n)).shuffle(order)
        return (order[step % n],)


def stage_examples(recipe, stage: str, step: int, batch_size: int) -> list[Example]:
    """The training pairs of `step` of `stage`: a pure function of (recipe seed, data settings, stage, step)."""
    tasks = TaskSchedule(recipe.data.tasks, recipe.data.batching, derived_seed(recipe.seed, stage))(step)
    return training_examples(batch_size, seed=derived_seed(recipe.seed, stage, step), tasks=tasks)


def make_batch_fn(recipe, stage: str, processor, model, mask_id: int) -> Callable[[int], dict]:
    """`step -> {"recon"/"warmup": MaskedBatch, "pairs": PairBatch}` for one stage of `recipe`."""
    cfg = getattr(recipe.stages, stage)
    limit = recipe.data.max_text_tokens
    model = base_model(model)  # position ids come from the HF model, also under a peft wrapper

    def make(step: int) -> dict:
        examples = stage_examples(recipe, stage, step, cfg.batch_size)
        gen = torch.Generator().manual_seed(derived_seed(recipe.seed, stage, step, "mask"))
        if stage == "pretrain":
            return {"recon": caption_batch(processor, model, examples, max_text_tokens=limit)}
        if stage == "warmup":
            mae_ratio = cfg.mae_ratio if cfg.mae_weight > 0 else 0.0  # MAE off: no image token is masked
            return {"warmup": warmup_batch(processor, model, examples, cfg.mntp_prob, mae_ratio, mask_id, gen,
                                           max_text_tokens=limit)}
        out = {}
        if stage == "bridged" and cfg.recon_weight > 0:
            out["recon"] = recon_batch(processor, model, examples, cfg.mntp_prob, mask_id, gen, max_text_tokens=limit)
        if stage == "contrastive" or cfg.recon_weight < 1:
            rng = random.Random(derived_seed(recipe.seed, stage, step, "negatives"))
            out["pairs"] = pair_batch(processor, model, examples, max_text_tokens=limit,
                                      hard_negatives=recipe.data.hard_negatives, rng=rng)
        return out

    return make


def _image_tokens(batch: Batch, rows: range, merge: int) -> slice:
    """The slice of a per-merged-image-token vector (e.g. the MAE mask) that belongs to `rows`' images."""
    has_image = batch.is_image.any(1)
    counts = [0] + (batch.image_grid_thw.prod(-1) // merge).cumsum(0).tolist()
    return slice(counts[int(has_image[:rows.start].sum())], counts[int(has_image[:rows.stop].sum())])


def local_part(step: dict, rank: int, size: int, *, merge: int = 4) -> dict:
    """This rank's rows of a global step `{"recon"/"warmup": MaskedBatch, "pairs": PairBatch}` (contiguous blocks).

    A PairBatch keeps a block of the queries and one of the targets, and the global `target_keys`: the
    InfoNCE loss gathers every rank's embeddings back into the global order (`distributed.gather_with_grad`).
    """
    if size == 1:
        return step
    out = {}
    for key, part in step.items():
        if isinstance(part, PairBatch):
            queries = distributed.blocks(part.n, size)[rank]
            targets = distributed.blocks(len(part.target_keys), size)[rank]
            q, t = part.batch.rows(queries), part.batch.rows(range(part.n + targets.start,
                                                                                part.n + targets.stop))
            out[key] = PairBatch(_concat(q, t), len(queries), part.target_keys)
        else:
            rows = distributed.blocks(part.batch.input_ids.shape[0], size)[rank]
            mae = None
            if part.mae_tokens is not None:
                mae = part.mae_tokens[_image_tokens(part.batch, rows, merge)]
            out[key] = MaskedBatch(part.batch.rows(rows), part.labels[rows.start:rows.stop], mae)
    return out


def _concat(a: Batch, b: Batch) -> Batch:
    """Rows of `a` then rows of `b` (both cut from one batch, so of the same length)."""
    def cat(x, y, dim=0):
        if x is None or y is None:
            return x if y is None else y
        return torch.cat([x, y], dim)

    return Batch(**{name: cat(getattr(a, name), getattr(b, name), 1 if name == "position_ids" else 0)
                    for name in ("input_ids", "roles", "is_image", "mm_token_type_ids", "position_ids", "eos_index",
                                 "segment_ids", "pool", "pixel_values", "image_grid_thw")})


def prefetch(make: Callable[[int], dict], steps: range, *, depth: int = 3) -> Iterator[dict]:
    """Yield `make(step)` for `steps`, built ahead in a background thread (errors re-raised here)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item) -> None:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def work() -> None:
        try:
            for step in steps:
                if stop.is_set():
                    return
                put(make(step))
        except BaseException as err:  # noqa: BLE001  (handed to the consumer)
            put(err)
            return
        put(done)

    thread = threading.Thread(target=work, name="cocoa-lens-batches", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
