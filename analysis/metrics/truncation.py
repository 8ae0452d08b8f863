"""The truncation check: the package's central invariant, measured on captured attention.

Under the bridged masks the target (B) sees the input (A) only through EOS: every B query gives A's keys
exactly zero attention, in every layer and head; under `eos_bridged_strict` EOS does not read B either
(DESIGN §3, `analysis.masks`). This reads a full-pattern capture and reports the largest B→A and EOS→B
attention mass over its samples with a B segment; `TruncationCheck.holds` says whether the mask's promise is
kept (masked entries are exact zeros after the softmax, so the check is exact, not a tolerance).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from analysis.metrics.flow import segment_attention

if TYPE_CHECKING:
    from analysis.lens.store import CapturedSample

BRIDGED = ("eos_bridged", "eos_bridged_strict")  # = analysis.lens.store.BRIDGED, without importing the store


@dataclass(frozen=True)
class TruncationCheck:
    """The largest B→A and EOS→B attention mass (a query group's summed attention to a key group, averaged over
    the group's queries; any layer, any head) over the `n_with_b` samples that have a B segment."""

    mask_type: str
    b_to_a_max: float
    eos_to_b_max: float
    n_with_b: int

    @property
    def holds(self) -> bool | None:
        """Whether the mask's promise is kept: B→A = 0 under the bridged masks, and EOS→B = 0 under
        `eos_bridged_strict`; None where the mask promises nothing (causal, bidirectional) or no sample has B."""
        if self.mask_type not in BRIDGED or self.n_with_b == 0:
            return None
        return self.b_to_a_max == 0.0 and (self.mask_type != "eos_bridged_strict" or self.eos_to_b_max == 0.0)


def truncation_check(samples: Iterable[CapturedSample], mask_type: str) -> TruncationCheck:
    """Measure the invariant over captured samples (`Capture` iterates them: `pattern [layers, heads, L, L]`
    full, `roles`); samples without a B segment are skipped."""
    b_to_a, eos_to_b, n = 0.0, 0.0, 0
    for s in samples:
        if "B" not in s.roles:
            continue
        pattern = np.asarray(s.pattern)
        if pattern.shape[-2] != pattern.shape[-1]:
            raise ValueError("the truncation check needs full patterns (capture with patterns='full')")
        mass = segment_attention(pattern, s.roles).as_dict()
        b_to_a = max(b_to_a, float(np.nanmax(mass[("B", "A")])))
        eos_to_b = max(eos_to_b, float(np.nanmax(mass[("EOS", "B")])))
        n += 1
    return TruncationCheck(mask_type, b_to_a, eos_to_b, n)


def assert_truncation(check: TruncationCheck) -> None:
    """Raise `AssertionError` when a bridged mask lets B read A (or, strict, EOS read B)."""
    if check.holds is False:
        raise AssertionError(f"{check.mask_type}: the truncation invariant is broken: max B→A mass "
                             f"{check.b_to_a_max:.3g}, max EOS→B mass {check.eos_to_b_max:.3g} over "
                             f"{check.n_with_b} samples with B")
