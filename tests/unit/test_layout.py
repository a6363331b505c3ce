"""The house rules of the layout: no module over 500 lines, and the imports between the project's
own modules point one way (no cycle). Every import counts: at module level, inside a function,
under `if TYPE_CHECKING:`; relative ones are resolved, and `from pkg import name` points at the
submodule `pkg.name` when there is one, else at `pkg`."""

from __future__ import annotations

import ast
from collections import deque
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 500
SIZED = ("tasks", "workers", "beat", "gateway", "cli", "bench", "tests")
PACKAGES = ("tasks", "workers", "beat", "gateway", "cli")
SKIP = {".venv", "node_modules", "__pycache__"}

Graph = dict[str, dict[str, int]]  # module -> {imported module: line of the first such import}


def python_files(root: Path, tops: tuple[str, ...]) -> list[Path]:
    return sorted(
        path
        for top in tops
        for path in (root / top).rglob("*.py")
        if not SKIP.intersection(path.relative_to(root).parts)
    )


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _known(name: str, modules: set[str]) -> str | None:
    """`name`, or the nearest package above it, if it is one of the project's modules."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _targets(node: ast.Import | ast.ImportFrom, package: str, modules: set[str]) -> list[str | None]:
    if isinstance(node, ast.Import):
        return [_known(alias.name, modules) for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: from the package of the importing module, up level - 1
        parts = package.split(".")
        base = ".".join([*parts[: len(parts) - node.level + 1], *([base] if base else [])])
    subs = [f"{base}.{alias.name}" for alias in node.names]
    return [sub if sub in modules else _known(base, modules) for sub in subs]


def imports_of(module: str, path: Path, modules: set[str]) -> dict[str, int]:
    """The project's modules that `module` imports, each with the line of its first import."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import | ast.ImportFrom):
            for target in _targets(node, package, modules):
                if target is not None and target != module:
                    found.setdefault(target, node.lineno)
    return found


def import_graph(root: Path, packages: tuple[str, ...]) -> tuple[Graph, dict[str, Path]]:
    paths = {module_name(root, path): path for path in python_files(root, packages)}
    modules = set(paths)
    return {m: imports_of(m, p, modules) for m, p in paths.items()}, paths


def strongly_connected(graph: Graph) -> list[list[str]]:
    """Tarjan's components of more than one module (each one holds at least one cycle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component: list[str] = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def a_cycle(graph: Graph, component: list[str]) -> list[str]:
    """One shortest cycle through the component's first module: [a, b, ..., a]."""
    start, members = component[0], set(component)
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w in sorted(graph[v]):
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if w in members and w not in came_from:
                came_from[w] = v
                queue.append(w)
    raise AssertionError(f"no cycle through {start}")  # a component always has one


def describe(graph: Graph, paths: dict[str, Path], root: Path, cycle: list[str]) -> str:
    return "; ".join(f"{a} -> {b} ({paths[a].relative_to(root)}:{graph[a][b]})" for a, b in pairwise(cycle))


def cycles_report(graph: Graph, paths: dict[str, Path], root: Path) -> list[str]:
    """One line per tangle: its modules, then one cycle through them with each import's place."""
    return [
        f"{', '.join(component)}: {describe(graph, paths, root, a_cycle(graph, component))}"
        for component in sorted(strongly_connected(graph))
    ]


def test_no_module_is_over_500_lines() -> None:
    files = python_files(ROOT, SIZED)
    assert len(files) > 100, "found too few files: the walk is broken"
    sizes = {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines()) for p in files}
    too_long = [f"{p}: {n} lines" for p, n in sizes.items() if n > MAX_LINES]
    assert not too_long, f"over {MAX_LINES} lines: split by theme\n" + "\n".join(too_long)


def test_imports_between_the_projects_modules_point_one_way() -> None:
    graph, paths = import_graph(ROOT, PACKAGES)
    assert "tasks.app" in graph["tasks.api"], "a known import is missing: the parse is broken"
    report = cycles_report(graph, paths, ROOT)
    assert not report, "modules importing each other in a circle:\n" + "\n".join(report)


def test_the_cycle_check_finds_lazy_relative_and_type_checking_cycles(tmp_path: Path) -> None:
    """The checker itself, on a made-up package: each kind of import closes a cycle it must see."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "from pkg import b\n",
        "b.py": "def f():\n    from . import a\n",  # lazy and relative: a <-> b
        "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub.d import X\n",
        "sub/__init__.py": "",
        "sub/d.py": "import pkg.c\nfrom ..a import name\n",  # c <-> sub.d; sub.d -> a only
        "e.py": "import pkg.a\n",  # imports into a cycle: in no cycle itself
    }
    for name, text in files.items():
        (pkg / name).write_text(text, encoding="utf-8")
    graph, paths = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.sub.d"] == {"pkg.c": 1, "pkg.a": 2}
    assert graph["pkg.e"] == {"pkg.a": 1}
    assert cycles_report(graph, paths, tmp_path) == [
        "pkg.a, pkg.b: pkg.a -> pkg.b (pkg/a.py:1); pkg.b -> pkg.a (pkg/b.py:2)",
        "pkg.c, pkg.sub.d: pkg.c -> pkg.sub.d (pkg/c.py:3); pkg.sub.d -> pkg.c (pkg/sub/d.py:1)",
    ]
