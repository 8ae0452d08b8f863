"""What capturing through TransformerLens costs, against a plain eager Hugging Face forward.

1. Time (CPU, tiny Qwen2-VL, 1 thread): capture of EOS states (every layer + final norm) and EOS-row
   patterns (all layers, heads), written to shards, against `model(**inputs, output_attentions=True)` on
   the same pre-encoded mini-MMEB batches; both with `logits_to_keep=1`, rounds interleaved. Target <= 1.15.
2. Memory (CPU): peak RSS of a whole `capture()` run at N=2,000 and N=20,000 samples, each in a fresh
   subprocess (resource.getrusage). Target ratio <= 1.2.
3. GPU (when CUDA is available; `--gpu` runs only this): the same timing on a random-initialised Qwen2-VL
   at 2B size (Qwen2-VL-2B's config) in bf16, with samples/s and peak GPU memory, plus an end-to-end
   `capture()` under two mask types.

Prints, never asserts. Run: `.venv/bin/python benchmarks/capture_overhead.py [--gpu]` (CPU part: ~70 s).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from analysis.inputs import encode
from analysis.lens import boot, capture
from analysis.lens.recorder import Recorder
from analysis.lens.sources import samples
from analysis.lens.store import ShardWriter
from analysis.models import build_processor, build_tiny


def _batches(processor, model, n_batches: int, batch_size: int, device: str = "cpu"):
    stream = samples("mini-mmeb", n_batches * batch_size)[2]
    items = [s.item for s in stream]
    return [encode(processor, model, items[i:i + batch_size]).to(device) for i in range(0, len(items), batch_size)]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def compare(model, processor, n_batches: int, batch_size: int, rounds: int, device: str = "cpu") -> dict:
    """Seconds per round of plain HF forwards vs capture (hooks, EOS rows, shard writes), interleaved."""
    batches = _batches(processor, model, n_batches, batch_size, device)
    bridge = boot(model, processor)  # wraps a copy: `model` stays the plain Hugging Face baseline
    dtype = next(model.parameters()).dtype

    def plain():
        for batch in batches:
            model(**batch.model_inputs("causal", dtype), output_attentions=True, logits_to_keep=1)

    recorder = Recorder(bridge, patterns="eos")  # as capture() runs it: hooks installed once per run

    def captured():
        with tempfile.TemporaryDirectory() as out, recorder.installed():
            writer = ShardWriter(out, dict(format="bench", n=len(batches) * batch_size, mask_type="causal"), 512)
            for batch in batches:
                for sample in recorder.run(batch, "causal"):
                    writer.add(dict(sample, record=dict(has_b=False)))
            writer.finish()

    times = {"plain": [], "capture": []}
    for fn in (plain, captured):  # warm-up
        fn()
    for _ in range(rounds):
        for name, fn in (("plain", plain), ("capture", captured)):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    n = n_batches * batch_size
    plain_s, capture_s = statistics.median(times["plain"]), statistics.median(times["capture"])
    return dict(samples=n, seq_len=max(b.input_ids.shape[1] for b in batches), plain_s=plain_s, capture_s=capture_s,
                ratio=capture_s / plain_s, plain_per_s=n / plain_s, capture_per_s=n / capture_s)


def _print_timing(label: str, r: dict) -> None:
    print(f"{label}: {r['samples']} samples (max seq len {r['seq_len']}), median over rounds")
    print(f"  plain eager HF forward + output_attentions: {r['plain_s']:.3f} s ({r['plain_per_s']:.0f} samples/s)")
    print(f"  capture (EOS states + EOS-row patterns)   : {r['capture_s']:.3f} s ({r['capture_per_s']:.0f} samples/s)")
    print(f"  ratio capture / plain                     : {r['ratio']:.3f}   (target <= 1.15)")


def rss_child(n: int, batch_size: int) -> None:
    """Run one capture of `n` samples in this process and print its peak RSS (MiB) as JSON."""
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        capture(build_tiny("tiny-qwen2-vl"), "mini-mmeb", "causal", out, n=n, patterns="eos", batch_size=batch_size)
        seconds = time.perf_counter() - start
        disk = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps(dict(n=n, peak_rss_mib=peak, seconds=seconds, disk_mib=disk / 2**20)))


def peak_rss(n: int, batch_size: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--rss-child", str(n), "--batch-size", str(batch_size)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def qwen2_vl_2b(processor):
    """Random-initialised Qwen2-VL at the 2B size (Qwen2-VL-2B's config), bf16 on the GPU; our tokenizer's ids."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    tok = processor.tokenizer
    ids = {k: tok.convert_tokens_to_ids(t) for k, t in dict(
        image_token_id="<|image_pad|>", video_token_id="<|video_pad|>", vision_start_token_id="<|vision_start|>",
        vision_end_token_id="<|vision_end|>").items()}
    text = dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                intermediate_size=8960, vocab_size=151936, max_position_embeddings=32768, rms_norm_eps=1e-6,
                pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]})
    vision = dict(depth=32, embed_dim=1280, hidden_size=1536, mlp_ratio=4, num_heads=16, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2)
    config = Qwen2VLConfig(text_config=text, vision_config=vision, **ids)
    config.architectures = ["Qwen2VLForConditionalGeneration"]
    config.tie_word_embeddings = True
    with torch.device("cuda"):
        model = Qwen2VLForConditionalGeneration._from_config(config, attn_implementation="eager", dtype=torch.bfloat16)
    return model.eval()


