"""Real size on this machine: a full-depth Qwen2-VL-2B stand-in (random weights, the published config).

Writes the checkpoint once (8.8 GB in float32; cached under $COCOA_LENS_BENCH_DIR, default
/tmp/cocoa-lens-bench), then prints: load time through the one opener, peak RSS against the weights'
size, and seconds per sample at about 350 tokens (a real photograph of 345 image tokens plus a short
prompt) for a plain sdpa forward, an eager forward, and a capture (EOS states at every layer and the EOS
attention rows). On a GPU (`--device cuda --dtype bfloat16`) the same script gives the bf16 numbers.

    .venv/bin/python benchmarks/real_size.py [--layers 28] [--samples 4] [--device cpu] [--dtype float32]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import realwidth  # noqa: E402  (the real-width stand-ins the tests use)

from analysis.checkpoints import open_checkpoint  # noqa: E402
from analysis.data.items import Item  # noqa: E402
from analysis.embed import eos_states  # noqa: E402
from analysis.inputs import encode  # noqa: E402


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def checkpoint(layers: int) -> Path:
    """The stand-in's directory, written first (in a child process, so this one's RSS stays clean)."""
    root = Path(os.environ.get("COCOA_LENS_BENCH_DIR", Path(tempfile.gettempdir()) / "cocoa-lens-bench"))
    path = root / f"qwen2-vl-2b-{layers}layers"
    if not (path / "config.json").is_file():
        start = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--write", str(path), "--layers", str(layers)], check=True)
        print(f"wrote {path} in {time.perf_counter() - start:.0f} s")
    return path


def write(path: Path, layers: int) -> None:
    cfg = realwidth.config("qwen2-vl-2b", text_layers=layers, vision_depth=32)
    torch.manual_seed(0)
    model = realwidth.Qwen2VLForConditionalGeneration._from_config(cfg, dtype=torch.float32)
    model.save_pretrained(path, safe_serialization=True)
    realwidth.build_processor("qwen2-vl-2b").save_pretrained(path)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--samples", type=int, default=2, help="timed forwards of one sample each")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--write", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write:
        return write(Path(args.write), args.layers)
    path = checkpoint(args.layers)
    weights_gb = sum(f.stat().st_size for f in path.glob("*.safetensors")) / 2**30
    start = time.perf_counter()
    opened = open_checkpoint(path, dtype=args.dtype, device=args.device)
    load_s = time.perf_counter() - start
    rss_loaded = peak_rss_gb()
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photo = Image.fromarray(load_sample_images().images[0])
    item = Item("a temple in the photograph", photo, instruction="Represent the given image.")
    model, processor = opened.model, opened.processor
    batch = encode(processor, model, [item], preset="vlm2vec").to(args.device)
    tokens = batch.input_ids.shape[1]

    def plain(implementation: str):
        model.config._attn_implementation = implementation
        model.model.language_model.config._attn_implementation = implementation
        with torch.no_grad():
            eos_states(model, batch, "causal")

    start = time.perf_counter()
    plain("sdpa")  # the first forward pages the memory-mapped weights in
    first_s = time.perf_counter() - start
    sdpa = timed(lambda: plain("sdpa"), args.samples)
    eager = timed(lambda: plain("eager"), args.samples)
    from analysis.lens import boot
    from analysis.lens.recorder import Recorder, attention_for

    bridge = boot(model, processor, copy=False, attn_implementation=attention_for("eos"))
    recorder = Recorder(bridge, "eos")
    with recorder.installed():
        captured = timed(lambda: recorder.run(batch, "causal"), args.samples)
    print(f"Qwen2-VL-2B stand-in, {args.layers} text layers, {args.dtype} on {args.device}, one sample of {tokens} "
          f"tokens")
    print(f"  weights on disk      {weights_gb:6.2f} GB")
    print(f"  load (open_checkpoint) {load_s:6.1f} s")
    print(f"  peak RSS after load  {rss_loaded:6.2f} GB  ({rss_loaded / weights_gb:.2f}x the weights: memory-mapped)")
    print(f"  first forward        {first_s:6.1f} s  (pages the weights in)")
    print(f"  plain sdpa forward   {sdpa:6.2f} s/sample")
    print(f"  eager forward        {eager:6.2f} s/sample  ({eager / sdpa:.2f}x sdpa)")
    print(f"  capture (eos rows)   {captured:6.2f} s/sample  ({captured / sdpa:.2f}x sdpa, {captured / eager:.2f}x "
          f"eager)")
    print(f"  peak RSS overall     {peak_rss_gb():6.2f} GB  ({peak_rss_gb() / weights_gb:.2f}x the weights)")


if __name__ == "__main__":
    main()
