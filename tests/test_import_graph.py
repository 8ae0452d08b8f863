"""No import cycle among `analysis` modules, read from the source with `ast` (nothing is imported).

Edges are `analysis.*` imports at module level, `if TYPE_CHECKING:` blocks included (an import kept only for type
hints still ties the two modules' designs together), and separately those inside functions (lazy imports, the
way to keep start-up cheap; they may point back). `from pkg import name` is an edge to `pkg.name` when that is a
module, else to `pkg`. Importing a submodule also runs its package's `__init__`: that implicit edge is left out, as
a package that re-exports its submodules would otherwise always form a loop with them.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "analysis"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py" if name in MODULES else False


def _targets(node: ast.Import | ast.ImportFrom, module: str) -> list[str]:
    """The `analysis.*` modules one import statement names."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "analysis"]
    base = node.module or ""
    if node.level:  # relative: from the module's package, up level - 1 more
        package = module.split(".") if _is_package(module) else module.split(".")[:-1]
        package = package[:len(package) - (node.level - 1)]
        base = ".".join(package + ([base] if base else []))
    if base.split(".")[0] != "analysis":
        return []
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def _imports(path: Path, module: str) -> tuple[set[str], set[str]]:
    """(module-level targets, targets inside functions) of one file."""
    top: set[str] = set()
    lazy: set[str] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                (lazy if in_function else top).update(_targets(child, module))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(path.read_text(), str(path)), False)
    return top - {module}, lazy - {module}


GRAPHS = {module: _imports(path, module) for module, path in MODULES.items()}
TOP = {module: top for module, (top, _) in GRAPHS.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with a loop (Tarjan), each as a closed path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_path(graph, set(c)) for c in components]


def _path(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A closed path through the component, from its first module back to it (breadth-first, shortest)."""
    start = min(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph.get(v, set()) & component):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if w not in previous:
                    previous[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no loop in {component}")


def test_the_graph_reads_relative_typing_only_and_lazy_imports(tmp_path):
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from analysis.study import Study\n"
                     "from . import plots\nfrom .metrics.arrays import as_numpy\n"
                     "def f():\n    from analysis.lens import store\n")
    path = tmp_path / "report.py"
    path.write_text(source)
    top, lazy = _imports(path, "analysis.report")
    assert top == {"analysis.study", "analysis.plots", "analysis.metrics.arrays"}
    assert lazy == {"analysis.lens.store"}


def test_every_analysis_import_names_a_module_that_exists():
    missing = {(module, target) for module, (top, lazy) in GRAPHS.items() for target in top | lazy
               if target not in MODULES}
    assert not missing


def test_module_level_imports_are_acyclic():
    cycles = _cycles(TOP)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_loop_and_names_its_path():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e2"}, "e2": {"e"}}
    assert _cycles(graph) == [["a", "b", "c", "a"], ["e", "e2", "e"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
