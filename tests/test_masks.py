"""Mask types, table-driven against hand-written allow-matrices (DESIGN.md §1 and §3)."""

import pytest
import torch

from analysis.masks import MASK_TYPES, additive_mask, allowed

ROLES = ["A", "A", "EOS", "B", "B", "PAD"]
# rows = queries, columns = keys, for ROLES above
EXPECTED = {
    "causal": ["100000", "110000", "111000", "111100", "111110", "000001"],
    "bidirectional": ["111110", "111110", "111110", "111110", "111110", "000001"],
    "eos_bridged": ["111000", "111000", "111110", "001110", "001110", "000001"],
    "eos_bridged_strict": ["111000", "111000", "111000", "001110", "001110", "000001"],
}
NO_B = ["A", "A", "A", "EOS", "PAD", "PAD"]
NO_B_EXPECTED = {
    "causal": ["100000", "110000", "111000", "111100", "000010", "000001"],
    "bidirectional": ["111100"] * 4 + ["000010", "000001"],
}
NO_B_EXPECTED["eos_bridged"] = NO_B_EXPECTED["eos_bridged_strict"] = NO_B_EXPECTED["bidirectional"]
LEFT_PAD = ["PAD", "A", "EOS", "B"]
LEFT_PAD_EXPECTED = {
    "causal": ["1000", "0100", "0110", "0111"],
    "bidirectional": ["1000", "0111", "0111", "0111"],
    "eos_bridged": ["1000", "0110", "0111", "0011"],
    "eos_bridged_strict": ["1000", "0110", "0110", "0011"],
}


def _matrix(rows):
    return torch.tensor([[c == "1" for c in row] for row in rows])


@pytest.mark.parametrize("roles,table", [(ROLES, EXPECTED), (NO_B, NO_B_EXPECTED), (LEFT_PAD, LEFT_PAD_EXPECTED)],
                         ids=["with-B-and-PAD", "no-B", "left-PAD"])
@pytest.mark.parametrize("mask_type", MASK_TYPES)
def test_allowed_matches_table(roles, table, mask_type):
    assert torch.equal(allowed(roles, mask_type), _matrix(table[mask_type]))


@pytest.mark.parametrize("mask_type", MASK_TYPES)
def test_no_row_is_empty(mask_type):
    assert allowed(ROLES, mask_type).any(dim=1).all()


def test_additive_mask_values_and_shape():
    batch = [ROLES, ["A", "EOS", "B", "B", "B", "B"]]
    for dtype in (torch.float32, torch.bfloat16):
        m = additive_mask(batch, "eos_bridged", dtype=dtype)
        assert m.shape == (2, 1, 6, 6) and m.dtype == dtype
        assert torch.equal(m[0, 0] == 0, _matrix(EXPECTED["eos_bridged"]))
        assert set(m.unique().tolist()) == {0.0, torch.finfo(dtype).min}


def test_unknown_mask_type_lists_valid_ones():
    with pytest.raises(ValueError, match="causal, bidirectional, eos_bridged, eos_bridged_strict"):
        allowed(ROLES, "bridged")


def test_bad_roles_are_named():
    with pytest.raises(ValueError, match="unknown role"):
        allowed(["A", "X"], "causal")
    with pytest.raises(ValueError, match=r"\[batch, length\]"):
        additive_mask(ROLES, "causal")
