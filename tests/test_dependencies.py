"""pyproject declares what the package imports: every third-party module that analysis/ or a notebook imports
belongs to a declared distribution, and every declared distribution is imported, or marked `# not imported` with
the reason it is still needed (a runtime requirement of another library)."""

import ast
import json
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def _imported_modules() -> set[str]:
    sources = [p.read_text() for p in (ROOT / "analysis").rglob("*.py")]
    for book in (ROOT / "notebooks").glob("*.ipynb"):
        for cell in json.loads(book.read_text())["cells"]:
            if cell["cell_type"] == "code":
                sources.append("".join(line for line in cell["source"] if not line.lstrip().startswith("%")))
    found = set()
    for source in sources:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m != "analysis"}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _name(requirement: str) -> str:
    return _normal(re.match(r"[A-Za-z0-9_.-]+", requirement).group())


def test_declared_dependencies_are_what_is_imported():
    text = (ROOT / "pyproject.toml").read_text()
    project = tomllib.loads(text)["project"]
    declared = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["cluster"]}
    runtime_only = {_name(m) for m in re.findall(r'^\s*"([^"]+)",\s*# not imported', text, flags=re.M)}
    owners = packages_distributions()
    imported = {_normal(owners[m][0]) for m in _imported_modules()}
    assert imported - declared == set(), "imported but not declared in pyproject"
    assert declared - imported - runtime_only == set(), "declared but never imported (mark it `# not imported: why`)"
    assert runtime_only & imported == set(), "marked `# not imported` but imported"
