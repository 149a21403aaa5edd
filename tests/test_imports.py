"""No import circle among the project's packages (bench, methods, models), found statically with `ast`.

Every import counts: module-level ones, those under `if TYPE_CHECKING:` and those inside functions. A function-level
or type-checking import is the usual way to hide a circle from the interpreter, not to remove it: the two modules
still cannot be understood, tested or moved apart (bench.cost <-> bench.cost_rules was one, through a function-level
import one way and a TYPE_CHECKING import the other). Imports are resolved to the project module they load:
`from a.b import c` is an edge to `a.b.c` when that is a module, else to `a.b`; importing a submodule does not add
an edge to its parent packages (that `__init__` runs first is Python's loading order, not a dependency of the code).
Dynamic imports (`importlib.import_module`) are not seen; the project uses them only for plugins and model files.
"""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "methods", "models")


def project_modules(root: Path, packages: tuple[str, ...]) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package __init__)."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    # ast.walk reaches every import: module level, TYPE_CHECKING blocks, function and class bodies.
    return [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def _known_prefix(name: str, modules: dict) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom, modules: dict) -> set[str]:
    if isinstance(node, ast.Import):
        return {t for alias in node.names if (t := _known_prefix(alias.name, modules))}
    base = node.module or ""
    if node.level:  # relative: `from . import x` in a package's __init__ is relative to the package itself
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        anchor = anchor[:len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
    targets = set()
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        target = submodule if submodule in modules else _known_prefix(base, modules)
        if target:
            targets.add(target)
    return targets


def import_graph(root: Path, packages: tuple[str, ...]) -> nx.DiGraph:
    modules = project_modules(root, packages)
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for module, (path, is_package) in modules.items():
        for node in _imports(ast.parse(path.read_text(), filename=str(path))):
            graph.add_edges_from((module, target) for target in _targets(module, is_package, node, modules)
                                 if target != module)
    return graph


def import_groups(graph: nx.DiGraph) -> list[list[str]]:
    """Groups of modules that import each other, directly or round a circle (strongly connected, 2 or more)."""
    return sorted(sorted(group) for group in nx.strongly_connected_components(graph) if len(group) > 1)


def import_circles(graph: nx.DiGraph) -> list[list[str]]:
    """One circle per group of `import_groups`, as the modules along it (the first repeated at the end)."""
    circles = []
    for group in import_groups(graph):
        cycle = nx.find_cycle(graph.subgraph(group))
        circles.append([edge[0] for edge in cycle] + [cycle[0][0]])
    return circles


def test_no_import_circle_in_the_project():
    graph = import_graph(REPO, PACKAGES)
    assert graph.number_of_nodes() > 100 and graph.number_of_edges() > 200  # the walk saw the real tree
    circles = import_circles(graph)
    assert not circles, ("import circles: " + "; ".join(" -> ".join(circle) for circle in circles)
                         + " (modules in each circle's group: " + "; ".join(map(", ".join, import_groups(graph))) + ")")


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize("kind, files", [
    ("module level", {"a.py": "from pkg import b\n", "b.py": "import pkg.a\n"}),
    ("inside a function", {"a.py": "def f():\n    from pkg.b import g\n", "b.py": "from pkg.a import f\n"}),
    ("type checking", {"a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import B\n",
                       "b.py": "def g():\n    from .a import f\n"}),
    ("through __init__", {"__init__.py": "from pkg.a import f\n", "a.py": "from pkg import helper\n"}),
])
def test_the_walk_finds_circles(tmp_path, kind, files):
    _write(tmp_path, {"pkg/__init__.py": "", **{f"pkg/{name}": text for name, text in files.items()}})
    circles = import_circles(import_graph(tmp_path, ("pkg",)))
    assert len(circles) == 1, kind
    assert circles[0][0] == circles[0][-1] and len(circles[0]) == 3


def test_the_walk_resolves_without_inventing_circles(tmp_path):
    # A submodule importing its sibling, a package re-exporting both, a relative import from __init__:
    # no circle (a sibling's import does not depend on the package's __init__).
    _write(tmp_path, {"pkg/__init__.py": "from . import a\nfrom pkg.b import g\n",
                      "pkg/a.py": "from pkg.b import g\nimport os\n",
                      "pkg/b.py": "import json\n"})
    graph = import_graph(tmp_path, ("pkg",))
    assert set(graph.edges) == {("pkg", "pkg.a"), ("pkg", "pkg.b"), ("pkg.a", "pkg.b")}
    assert import_circles(graph) == []
