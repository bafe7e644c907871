"""The layers of docs/design.md "Layers", read from the source with ``ast`` (nothing is imported).

Every ``import`` and ``from ... import`` of a module counts, at module level and inside functions
alike (a function-level import only postpones a cycle, it does not remove it). A package's
``__init__`` run implicitly before its submodule is not an edge. Names imported by a string
(``importlib.import_module(APP)`` in platform/app.py, stage functions named ``"module:function"``)
are not edges: that indirection is how the platform reaches the science.

Rules:
- no import cycle among project modules;
- ``platform/`` never imports ``experiments/``;
- ``launchers/`` never imports ``platform.orchestrator`` (the orchestrator calls the launchers);
- ``experiments/`` and ``launchers/`` never import each other.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("platform", "experiments", "launchers", "dashboard")

class Edge(NamedTuple):
    src: str
    dst: str
    line: int
    in_function: bool

    def __str__(self) -> str:
        where = "inside a function" if self.in_function else "module level"
        return f"{self.src} -> {self.dst} ({_path(self.src)}:{self.line}, {where})"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.lru_cache(maxsize=None)
def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


def _path(module: str) -> str:
    return str(modules()[module].relative_to(ROOT))


def _target(name: str) -> str | None:
    """The project module ``name`` refers to: itself, else its longest prefix that is one."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules():
            return candidate
    return None


def _imports(module: str) -> list[Edge]:
    path = modules()[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    edges: list[Edge] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                # `from a import b`: the submodule a.b if there is one, else a
                names = [f"{base}.{alias.name}" if _target(f"{base}.{alias.name}") == f"{base}.{alias.name}" else base
                         for alias in child.names]
            else:
                visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))
                continue
            for name in names:
                target = _target(name)
                if target is not None and target != module:
                    edges.append(Edge(module, target, child.lineno, in_function))

    visit(tree, False)
    return edges


@functools.lru_cache(maxsize=None)
def graph() -> dict[str, list[Edge]]:
    return {m: _imports(m) for m in modules()}


def _cycles(graph: dict[str, list[Edge]]) -> list[list[Edge]]:
    """One cycle (as its edges) per strongly connected component with more than one module."""
    succ = {m: sorted({e.dst for e in edges}) for m, edges in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan; the graph has a few hundred nodes
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in succ[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            components.append(comp)

    for v in sorted(succ):
        if v not in index:
            strongconnect(v)

    cycles = []
    for comp in components:
        if len(comp) < 2:
            continue
        members, start = set(comp), min(comp)
        # shortest path start -> ... -> start inside the component (breadth first)
        parent: dict[str, Edge] = {}
        frontier, seen, closing = [start], {start}, None
        while frontier and closing is None:
            nxt = []
            for v in frontier:
                for e in graph[v]:
                    if e.dst == start:
                        closing = e
                        break
                    if e.dst in members and e.dst not in seen:
                        seen.add(e.dst)
                        parent[e.dst] = e
                        nxt.append(e.dst)
                if closing is not None:
                    break
            frontier = nxt
        path = [closing]
        while path[0].src != start:
            path.insert(0, parent[path[0].src])
        cycles.append(path)
    return cycles


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


RULES = {
    "platform imports experiments": lambda e: _in(e.src, "platform") and _in(e.dst, "experiments"),
    "launchers import platform.orchestrator": lambda e: _in(e.src, "launchers") and e.dst == "platform.orchestrator",
    "experiments import launchers": lambda e: _in(e.src, "experiments") and _in(e.dst, "launchers"),
    "launchers import experiments": lambda e: _in(e.src, "launchers") and _in(e.dst, "experiments"),
}


def _violations(rule: str) -> list[Edge]:
    return [e for edges in graph().values() for e in edges if RULES[rule](e)]


def test_the_graph_is_read():
    """Guards the reader itself: known edges of each kind are found."""
    edges = {(e.src, e.dst): e for es in graph().values() for e in es}
    assert ("experiments.formats", "experiments.tokens") in edges  # from x import y, module level
    assert ("experiments.config", "platform.config") in edges
    assert edges[("platform.orchestrator", "launchers")].in_function  # `import launchers` inside functions
    assert ("experiments.samplers", "experiments.samplers.base") in edges  # a package __init__
    # platform/app.py names the science app in a string: no edge
    assert not [e for e in graph()["platform.app"] if _in(e.dst, "experiments")]


def test_a_cycle_is_reported_as_its_path():
    edge = lambda a, b, fn=False: Edge(a, b, 1, fn)  # noqa: E731
    fake = {"a": [edge("a", "b")], "b": [edge("b", "c", True)], "c": [edge("c", "a")], "d": [edge("d", "a")],
            "e": [edge("e", "e")]}
    (cycle,) = _cycles(fake)
    assert [(e.src, e.dst) for e in cycle] == [("a", "b"), ("b", "c"), ("c", "a")]
    assert cycle[1].in_function


def test_no_import_cycle():
    cycles = _cycles(graph())
    assert not cycles, "import cycles:\n" + "\n\n".join(
        " -> ".join([c[0].src, *(e.dst for e in c)]) + "\n  " + "\n  ".join(map(str, c)) for c in cycles
    )


@pytest.mark.parametrize("rule", sorted(RULES))
def test_layer_rule(rule):
    bad = _violations(rule)
    assert not bad, f"{rule}:\n  " + "\n  ".join(map(str, bad))

