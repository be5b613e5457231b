"""The package's import graph: no cycles, and dependencies pointing down the pipeline
(DESIGN.md: data knows tokenizers, not the model; nothing in model/ imports a later stage)."""

from __future__ import annotations

import ast
from pathlib import Path

import herd

ROOT = Path(herd.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """herd module -> the herd modules it imports, at module level or inside functions alike
    (an import deferred into a function still ties the two modules together)."""
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from herd.x import y` imports herd.x, and herd.x.y when y is a module
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()))


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def _imports_from(package: str, graph: dict[str, set[str]]) -> set[str]:
    return {t for m, ts in graph.items() if m.startswith(package + ".") for t in ts}


def test_dependencies_point_down_the_pipeline():
    graph = import_graph()
    data = _imports_from("herd.data", graph)
    assert not {t for t in data if t.startswith(("herd.model", "herd.train"))}, data
    model = _imports_from("herd.model", graph)
    later = (
        "herd.data",
        "herd.train",
        "herd.eval",
        "herd.checkpoint",
        "herd.scaling",
        "herd.vocab",
    )
    assert not {t for t in model if t.startswith(later)}, model
