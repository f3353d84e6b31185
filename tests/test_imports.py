"""The project's import graph, built from the code's own imports (AST, no import executed):
no circle anywhere, the arms independent of each other, the shared core importing no arm, and
pathology's steps never importing its runner.

Every ``import`` and ``from ... import`` counts, wherever it stands (a function-level import
is a dependency too). A name imported from a package resolves to its submodule when there is
one (``from pathology.segmentation import backends`` is ``pathology.segmentation.backends``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pathology", "blood", "transcriptome", "integration", "hcccore", "models",
            "benchmarks")
ARMS = ("pathology", "blood", "transcriptome")
# pathology's steps: functions of data (arrays, tables, a slide folder). The runner
# (pathology.run) calls them; they never call it, nor the review app or the evaluation harness.
STEPS = ("pathology.io", "pathology.segmentation", "pathology.cells", "pathology.tissue",
         "pathology.registration", "pathology.qc", "pathology.spatial", "pathology.features",
         "pathology.config")
NOT_FOR_STEPS = ("pathology.run", "pathology.review", "pathology.evaluation")


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The first-party module ``name`` is, or lies in (None for third-party names)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """Module -> the first-party modules it imports."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - node.level + 1]
                    source = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    source = node.module or ""
                names = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules
                         else source for alias in node.names]
            else:
                continue
            targets |= {t for t in (_resolve(n, modules) for n in names) if t}
        targets.discard(module)
        graph[module] = targets
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component with more than one
    module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return [_cycle_in(set(c), graph) for c in components]


def _cycle_in(component: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first)."""
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for child in sorted(graph[node] & component):
            if child == start:
                return [*paths[node], start]
            if child not in paths:
                paths[child] = [*paths[node], child]
                queue.append(child)
    raise AssertionError(f"no cycle in {sorted(component)}")


def _in(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_graph_sees_the_imports(graph):
    """The graph is the code's: a known import of each kind is in it."""
    assert "pathology.run.pipeline" in graph["pathology.run.batch"]  # from x import (...)
    assert "pathology.segmentation.backends" in graph["pathology.segmentation.nuclei"]  # in a
    # function: from pathology.segmentation import backends
    assert "hcccore.atomic" in graph["hcccore.batch_report"]
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_anywhere(graph):
    found = circles(graph)
    assert not found, "import circles: " + "; ".join(" -> ".join(c) for c in found)


def test_arms_import_neither_each_other_nor_integration(graph):
    crossing = sorted(f"{module} -> {target}" for module, targets in graph.items()
                      for target in targets
                      for arm in ARMS if _in(module, (arm,))
                      and _in(target, tuple(a for a in (*ARMS, "integration") if a != arm)))
    assert not crossing, "an arm imports another arm or integration: " + "; ".join(crossing)


def test_the_shared_core_imports_no_arm(graph):
    bad = sorted(f"{module} -> {target}" for module, targets in graph.items()
                 if _in(module, ("hcccore",)) for target in targets
                 if not _in(target, ("hcccore",)))
    assert not bad, "hcccore imports outside itself: " + "; ".join(bad)


def test_pathology_folders_import_one_way(graph):
    """pathology's folders (io, tissue, segmentation, cells, ..., run, review) import each
    other without a circle, so the layout reads as the flow."""
    folders: dict[str, set[str]] = {}
    for module, targets in graph.items():
        parts = module.split(".")
        if parts[0] != "pathology" or len(parts) < 2:
            continue
        folder = ".".join(parts[:2])
        folders.setdefault(folder, set()).update(
            ".".join(t.split(".")[:2]) for t in targets
            if t.startswith("pathology.") and ".".join(t.split(".")[:2]) != folder)
    found = circles(folders)
    assert not found, "pathology folders in a circle: " + "; ".join(" -> ".join(c)
                                                                      for c in found)


def test_pathology_steps_never_import_the_runner(graph):
    bad = sorted(f"{module} -> {target}" for module, targets in graph.items()
                 if _in(module, STEPS) for target in targets if _in(target, NOT_FOR_STEPS))
    assert not bad, "a step imports the runner, review or evaluation: " + "; ".join(bad)
