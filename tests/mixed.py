"""The mixed batch the capture parity tests share: images of two grid sizes, B segments, text only, padding."""

from analysis.data import build_mini_mmeb
from analysis.data.items import Item
from analysis.inputs import Batch, encode


def mixed_batch(processor, model) -> Batch:
    """4 samples: image+text with B, text-only without B, a 56px crop (other grid) with B, image+text with B."""
    i2t, t2i, ground = build_mini_mmeb(2, tasks=("ShapesI2T", "ShapesT2I", "ShapesGround"), splits=("ind",))
    crop = ground.examples[0].candidates[0]
    items = [i2t.examples[0].query, t2i.examples[0].query, Item("", crop.image, key="crop"), i2t.examples[1].query]
    targets = [i2t.examples[0].positive.text, "", "a red circle", i2t.examples[1].positive.text]
    return encode(processor, model, items, targets)
