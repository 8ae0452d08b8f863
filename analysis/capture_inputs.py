"""The inputs behind captured samples: a capture stores a sample's key and text, not its image; a named
dataset (mini-MMEB, shapes, digits) is redrawn from the capture's settings to get the image back."""

from __future__ import annotations

from itertools import islice

from PIL import Image

from analysis.lens.store import Capture, SampleRecord


def captured_image(capture: Capture, i: int) -> Image.Image | None:
    """The RGB image of sample `i` of `capture` as it was given to the processor (before resizing), or None
    when the sample has no image or the capture's dataset cannot be redrawn (user data that moved, a list of
    items given in Python). The redrawn sample's key must equal the captured one."""
    from analysis.lens.sources import samples  # the data builders: only when an image is asked for

    record = capture.records[i]
    if not record.has_image:
        return None
    meta = capture.meta
    try:
        _, _, stream = samples(meta["dataset"], n=meta["n"], seed=meta["seed"], with_target=meta.get("with_target",
                                                                                                   False))
        redrawn = next(islice(stream, i, None), None)
    except Exception:  # noqa: BLE001 - a dataset that cannot be redrawn here: no image, the figure stays bare
        return None
    if redrawn is None or redrawn.item.key != record.key:
        return None
    return redrawn.item.load_image()


def sample_labels(records: list[SampleRecord], key: str) -> list[str]:
    """Each captured sample's label `key`, else its metadata value `key` (e.g. "meta_task"), else "none"."""
    return [str(r.labels.get(key, r.meta.get(key, "none"))) for r in records]
