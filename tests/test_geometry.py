import math

import numpy as np
import pytest
import torch

from analysis.metrics.geometry import (
    alignment,
    anisotropy,
    cka_matrix,
    effective_rank,
    geometry_summary,
    is_constant,
    linear_cka,
    principal_components,
    principal_shift,
    uniformity,
)


def _cka_gram(x, y):
    """CKA through Gram matrices and an explicit centring matrix H (Kornblith et al., eq. 1-3)."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    gram_x, gram_y = x @ x.T, y @ y.T

    def hsic(a, b):
        return np.trace(a @ h @ b @ h)

    return hsic(gram_x, gram_y) / math.sqrt(hsic(gram_x, gram_x) * hsic(gram_y, gram_y))


def test_cka_identity_invariances_and_gram_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6))
    y = x @ rng.normal(size=(6, 9)) + 0.5 * rng.normal(size=(40, 9))
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, y) == pytest.approx(_cka_gram(x, y), rel=1e-10)
    assert linear_cka(3.7 * x @ q, y) == pytest.approx(linear_cka(x, y), rel=1e-10)
    assert linear_cka(x + 5.0, y) == pytest.approx(linear_cka(x, y), rel=1e-10)
    assert 0.0 < linear_cka(x, y) < 1.0
    assert linear_cka(torch.tensor(x, dtype=torch.float32), y) == pytest.approx(linear_cka(x, y), rel=1e-5)


def test_cka_matrix():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(30, 3, 5))
    b = rng.normal(size=(30, 2, 7))
    m = cka_matrix(a, b)
    assert m.shape == (3, 2)
    assert m[2, 1] == pytest.approx(_cka_gram(a[:, 2], b[:, 1]))
    np.testing.assert_allclose(np.diag(cka_matrix(a, a)), 1.0)


def test_alignment_and_uniformity_by_hand():
    x = np.array([[1.0, 0.0], [0.0, 1.0]])
    y = np.array([[0.0, 3.0], [0.0, 1.0]])  # normalised to [0, 1]: distances sqrt(2) and 0
    assert alignment(x, y) == pytest.approx(1.0)
    assert alignment(x, y, alpha=1) == pytest.approx(math.sqrt(2) / 2)
    pts = np.array([[2.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])  # squared distances 4, 2, 2
    assert uniformity(pts) == pytest.approx(math.log((math.exp(-8) + 2 * math.exp(-4)) / 3))
    assert uniformity(pts, t=1) == pytest.approx(math.log((math.exp(-4) + 2 * math.exp(-2)) / 3))


def test_effective_rank():
    assert effective_rank(np.eye(6)) == pytest.approx(6.0)
    rng = np.random.default_rng(2)
    assert effective_rank(np.outer(rng.normal(size=20), rng.normal(size=8))) == pytest.approx(1.0)
    assert 7.9 < effective_rank(rng.normal(size=(4000, 8))) <= 8.0


def test_anisotropy():
    assert anisotropy(np.tile([[1.0, 2.0, 3.0]], (5, 1))) == pytest.approx(1.0)
    assert anisotropy(np.array([[1.0, 0.0], [-2.0, 0.0]])) == pytest.approx(-1.0)
    assert anisotropy(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])) == pytest.approx(math.sqrt(2) / 3)


def _axis_data(n=4000, seed=3):
    """Axis-aligned data with standard deviations 4, 2, 1, 0.5 along axes 0..3: the PCs are the axes."""
    return np.random.default_rng(seed).normal(size=(n, 4)) * np.array([4.0, 2.0, 1.0, 0.5])


def test_principal_components_of_axis_aligned_data():
    x = _axis_data()
    components, variance = principal_components(x, k=2)
    np.testing.assert_allclose(np.abs(components), np.eye(4)[:2], atol=0.03)
    assert (components[np.arange(2), np.arange(2)] > 0).all()  # sign fixed: the largest entry is positive
    np.testing.assert_allclose(variance, np.array([16.0, 4.0]) / 21.25, atol=0.02)
    with pytest.raises(ValueError, match="k must lie in 1..4"):
        principal_components(x, k=5)


def test_principal_shift_known_cases():
    x = _axis_data()
    same = principal_shift(x, 2.0 * x, k=3)
    np.testing.assert_allclose(same["cosine"], 1.0, atol=1e-9)
    np.testing.assert_allclose(same["variance_a"], same["variance_b"], atol=1e-12)
    swapped = principal_shift(x, x[:, [1, 0, 2, 3]], k=2)  # b's main direction is a's second one
    np.testing.assert_allclose(swapped["cosine"], 0.0, atol=0.05)
    np.testing.assert_allclose(swapped["overlap"], [[0.0, 1.0], [1.0, 0.0]], atol=0.05)
    direction = np.array([0.0, 0.6, 0.8, 0.0])
    offset = principal_shift(x, x + 3.0 * direction, k=3)  # every input moves by the same vector
    np.testing.assert_allclose(offset["shift_variance"], [1.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(offset["shift_along_a"], [0.0, 0.36, 0.64], atol=0.01)
    np.testing.assert_allclose(offset["cosine"], 1.0, atol=1e-9)  # a common offset leaves the centred PCs alone
    with pytest.raises(ValueError, match="same inputs"):
        principal_shift(x, x[:10])


def test_cka_of_a_constant_layer_is_nan_without_a_warning():
    """Layer 0 of the EOS states is the EOS token's embedding for every input: nothing to compare."""
    import warnings

    rng = np.random.default_rng(0)
    states = rng.normal(size=(20, 3, 8))
    states[:, 0] = rng.normal(size=8)  # constant across the inputs
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = cka_matrix(states, states)
    assert np.isnan(m[0]).all() and np.isnan(m[:, 0]).all()
    np.testing.assert_allclose(np.diag(m)[1:], 1.0)
    assert is_constant(states[:, 0]) and not is_constant(states[:, 1])
    assert math.isnan(linear_cka(np.ones((5, 3)), rng.normal(size=(5, 2))))


def test_geometry_summary():
    x = np.random.default_rng(0).normal(size=(30, 6))
    assert geometry_summary(x) == dict(uniformity=uniformity(x), effective_rank=effective_rank(x),
                                       anisotropy=anisotropy(x), n=30)
