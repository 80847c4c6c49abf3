"""The import rules of the code base, checked on the source (no import is executed).

Layers: ``service -> indexer -> models``. ``models`` imports neither ``indexer`` nor ``service``;
``indexer`` never imports ``service``. And no import cycle between any two modules of these
packages, type-only ones (under ``if TYPE_CHECKING:``) and function-level ones included: a cycle
that only type checking sees is still two modules that cannot be understood one without the other.

Every ``import`` statement anywhere in a file counts. ``import a.b.c`` and ``from a.b import c``
resolve to the most specific module that exists (``a.b.c`` when it is a module, else the package
``a.b``); relative imports are resolved against the importing module's package; a package's
``__init__`` importing its own submodules is an edge like any other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("models", "indexer", "service")  # each may import only the ones before it

Graph = dict[str, set[str]]


def discover_modules(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under the given top-level packages."""
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def resolve(name: str, known: set[str]) -> str | None:
    """The most specific known module ``name`` denotes: itself, else its longest known prefix."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """Known modules that ``module`` (the file ``path``) imports, at any level of the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.add(resolve(alias.name, known) or "")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}" if base else alias.name
                out.add(submodule if submodule in known else resolve(base, known) or "")
    out.discard("")
    out.discard(module)
    return out


def import_graph(root: Path, packages: Iterable[str]) -> Graph:
    modules = discover_modules(root, packages)
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def layer_violations(graph: Graph, layers: tuple[str, ...] = LAYERS) -> list[str]:
    """``importer -> imported`` for every import of a later layer from an earlier one."""
    rank = {name: n for n, name in enumerate(layers)}
    bad = []
    for source, targets in sorted(graph.items()):
        for target in sorted(targets):
            src, dst = rank.get(source.split(".")[0]), rank.get(target.split(".")[0])
            if src is not None and dst is not None and dst > src:
                bad.append(f"{source} -> {target}")
    return bad


def strongly_connected(graph: Graph) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module (iterative: deep graphs)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
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
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
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
    return sorted(components)


def a_cycle(graph: Graph, component: list[str]) -> list[str]:
    """One concrete cycle through the first module of a strongly connected component (shortest
    path back to it, by breadth-first search inside the component)."""
    members = set(component)
    start = component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph.get(node, ())):
                if child not in members:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"{component} is not strongly connected")


def import_cycles(graph: Graph) -> list[list[str]]:
    return [a_cycle(graph, component) for component in strongly_connected(graph)]


# -- the rules on the code base ------------------------------------------------------------------
@pytest.fixture(scope="module")
def graph() -> Graph:
    return import_graph(ROOT, LAYERS)


def test_the_graph_sees_the_packages(graph: Graph) -> None:
    # A parser that found nothing would pass every rule below.
    assert "indexer.collection" in graph and "service.app" in graph and "models.core.spec" in graph
    assert "indexer.collection" in graph["indexer.manager"]


def test_imports_flow_service_indexer_models(graph: Graph) -> None:
    bad = layer_violations(graph)
    assert not bad, "imports against service -> indexer -> models:\n" + "\n".join(bad)


def test_no_import_cycles(graph: Graph) -> None:
    report = []
    for component in strongly_connected(graph):
        line = " -> ".join(a_cycle(graph, component))
        if len(component) > 2:  # more than one cycle may run through it: name every module involved
            line += f"   (all of: {', '.join(component)})"
        report.append(line)
    assert not report, "import cycles (type-only included):\n" + "\n".join(report)


# -- the checker itself, on a synthetic tree -----------------------------------------------------
def write_tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_resolution_of_every_import_form(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "low/__init__.py": "",
            "low/a.py": "",
            "low/sub/__init__.py": "from . import b\n",
            "low/sub/b.py": "from ..a import thing\nfrom .. import a\n",
            "low/sub/c.py": "import low.sub.b\nfrom low.sub import NAME\nimport low.nothing.here\n",
            "low/d.py": (
                "from typing import TYPE_CHECKING\nimport os\n"
                "if TYPE_CHECKING:\n    from low.a import X\n"
                "def f():\n    from low.sub import c\n"
            ),
        },
    )
    graph = import_graph(tmp_path, ["low"])
    assert graph["low.sub"] == {"low.sub.b"}  # a package's __init__ importing its submodule
    assert graph["low.sub.b"] == {"low.a"}  # relative, two levels; `from .. import a` is the module
    assert graph["low.sub.c"] == {"low.sub.b", "low.sub", "low"}  # a name of a package: the package
    assert graph["low.d"] == {"low.a", "low.sub.c"}  # type-only and function-level; stdlib ignored
    assert graph["low"] == set() and graph["low.a"] == set()


def test_cycles_are_found_and_printed(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/one.py": "from pkg.two import X\n",
            "pkg/two.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.three import Y\n",
            "pkg/three.py": "def late():\n    from pkg import one\n",
            "pkg/four.py": "from pkg.one import Z\n",  # reaches the cycle but is not on it
            "pkg/up/__init__.py": "from pkg.up.down import W\n",
            "pkg/up/down.py": "from pkg.up import V\n",  # a submodule importing its own package
        },
    )
    graph = import_graph(tmp_path, ["pkg"])
    assert strongly_connected(graph) == [["pkg.one", "pkg.three", "pkg.two"], ["pkg.up", "pkg.up.down"]]
    assert import_cycles(graph) == [
        ["pkg.one", "pkg.two", "pkg.three", "pkg.one"],
        ["pkg.up", "pkg.up.down", "pkg.up"],
    ]
    del graph["pkg.three"]
    graph["pkg.up.down"] = set()
    assert import_cycles(graph) == []


def test_layer_violations_are_found(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "models/__init__.py": "",
            "models/m.py": "def f():\n    from indexer.i import X\n",
            "indexer/__init__.py": "",
            "indexer/i.py": "from models.m import Y\nimport service.s\n",
            "service/__init__.py": "",
            "service/s.py": "from indexer import i\nfrom models.m import Z\n",
        },
    )
    graph = import_graph(tmp_path, LAYERS)
    assert layer_violations(graph) == ["indexer.i -> service.s", "models.m -> indexer.i"]
