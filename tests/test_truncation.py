"""The truncation check (the package's central invariant) as a function, on constructed and on real masks."""

from types import SimpleNamespace as Sample  # what truncation_check reads of a CapturedSample

import numpy as np
import pytest

from analysis.masks import allowed
from analysis.metrics.truncation import TruncationCheck, assert_truncation, truncation_check

ROLES = ["A", "A", "A", "EOS", "B", "B"]


def _patterns_under(mask_type: str, layers: int = 2, heads: int = 2, seed: int = 0) -> np.ndarray:
    """Softmax patterns [layers, heads, L, L] that attend only where `mask_type` allows."""
    ok = allowed(ROLES, mask_type).numpy()
    logits = np.random.default_rng(seed).normal(size=(layers, heads, len(ROLES), len(ROLES)))
    e = np.where(ok, np.exp(logits), 0.0)
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("mask_type", ["eos_bridged", "eos_bridged_strict"])
def test_bridged_masks_keep_the_invariant(mask_type):
    check = truncation_check([Sample(pattern=_patterns_under(mask_type), roles=ROLES)], mask_type)
    assert check.b_to_a_max == 0.0 and check.n_with_b == 1 and check.holds
    assert (check.eos_to_b_max == 0.0) == (mask_type == "eos_bridged_strict")
    assert_truncation(check)


def test_a_leak_is_caught_and_samples_without_b_are_skipped():
    leaky = _patterns_under("bidirectional")
    check = truncation_check([Sample(pattern=leaky, roles=ROLES),
                              Sample(pattern=np.full((1, 1, 2, 2), 0.5), roles=["A", "EOS"])], "eos_bridged")
    assert check.n_with_b == 1 and check.b_to_a_max > 0 and check.holds is False
    with pytest.raises(AssertionError, match="truncation invariant is broken"):
        assert_truncation(check)
    assert truncation_check([Sample(pattern=leaky, roles=ROLES)], "causal").holds is None  # promises nothing
    assert TruncationCheck("eos_bridged", 0.0, 0.0, 0).holds is None  # no sample with B: nothing checked


def test_needs_full_patterns():
    with pytest.raises(ValueError, match="full patterns"):
        truncation_check([Sample(pattern=np.ones((1, 1, 1, 6)) / 6, roles=ROLES)], "eos_bridged")
