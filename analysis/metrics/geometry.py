"""Embedding-space geometry: alignment, uniformity, effective rank, anisotropy, linear CKA, principal directions.

Inputs are torch tensors or array-likes; everything is computed in float64 numpy.
"""

from __future__ import annotations

import numpy as np

from analysis.metrics.arrays import as_numpy


def _matrix(x, name: str = "x") -> np.ndarray:
    x = as_numpy(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be [N, d], got shape {x.shape}")
    return x


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def alignment(x, y, *, alpha: float = 2) -> float:
    """Alignment (Wang & Isola, 2020): mean ``||x_i - y_i||^alpha`` of L2-normalised positive
    pairs ``x [N, d]``, ``y [N, d]`` (rows are normalised here). Lower is better aligned."""
    x, y = _l2_normalise(_matrix(x, "x")), _l2_normalise(_matrix(y, "y"))
    if x.shape != y.shape:
        raise ValueError(f"x and y must have one shape, got {x.shape} and {y.shape}")
    return float(np.mean(np.linalg.norm(x - y, axis=1) ** alpha))


def uniformity(x, *, t: float = 2) -> float:
    """Uniformity (Wang & Isola, 2020): ``log mean_{i<j} exp(-t ||x_i - x_j||^2)`` of the
    L2-normalised rows of ``x [N, d]``. Lower is more uniform on the sphere."""
    x = _l2_normalise(_matrix(x))
    sq_dist = np.maximum(2.0 - 2.0 * (x @ x.T), 0.0)
    i, j = np.triu_indices(len(x), k=1)
    return float(np.log(np.mean(np.exp(-t * sq_dist[i, j]))))


def effective_rank(x) -> float:
    """Effective rank (Roy & Vetterli, 2007) of ``x [N, d]``: ``exp`` of the Shannon entropy of
    the singular values normalised to sum 1 (no centring). Between 1 and ``min(N, d)``."""
    s = np.linalg.svd(_matrix(x), compute_uv=False)
    p = s[s > 0] / s.sum()
    return float(np.exp(-np.sum(p * np.log(p))))


def anisotropy(x) -> float:
    """Mean cosine similarity over distinct pairs ``i != j`` of the rows of ``x [N, d]``."""
    x = _l2_normalise(_matrix(x))
    n = len(x)
    cos = x @ x.T
    return float((cos.sum() - np.trace(cos)) / (n * (n - 1)))


def is_constant(x, *, rtol: float = 1e-6) -> bool:
    """Whether every row of ``x [N, d]`` is the same vector (up to ``rtol`` of its scale): a representation
    with no variance across inputs, such as the layer-0 EOS state (the EOS token's embedding for every input)."""
    x = _matrix(x)
    spread = float(np.abs(x - x.mean(axis=0)).max(initial=0.0))
    return spread <= rtol * max(float(np.abs(x).max(initial=0.0)), np.finfo(float).tiny)


def linear_cka(x, y) -> float:
    """Linear CKA (Kornblith et al., 2019) of ``x [N, d1]`` and ``y [N, d2]``:
    ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` on column-centred features.

    Undefined (NaN, without a warning) when either side is constant across the inputs (`is_constant`): a
    representation that does not vary has no similarity structure to compare (0/0)."""
    x, y = _matrix(x, "x"), _matrix(y, "y")
    if len(x) != len(y):
        raise ValueError(f"x and y need the same samples, got {len(x)} and {len(y)} rows")
    if is_constant(x) or is_constant(y):
        return float("nan")
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    cross = np.linalg.norm(y.T @ x) ** 2
    return float(cross / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def cka_matrix(layers_a, layers_b) -> np.ndarray:
    """Layer-by-layer linear CKA between two checkpoints:
    ``[N, La, d_a]``, ``[N, Lb, d_b]`` (same N samples) -> ``[La, Lb]``; rows / columns of a layer that is
    constant across the inputs (layer 0 of EOS states) are NaN (`linear_cka`)."""
    a, b = as_numpy(layers_a), as_numpy(layers_b)
    if a.ndim != 3 or b.ndim != 3:
        raise ValueError(f"expected [N, layers, d] arrays, got shapes {a.shape} and {b.shape}")
    return np.array([[linear_cka(a[:, i], b[:, j]) for j in range(b.shape[1])] for i in range(a.shape[1])])


def geometry_summary(x) -> dict:
    """Uniformity, effective rank and anisotropy of embeddings ``x [N, d]``, and ``n``."""
    return dict(uniformity=uniformity(x), effective_rank=effective_rank(x), anisotropy=anisotropy(x), n=len(x))


def principal_components(x, *, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` principal directions of ``x [N, d]`` (column-centred) as rows ``[k, d]`` (unit
    length, sign fixed so the largest entry is positive) and the share of variance each carries ``[k]``."""
    x = _matrix(x)
    if not 1 <= k <= min(x.shape):
        raise ValueError(f"k must lie in 1..{min(x.shape)} for {x.shape[0]} samples of dimension {x.shape[1]}")
    _, s, vt = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
    components = vt[:k] * np.sign(vt[:k][np.arange(k), np.abs(vt[:k]).argmax(axis=1)])[:, None]
    return components, (s[:k] ** 2) / max(np.sum(s ** 2), np.finfo(float).tiny)


def principal_shift(a, b, *, k: int = 3) -> dict:
    """How the principal directions move between two checkpoints' states of the same inputs, ``a`` and
    ``b`` ``[N, d]`` ("A Text is Worth Several Tokens", arXiv 2406.17378: an embedder differs from its
    backbone mainly along the first principal component).

    Returns lists over the first ``k`` PCs: ``variance_a`` / ``variance_b`` (share of variance each carries),
    ``cosine`` (``|cos|`` of PC i of ``a`` and PC i of ``b``; 1 = the direction kept), ``overlap`` ``[k][k]``
    (``|cos|`` of every pair) and, of the per-input shift ``b - a`` (uncentred: a common offset is a shift
    too), ``shift_along_a`` (share of its energy along a's PC i) and ``shift_variance`` (the share its own
    first principal directions carry, uncentred).
    """
    a, b = _matrix(a, "a"), _matrix(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must hold the same inputs in the same space, got shapes {a.shape} and {b.shape}")
    pcs_a, var_a = principal_components(a, k=k)
    pcs_b, var_b = principal_components(b, k=k)
    shift = b - a
    energy = max(float(np.sum(shift ** 2)), np.finfo(float).tiny)
    s = np.linalg.svd(shift, compute_uv=False)
    overlap = np.abs(pcs_a @ pcs_b.T)
    return {"variance_a": var_a.tolist(), "variance_b": var_b.tolist(), "cosine": np.diag(overlap).tolist(),
            "overlap": overlap.tolist(), "shift_along_a": (np.sum((shift @ pcs_a.T) ** 2, axis=0) / energy).tolist(),
            "shift_variance": (s[:k] ** 2 / energy).tolist()}
