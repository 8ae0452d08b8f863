"""The conditions a set of captures ran under: a bridged mask over samples without a B segment *is*
bidirectional (DESIGN §3), so such captures are one condition, shown once under every name it carries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from analysis.lens.store import BRIDGED, Capture


def ran_as(capture: Capture) -> str:
    """The mask a capture's samples actually ran under: a bridged mask over samples without B is bidirectional."""
    return "bidirectional" if capture.mask_type in BRIDGED and capture.meta["n_with_b"] == 0 else capture.mask_type


@dataclass
class Condition:
    """One condition: the mask that ran (`ran`), the mask types naming it, and the first of their captures."""

    ran: str
    capture: Capture
    masks: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """`ran`, or `ran (= the other names: no B)` where bridged masks fold into it."""
        others = [m for m in self.masks if m != self.ran]
        return self.ran if not others else f"{self.ran} (= {', '.join(others)}: no B)"

    def same_as(self) -> dict[str, str]:
        """`{mask type: the mask it ran as}` (the notebooks' `same_as` metric)."""
        return {m: self.ran for m in self.masks}


def conditions(directory: str | Path, mask_types: Sequence[str]) -> list[Condition]:
    """The conditions of the captures `directory/<mask type>` of `mask_types`, in `mask_types` order."""
    found: dict[str, Condition] = {}
    for mask in mask_types:
        capture = Capture.open(directory, mask_type=mask)
        found.setdefault(ran_as(capture), Condition(ran_as(capture), capture)).masks.append(mask)
    return list(found.values())
