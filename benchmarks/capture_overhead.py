"""What capturing through TransformerLens costs, against a plain sdpa Hugging Face forward.

1. Time (CPU, 1 thread), rounds interleaved, median of the per-round ratios. Each round runs the same
   pre-encoded batches as a plain sdpa forward (`model(**inputs, logits_to_keep=1)`), a plain eager forward
   with `output_attentions` (what EOS-row patterns used to cost), and a capture: EOS states at every layer and
   the final norm plus EOS-row patterns of every layer and head, written to shards, as `capture()` runs it
   (sdpa; the rows come from each layer's queries and keys, `analysis.lens.pattern_rows`). Headline: capture /
   plain sdpa, target <= 1.15; capture / eager beside it. Two models:
   a. tiny Qwen2-VL (d=128, 4 layers), batches of 8 mini-MMEB image queries at 448x448 (256 image tokens, L~265);
   b. a real-width Qwen2-VL-2B stand-in (2 text layers, 2 vision blocks, random weights: tests/realwidth.py),
      a photograph (scikit-learn's china.jpg, 345 image tokens, L~350).
2. Memory (CPU): peak RSS of a whole `capture()` run at N=2,000 and N=20,000 samples, each in a fresh
   subprocess (resource.getrusage). Target ratio <= 1.2. Skipped with `--no-rss`.
3. GPU (when CUDA is available; `--gpu` runs only this): the same timing on a random-initialised Qwen2-VL
   at 2B size (Qwen2-VL-2B's config) in bf16, with samples/s and peak GPU memory, plus an end-to-end
   `capture()` under two mask types.

Prints, never asserts. Run: `.venv/bin/python benchmarks/capture_overhead.py [--no-rss] [--gpu]`
(CPU timing ~4 min, the RSS part several minutes more).
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
from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import realwidth  # noqa: E402  (the real-width stand-ins the tests use)

from analysis.data.items import Item  # noqa: E402
from analysis.inputs import encode  # noqa: E402
from analysis.lens import boot, capture  # noqa: E402
from analysis.lens.recorder import Recorder  # noqa: E402
from analysis.lens.sources import samples  # noqa: E402
from analysis.lens.store import CaptureSettings, SampleRecord, ShardWriter  # noqa: E402
from analysis.models import build_processor, build_tiny  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def compare(model, processor, batches: list, rounds: int, device: str = "cpu") -> dict:
    """Seconds per round of plain sdpa / plain eager forwards vs capture, interleaved; medians of per-round ratios."""
    bridge = boot(model, processor, attn_implementation="sdpa")  # wraps a copy: `model` stays plain Hugging Face
    dtype = next(model.parameters()).dtype

    def plain(implementation: str):
        model.set_attn_implementation(implementation)
        for batch in batches:
            model(**batch.model_inputs("causal", dtype=dtype), output_attentions=implementation == "eager",
                  logits_to_keep=1)

    recorder = Recorder(bridge, patterns="eos")  # as capture() runs it: hooks installed once per run

    def captured():
        n = sum(len(b.input_ids) for b in batches)
        with tempfile.TemporaryDirectory() as out, recorder.installed():
            settings = CaptureSettings(format="bench", checkpoint="bench", checkpoint_digest=None, preset="plain",
                                       mask_type="causal", dataset="bench", seed=0, n=n, with_target=False,
                                       patterns="eos", hooks=(), dtype=str(dtype))
            writer, record = ShardWriter(out, settings, 512), SampleRecord("bench", None, None, False, None, False)
            for batch in batches:
                for sample in recorder.run(batch, "causal"):
                    writer.add(dict(sample, record=record))
            writer.finish()

    runs = {"sdpa": lambda: plain("sdpa"), "eager": lambda: plain("eager"), "capture": captured}
    times = {name: [] for name in runs}
    for fn in runs.values():  # warm-up
        fn()
    for _ in range(rounds):
        for name, fn in runs.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    n = sum(len(b.input_ids) for b in batches)
    median = {name: statistics.median(t) for name, t in times.items()}
    ratios = {base: [c / b for c, b in zip(times["capture"], times[base])] for base in ("sdpa", "eager")}
    return dict(samples=n, seq_len=max(b.input_ids.shape[1] for b in batches), rounds=rounds, seconds=median,
                ratio_sdpa=statistics.median(ratios["sdpa"]), ratio_eager=statistics.median(ratios["eager"]),
                ratio_range=(min(ratios["sdpa"]), max(ratios["sdpa"])))


def _print_timing(label: str, r: dict) -> None:
    s = r["seconds"]
    print(f"{label}: {r['samples']} samples per round (padded length {r['seq_len']}), {r['rounds']} rounds, medians")
    print(f"  plain sdpa HF forward                 : {s['sdpa']:.3f} s ({r['samples'] / s['sdpa']:.1f} samples/s)")
    print(f"  plain eager HF forward + attentions   : {s['eager']:.3f} s")
    print(f"  capture (EOS states + EOS-row patterns): {s['capture']:.3f} s")
    low, high = r["ratio_range"]
    print(f"  capture / plain sdpa (headline)       : {r['ratio_sdpa']:.3f}   (target <= 1.15; per round "
          f"{low:.3f}-{high:.3f})")
    print(f"  capture / plain eager                 : {r['ratio_eager']:.3f}")


def tiny_batches(model, processor, n_batches: int, batch_size: int, side: int = 448) -> list:
    """Batches of mini-MMEB image queries, images at side x side (256 image tokens at 448)."""
    big = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=side * side, max_pixels=side * side),
                           tokenizer=processor.tokenizer, video_processor=Qwen2VLVideoProcessor())
    items = [s.item for s in samples("mini-mmeb", n=8 * n_batches * batch_size)[2] if s.item.has_image]
    items = items[:n_batches * batch_size]
    return [encode(big, model, items[i:i + batch_size]) for i in range(0, len(items), batch_size)]


def realwidth_batches(model, processor, batch_size: int) -> list:
    """One batch of `batch_size` photographs (345 image tokens each), each with a short caption."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(a) for a in load_sample_images().images]
    items = [Item("a temple in the photograph", photos[i % len(photos)], key=f"photo{i}") for i in range(batch_size)]
    return [encode(processor, model, items)]


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
        model = Qwen2VLForConditionalGeneration._from_config(config, attn_implementation="sdpa", dtype=torch.bfloat16)
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
    batches = tiny_batches(model, processor, args.gpu_batches, args.gpu_batch_size)
    r = compare(model, processor, [b.to("cuda") for b in batches], args.rounds, device="cuda")
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
    print(f"CPU, torch threads {torch.get_num_threads()}, load average {Path('/proc/loadavg').read_text().split()[:3]}")
    model, processor = build_tiny("tiny-qwen2-vl", attn_implementation="sdpa")
    batches = tiny_batches(model, processor, args.batches, args.batch_size)
    _print_timing("tiny Qwen2-VL (d=128, 4 layers)", compare(model, processor, batches, args.rounds))
    model, processor = realwidth.build_model("qwen2-vl-2b"), realwidth.build_processor("qwen2-vl-2b")
    batches = realwidth_batches(model, processor, args.real_batch_size)
    timing = compare(model, processor, batches, args.real_rounds)
    _print_timing("real-width Qwen2-VL-2B stand-in (2 text layers)", timing)
    del model, batches
    print(f"load average after timing {Path('/proc/loadavg').read_text().split()[:3]}")
    if args.no_rss:
        return
    small, large = peak_rss(args.n_small, 32), peak_rss(args.n_large, 32)
    print("peak RSS of a whole capture() (mini-MMEB, causal, EOS rows), each N in a fresh process:")
    for r in (small, large):
        print(f"  N={r['n']:>6}: {r['peak_rss_mib']:.0f} MiB ({r['seconds']:.0f} s, {r['disk_mib']:.1f} MiB on disk)")
    ratio, growth = large["peak_rss_mib"] / small["peak_rss_mib"], large["peak_rss_mib"] - small["peak_rss_mib"]
    print(f"  ratio N={args.n_large} / N={args.n_small}: {ratio:.3f}   (target <= 1.2); growth {growth:+.0f} MiB "
          f"(imports alone hold ~1.1 GiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8, help="tiny model: samples per batch")
    parser.add_argument("--batches", type=int, default=2, help="tiny model: batches per round")
    parser.add_argument("--rounds", type=int, default=15, help="tiny model (and GPU): interleaved rounds")
    parser.add_argument("--real-batch-size", type=int, default=1, help="real-width model: photographs per batch")
    parser.add_argument("--real-rounds", type=int, default=15)
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS part")
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
