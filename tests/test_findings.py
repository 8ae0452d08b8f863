"""The paper's questions: paired-seed differences and sentences checked against hand computations."""

import math

from analysis.findings import HARD, RANDOM, SCORE, absorption_layer, answers, paired, within


def _row(cell, seed, score, hard=0.2, rnd=0.5):
    return {"cell": cell, "seed": seed, SCORE: score, HARD: hard, RANDOM: rnd}


ROWS = [_row("bridged", 0, 0.40), _row("bridged", 1, 0.44), _row("base", 0, 0.30), _row("base", 1, 0.41),
        _row("strict", 0, 0.45), _row("strict", 1, 0.40), _row("base", 2, 0.9)]


def test_paired_differences_match_hand_computation():
    p = paired(ROWS, "bridged", "base")
    assert p.seeds == (0, 1)  # seed 2 has no bridged run: not paired
    assert [round(d, 6) for d in p.diffs] == [0.10, 0.03]
    assert math.isclose(p.mean, 0.065) and math.isclose(p.sd, math.sqrt(2 * 0.035 ** 2))
    assert p.consistent
    q = paired(ROWS, "bridged", "strict")
    assert [round(d, 6) for d in q.diffs] == [-0.05, 0.04] and not q.consistent
    assert paired(ROWS, "bridged", "missing") is None


def test_within_cell_difference_and_absorption_layer():
    p = within(ROWS, "base", RANDOM, HARD)
    assert p.seeds == (0, 1, 2) and all(math.isclose(d, 0.3) for d in p.diffs)
    # rises 0.1 -> 0.9: 90 % of the 0.8 rise is 0.82, first reached at index 3
    assert absorption_layer([0.1, 0.3, 0.7, 0.85, 0.9]) == 3
    assert absorption_layer([0.5, 0.4, 0.3]) == 0  # never rises: the maximum


def test_answers_name_cells_and_say_when_unresolved():
    roles = {"bridged": "bridged", "strict": "strict", "equal_compute": "base", "fixed_budget": "absent"}
    text = "\n".join(answers(ROWS, roles, {"bridged": [0.0, 0.2, 0.4]}, {}))
    assert "`bridged` − `base`" in text and "+0.065" in text and "reconstruction helps at every seed" in text
    assert "lacks a `fixed_budget` cell" in text
    assert "`bridged` − `strict`" in text and "no difference is resolved" in text
    assert "`bridged` at layer 2 of 2" in text
    assert "hard negatives are harder at every seed in 3 of 3 cells" in text
