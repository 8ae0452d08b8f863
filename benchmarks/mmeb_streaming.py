"""What streaming MMEB-eval saves: the old eager loader against the lazy one, on a synthetic MMEB-V1 directory.

A text-to-image dataset like MSCOCO_t2i: Q text queries, each with C image candidates drawn from D distinct
96x96 JPEGs (defaults 800 / 100 / 300). The old loader (re-implemented here as it was) decoded every
candidate of every query on loading and kept it: Q*C decodes held in memory. The lazy loader decodes nothing
on loading; an embedding pass (as `analysis.embed.embed_items` runs it: distinct keys, 64 per batch) decodes
each distinct image once and holds one batch. Each measurement runs in a fresh subprocess: seconds, image
decodes and peak RSS above the process's baseline (resource.getrusage).

Prints, never asserts. Run: `.venv/bin/python benchmarks/mmeb_streaming.py` (~10 s, < 1 GB).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from analysis.data.items import Item
from analysis.data.mmeb_eval import load_mmeb_eval

DATASET = "MSCOCO_t2i"


def write_dir(root: Path, queries: int, candidates: int, distinct: int, seed: int = 0) -> None:
    """A synthetic MMEB-V1 directory: root/MSCOCO_t2i/test.jsonl and root/eval_images/coco/*.jpg."""
    rng = random.Random(seed)
    images = root / "eval_images" / "coco"
    images.mkdir(parents=True)
    for i in range(distinct):
        Image.effect_noise((96, 96), 40 + i % 50).convert("RGB").save(images / f"{i:05d}.jpg", quality=90)
    (root / DATASET).mkdir()
    with (root / DATASET / "test.jsonl").open("w") as f:
        for q in range(queries):
            chosen = rng.sample(range(distinct), candidates)
            f.write(json.dumps(dict(qry_text=f"Find me an everyday image that matches the given caption: scene {q}",
                                    qry_img_path="", tgt_text=["<|image_1|>\nRepresent the given image."] * candidates,
                                    tgt_img_path=[f"coco/{i:05d}.jpg" for i in chosen])) + "\n")


def eager(root: Path, queries: int) -> list:
    """The loader as it was: every candidate decoded on loading, once per occurrence, and kept."""
    out = []
    with (root / DATASET / "test.jsonl").open() as f:
        for line, _ in zip(f, range(queries)):
            r = json.loads(line)
            candidates = []
            for text, path in zip(r["tgt_text"], r["tgt_img_path"]):
                text = text.replace("<|image_1|>", "").strip()
                with Image.open(root / "eval_images" / path) as img:
                    candidates.append(Item(text, img.convert("RGB"), key=f"{text}|{path}"))
            out.append((Item(r["qry_text"]), candidates))
    return out


def lazy(root: Path, queries: int, batch_size: int = 64) -> list:
    """The streaming loader, then one embedding pass's decodes (distinct keys, a batch held at a time)."""
    (dataset,) = load_mmeb_eval(root, datasets=[DATASET], max_queries=queries)
    distinct = list({c.key: c for ex in dataset.examples for c in ex.candidates}.values())
    for start in range(0, len(distinct), batch_size):
        batch = [it.load_image() for it in distinct[start:start + batch_size]]
        del batch
    return dataset.examples


def worker(mode: str, root: Path, queries: int) -> dict:
    decodes = 0
    real_open = Image.open

    def counting(*args, **kwargs):
        nonlocal decodes
        decodes += 1
        return real_open(*args, **kwargs)

    Image.open = counting
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    kept = {"eager": eager, "lazy": lazy}[mode](root, queries)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert len(kept) == queries
    return dict(seconds=seconds, decodes=decodes, peak_mb=(peak - base) / 1024)


def measure(mode: str, root: Path, queries: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", mode, str(root), str(queries)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=800)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--distinct", type=int, default=300)
    parser.add_argument("--worker", nargs=3, metavar=("MODE", "DIR", "QUERIES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        mode, root, queries = args.worker
        print(json.dumps(worker(mode, Path(root), int(queries))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_dir(root, args.queries, args.candidates, args.distinct)
        print(f"synthetic {DATASET}: {args.candidates} image candidates per query from {args.distinct} distinct "
              f"96x96 JPEGs")
        counts = sorted({max(args.queries // 16, 1), args.queries // 4, args.queries})
        rows = {}
        for queries in counts:
            # the eager loader holds every decode (~37 KB each here): keep it under ~1 GB
            modes = ("eager", "lazy") if queries * args.candidates <= 25_000 else ("lazy",)
            for mode in modes:
                rows[mode, queries] = r = measure(mode, root, queries)
                print(f"{mode:<6} {queries:>5} queries: {r['seconds']:6.2f} s  {r['decodes']:>6} decodes  "
                      f"peak RSS +{r['peak_mb']:7.1f} MB")
        both = [q for q in counts if ("eager", q) in rows]
        for q in both:
            e, lz = rows["eager", q], rows["lazy", q]
            print(f"eager / lazy at {q} queries: time {e['seconds'] / lz['seconds']:.1f}x, decodes "
                  f"{e['decodes'] / lz['decodes']:.1f}x, peak RSS {e['peak_mb'] / max(lz['peak_mb'], 0.1):.1f}x")
        small, large = counts[0], counts[-1]
        print(f"lazy peak RSS, {large} vs {small} queries: {rows['lazy', large]['peak_mb']:.1f} vs "
              f"{rows['lazy', small]['peak_mb']:.1f} MB (flat: images are decoded per batch, not per query)")


if __name__ == "__main__":
    main()
