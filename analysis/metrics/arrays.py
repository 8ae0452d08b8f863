"""Array conversion shared by the metrics: everything is computed in float64 numpy."""

from __future__ import annotations

import numpy as np


def as_numpy(x) -> np.ndarray:
    """Torch tensor (any float dtype, any device) or array-like -> float64 numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)
