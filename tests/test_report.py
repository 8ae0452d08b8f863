"""Report tables from hand-made study folders: the numbers are checked against the statistics module."""

import statistics

import pytest

from analysis.io import write_json
from analysis.report import STUDY_FILE, ablation_table, collect_probes, probe_table


def _probe(accuracy: list[float], chance: float = 0.25) -> dict:
    return dict(accuracy=accuracy, selectivity=[a - chance for a in accuracy], chance=chance)


def test_probe_table_reads_the_last_layer_under_the_cells_own_mask(tmp_path):
    cells = [dict(name="bridged", mask_type="eos_bridged", recon_weight=1.0)]
    write_json(tmp_path / STUDY_FILE, dict(cells=cells, seeds=[0, 1, 2]))
    last = {0: 0.6, 1: 0.7}  # seed 2 has no probing notebook: it is left out
    for seed, value in last.items():
        probes = {"eos_bridged": {"colour": _probe([0.1, value])},
                  "eos_bridged/content_mean": {"colour": _probe([0.2, value + 0.1])},
                  "causal": {"colour": _probe([0.9, 0.9])}}  # another mask type: must not be read
        write_json(tmp_path / "notebooks" / f"bridged-s{seed}" / "eos_probing" / "metrics.json", {"probes": probes})
    rows = collect_probes(tmp_path)
    assert [(r["seed"], r["eos"]) for r in rows] == [(0, 0.6), (1, 0.7)]
    assert [r["content"] for r in rows] == pytest.approx([0.7, 0.8])
    table = probe_table(rows)
    mean, sd = statistics.mean(last.values()), statistics.stdev(last.values())
    assert f"| bridged | eos_bridged | 1 | colour | 2 | {mean:.3f} ± {sd:.3f} |" in table


def test_ablation_table_mean_and_sample_sd():
    rows = [dict(cell="c", mask_type="causal", recon_weight=0, note="", seed=s, overall=v, **{"split.ind": v / 2})
            for s, v in enumerate([0.2, 0.5, 0.8])]
    (entry,) = ablation_table(rows)
    assert entry["n_seeds"] == 3
    assert entry["overall"] == (statistics.mean([0.2, 0.5, 0.8]), statistics.stdev([0.2, 0.5, 0.8]))
    assert entry["split.ood"][0] != entry["split.ood"][0]  # a column no row has is NaN, not zero
