"""Forward latency of the embedded tiny backbones on a batch of 32 mini-MMEB queries (CPU), per mask type.

Prints seconds per forward for our role-masked forward (additive 4D mask + mRoPE ids) and the plain
Hugging Face forward on the same batch (its own causal mask), and their ratio.
Run: `.venv/bin/python benchmarks/forward_latency.py`
"""

import time

import torch

from analysis.data import build_mini_mmeb
from analysis.inputs import encode
from analysis.masks import MASK_TYPES
from analysis.models import TINY_BACKBONES, build_tiny


def _time(fn, repeats: int = 20) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


@torch.no_grad()
def main() -> None:
    items = [ex.query for d in build_mini_mmeb(16, tasks=("ShapesI2T", "ShapesColourVQA")) for ex in d.examples][:32]
    print(f"torch threads: {torch.get_num_threads()}, batch of {len(items)} image+text queries")
    for name in TINY_BACKBONES:
        model, processor = build_tiny(name)
        batch = encode(processor, model, items)
        plain = dict(input_ids=batch.input_ids, attention_mask=(batch.roles != 3).long(),
                     pixel_values=batch.pixel_values, image_grid_thw=batch.image_grid_thw,
                     mm_token_type_ids=batch.mm_token_type_ids)
        base = _time(lambda: model.model(**plain))
        print(f"{name}: plain HF forward {base * 1e3:.1f} ms (seq len {batch.input_ids.shape[1]})")
        for mask_type in MASK_TYPES:
            ours = _time(lambda: model.model(**batch.model_inputs(mask_type)))
            print(f"  {mask_type:<20} {ours * 1e3:6.1f} ms   ratio to plain {ours / base:.2f}")


if __name__ == "__main__":
    main()
