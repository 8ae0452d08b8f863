"""Check that a `Batch` fits a checkpoint before running it: image grids, patch sizes, token counts.

Hugging Face fails deep inside the forward ("Image features and image tokens do not match") or,
worse, silently mis-places image features; these checks say which image is wrong and how to fix it.
"""

from __future__ import annotations

import torch

from analysis.inputs import Batch

FIX = "re-encode the items with analysis.inputs.encode using this checkpoint's own processor"


def check_batch(model, batch: Batch) -> None:
    """Raise `ValueError` when `batch`'s images do not match `model`'s vision tower or its own tokens."""
    vision = model.config.vision_config
    image_token = model.config.image_token_id
    n_pads = int((batch.input_ids == image_token).sum())
    if batch.image_grid_thw is None or batch.pixel_values is None:
        if n_pads:
            raise ValueError(f"the batch holds {n_pads} image tokens but no pixel_values / image_grid_thw; {FIX}")
        return
    grid = batch.image_grid_thw.long()
    if grid.ndim != 2 or grid.shape[1] != 3:
        raise ValueError(f"image_grid_thw must be [n_images, 3] (t, h, w); got shape {tuple(grid.shape)}; {FIX}")
    per_patch = 3 * vision.temporal_patch_size * vision.patch_size ** 2
    if batch.pixel_values.shape[-1] != per_patch:
        raise ValueError(
            f"pixel_values have {batch.pixel_values.shape[-1]} values per patch but this checkpoint's vision tower "
            f"takes 3 x {vision.temporal_patch_size} x {vision.patch_size}^2 = {per_patch}: the processor was made for "
            f"another patch size; load the processor from the same checkpoint")
    if int(grid.prod(-1).sum()) != batch.pixel_values.shape[0]:
        raise ValueError(f"image_grid_thw describes {int(grid.prod(-1).sum())} patches but pixel_values hold "
                         f"{batch.pixel_values.shape[0]}; {FIX}")
    merge = vision.spatial_merge_size ** 2
    if (grid[:, 1:] % vision.spatial_merge_size).any():
        bad = int(((grid[:, 1:] % vision.spatial_merge_size).any(-1)).nonzero()[0])
        raise ValueError(f"image {bad} has grid {tuple(grid[bad].tolist())}, not a multiple of the spatial merge "
                         f"size {vision.spatial_merge_size}; {FIX}")
    expected = (grid.prod(-1) // merge).tolist()
    found = _image_runs(batch.input_ids == image_token)
    if len(found) != len(expected):
        raise ValueError(f"image_grid_thw lists {len(expected)} images but the sequences hold {len(found)} runs of "
                         f"image tokens; {FIX}")
    for i, (want, got) in enumerate(zip(expected, found)):
        if want != got:
            raise ValueError(f"image {i} has grid {tuple(grid[i].tolist())} = {want} tokens after "
                             f"{vision.spatial_merge_size}x{vision.spatial_merge_size} merging, but its sequence "
                             f"holds {got} image tokens; {FIX}")


def _image_runs(is_image: torch.Tensor) -> list[int]:
    """Lengths of the runs of image tokens, row by row: one run per image, in order."""
    edges = torch.nn.functional.pad(is_image.to(torch.int8), (1, 1)).diff(dim=1)
    starts, ends = (edges == 1).nonzero()[:, 1], (edges == -1).nonzero()[:, 1]  # row-major: they pair up
    return (ends - starts).tolist()
