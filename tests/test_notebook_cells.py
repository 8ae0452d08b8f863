"""The notebooks narrate: a code cell is a call and a display, the computations live in `analysis/` (tested
there). Each notebook keeps the parameters the study passes it."""

import ast
import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
MAX_LINES = 15


def _code_cells(path):
    for i, cell in enumerate(json.loads(path.read_text())["cells"]):
        if cell["cell_type"] == "code":
            yield i, cell, "".join(cell["source"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_code_cells_are_short_and_define_no_functions(path):
    """The parameters cell (the names the study sets) is a declaration, exempt from the length rule."""
    for i, cell, source in _code_cells(path):
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            continue
        lines = source.splitlines()
        assert len(lines) <= MAX_LINES, f"{path.name} cell {i} has {len(lines)} lines (at most {MAX_LINES})"
        body = "\n".join(line for line in lines if not line.startswith("%"))  # IPython magics are not Python
        defined = [n.name for n in ast.walk(ast.parse(body)) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        assert not defined, f"{path.name} cell {i} defines {defined}: move it into analysis/ with a test"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebooks_are_stored_without_outputs(path):
    assert all(not cell.get("outputs") for _, cell, _ in _code_cells(path))


def test_the_study_passes_only_declared_parameters():
    from analysis.study.config import notebook_parameters

    study_sets = {  # what analysis.study.plan passes each notebook
        "attention_flow": {"capture_dir", "mask_types", "seed", "output_dir", "checkpoint", "flow_dir"},
        "eos_probing": {"capture_dir", "mask_types", "seed", "output_dir", "bridged_dir"},
        "embedding_umap": {"capture_dir", "mask_types", "seed", "output_dir"},
        "layerwise_analyses": {"checkpoint", "capture_dir", "data_seed", "n", "splits", "mask_types", "output_dir"},
        "ablation_summary": {"study_dir", "output_dir"},
        "compare_checkpoints": {"checkpoint_a", "checkpoint_b", "capture_a", "capture_b", "flow_a", "flow_b",
                                "mask_type", "output_dir", "study_dir", "interactive"},
    }
    for notebook, names in study_sets.items():
        assert names <= set(notebook_parameters(notebook)), notebook


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_default_checkpoints_exist(path):
    """A notebook run without parameters opens its default checkpoint: a path there must name a directory the
    repository holds (a base checkpoint's name changes with its recipe's digest)."""
    from analysis.repo_paths import located

    cell = next(s for _, c, s in _code_cells(path) if "parameters" in c.get("metadata", {}).get("tags", []))
    for node in ast.parse(cell).body:
        name = getattr(node.targets[0] if isinstance(node, ast.Assign) else node.target, "id", "")
        value = getattr(node.value, "value", None)
        if "checkpoint" in name and isinstance(value, str) and value and not value.startswith("tiny-"):
            assert Path(located(value)).is_dir(), f"{path.name}: default {name} = {value!r} is not in the repository"