def gpu_section(args) -> None:
    if not torch.cuda.is_available():
        print("\n--gpu: no CUDA device here; skipped")
        return
    processor = build_processor()
    model = qwen2_vl_2b(processor)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"\nGPU: {torch.cuda.get_device_name()}, random Qwen2-VL 2B size ({n_params / 1e9:.2f} B params), bf16")
    torch.cuda.reset_peak_memory_stats()
    r = compare(model, processor, args.gpu_batches, args.gpu_batch_size, args.rounds, device="cuda")
    _print_timing("  model-side", r)
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(f"  peak GPU memory (model + bridged copy + activations): {peak:.2f} GiB")
    torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        caps = capture((model, processor), "mini-mmeb", "causal,eos_bridged", out, n=args.gpu_e2e_n,
                       with_target=True, patterns="eos+b", batch_size=args.gpu_batch_size, copy=False)
        seconds = time.perf_counter() - start
    n = sum(len(c) for c in caps.values())
    print(f"  end-to-end capture() causal + eos_bridged, eos+b rows, {args.gpu_e2e_n} samples each: {seconds:.1f} s, "
          f"{n / seconds:.0f} sample-masks/s (data generation and encoding on the CPU included), "
          f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


def cpu_section(args) -> None:
    torch.set_num_threads(1)
    model, processor = build_tiny("tiny-qwen2-vl")
    print(f"CPU, torch threads {torch.get_num_threads()}, tiny Qwen2-VL (d=128, 4 layers), batch {args.batch_size}")
    _print_timing("time", compare(model, processor, args.batches, args.batch_size, args.rounds))
    small, large = peak_rss(args.n_small, args.batch_size), peak_rss(args.n_large, args.batch_size)
    print("peak RSS of a whole capture() (mini-MMEB, causal, EOS rows), each N in a fresh process:")
    for r in (small, large):
        print(f"  N={r['n']:>6}: {r['peak_rss_mib']:.0f} MiB ({r['seconds']:.0f} s, {r['disk_mib']:.1f} MiB on disk)")
    ratio, growth = large["peak_rss_mib"] / small["peak_rss_mib"], large["peak_rss_mib"] - small["peak_rss_mib"]
    print(f"  ratio N={args.n_large} / N={args.n_small}: {ratio:.3f}   (target <= 1.2); growth {growth:+.0f} MiB "
          f"(imports alone hold ~1.1 GiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=25, help="CPU timing: batches per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n-small", type=int, default=2000)
    parser.add_argument("--n-large", type=int, default=20000)
    parser.add_argument("--gpu", action="store_true", help="only the GPU section (it runs anyway when CUDA is there)")
    parser.add_argument("--gpu-batches", type=int, default=16)
    parser.add_argument("--gpu-batch-size", type=int, default=32)
    parser.add_argument("--gpu-e2e-n", type=int, default=1024)
    parser.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child is not None:
        rss_child(args.rss_child, args.batch_size)
        return
    if not args.gpu:
        cpu_section(args)
    gpu_section(args)


if __name__ == "__main__":
    main()
