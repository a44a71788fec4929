"""The package's layout holds: no import cycle, the plugin and the loop never import each other, every
package folder is installed, and no module grows past the size a reader can hold in mind.

The import graph is read from the source with ``ast`` (nothing is imported), so a cycle is caught even
where Python would tolerate it at run time. Both module-level and function-level imports are edges;
imports under ``if TYPE_CHECKING:`` are not (they never run), and importing ``a.b.c`` is an edge to
``a.b.c`` only, not to the packages ``a`` and ``a.b`` whose ``__init__`` Python runs first.

Module-level imports must be acyclic, full stop. A function-level (lazy) import may close a cycle only
when it is listed in ``LAZY_BACK_EDGES`` with the reason it is lazy; the graph without those edges
must be acyclic too, and every listed edge must still exist.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "pytest_vpstest"
# Source folders and the dotted name each is installed under.
SOURCES = {ROOT / PACKAGE: PACKAGE, ROOT / "suites": f"{PACKAGE}.suites"}

# Lazy imports that point back at a module importing the importer, each with why it stays lazy.
# None today: keep it that way by moving what both modules need into a third one.
LAZY_BACK_EDGES: dict[tuple[str, str], str] = {}

MAX_LINES = 600
# Modules allowed past MAX_LINES, each with why it stays whole.
LONG_MODULES = {
    "pytest_vpstest.lab.agent.node": "one class, the agent's Node: its loops, connect methods, gossip, "
    "counter and bulk transfer share the node's socket and peer tables",
    "pytest_vpstest.records.store": "one class, StateStore: lease, fencing, commit, load and crash "
    "recovery all run under its one flock over one file layout; the rest are its small value types",
}


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int
    in_function: bool


def module_files() -> dict[str, Path]:
    """Every module of the installed package, by dotted name (packages by their own name)."""
    modules: dict[str, Path] = {}
    for folder, dotted in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((dotted, *parts))] = path
    return modules


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, in_function: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _type_checking_only(child):
            for other in child.orelse:
                yield from _walk(other, in_function)
            continue
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, in_function
        inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        yield from _walk(child, inner)


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """The package-internal imports of one module, resolved to module names."""
    tree = ast.parse(path.read_text(), filename=str(path))
    base = name if is_package(path) else name.rpartition(".")[0]
    found: list[Import] = []
    for node, in_function in _walk(tree, in_function=False):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                anchor = base.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                origin = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                origin = node.module or ""
            for alias in node.names:
                submodule = f"{origin}.{alias.name}"
                # ``from pkg import mod`` imports the module; ``from mod import name`` the module.
                targets.append(submodule if submodule in modules else origin)
        for target in targets:
            if target in modules and target != name:
                found.append(Import(name, target, node.lineno, in_function))
    return found


def import_graph(*, function_level: bool) -> dict[str, set[str]]:
    modules = module_files()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for imp in imports_of(name, path, modules):
            if function_level or not imp.in_function:
                graph[name].add(imp.imported)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a closed path (first name repeated at the end), or None."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for nxt in sorted(graph[node]):
            if nxt in on_path:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in done:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        node = todo.pop()
        for nxt in graph[node]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def in_package(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


# ------------------------------------------------------------------------- the checker itself


def test_the_graph_sees_relative_absolute_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    for rel in ("__init__.py", "a.py", "b.py", "c.py", "sub/__init__.py", "sub/d.py"):
        (pkg / rel).write_text("")
    (pkg / "sub" / "d.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from .. import a\n"
        "from ..b import thing\n"
        "import pkg.c\n"
        "if TYPE_CHECKING:\n"
        "    from pkg.sub import e\n"
        "def f():\n"
        "    from pkg.sub import d\n"
        "    from . import e\n"
    )
    (pkg / "sub" / "e.py").write_text("")
    modules = {
        "pkg": pkg / "__init__.py",
        "pkg.a": pkg / "a.py",
        "pkg.b": pkg / "b.py",
        "pkg.c": pkg / "c.py",
        "pkg.sub": pkg / "sub" / "__init__.py",
        "pkg.sub.d": pkg / "sub" / "d.py",
        "pkg.sub.e": pkg / "sub" / "e.py",
    }
    found = {(i.imported, i.in_function) for i in imports_of("pkg.sub.d", modules["pkg.sub.d"], modules)}
    assert found == {("pkg.a", False), ("pkg.b", False), ("pkg.c", False), ("pkg.sub.e", True)}


def test_find_cycle_finds_one_and_only_when_there_is_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


# ------------------------------------------------------------------------- the package


def test_there_are_modules_to_check() -> None:
    modules = module_files()
    assert f"{PACKAGE}.loop.machine" in modules
    assert f"{PACKAGE}.plugin.entry" in modules
    assert f"{PACKAGE}.suites.test_connectivity" in modules


def test_no_import_cycle_among_module_level_imports() -> None:
    cycle = find_cycle(import_graph(function_level=False))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_import_cycle_with_lazy_imports_except_the_listed_back_edges() -> None:
    graph = import_graph(function_level=True)
    stale = [edge for edge in LAZY_BACK_EDGES if edge[1] not in graph.get(edge[0], set())]
    assert stale == [], "LAZY_BACK_EDGES lists imports that no longer exist"
    for importer, imported in LAZY_BACK_EDGES:
        graph[importer].discard(imported)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle through a lazy import: " + " -> ".join(cycle or [])


def test_listed_back_edges_are_function_level_imports() -> None:
    modules = module_files()
    for importer, imported in LAZY_BACK_EDGES:
        found = [i for i in imports_of(importer, modules[importer], modules) if i.imported == imported]
        assert found and all(i.in_function for i in found), f"{importer} imports {imported} at module level"


@pytest.mark.parametrize(("side", "other"), [("plugin", "loop"), ("loop", "plugin")])
def test_the_plugin_and_the_loop_never_import_each_other(side: str, other: str) -> None:
    graph = import_graph(function_level=True)
    side_pkg, other_pkg = f"{PACKAGE}.{side}", f"{PACKAGE}.{other}"
    direct = sorted(
        f"{name} imports {target}"
        for name, targets in graph.items()
        if in_package(name, side_pkg)
        for target in targets
        if in_package(target, other_pkg)
    )
    assert direct == []
    # Not through a shared module either: what both use lives in records/, fleet/ and the base.
    through = sorted(
        name
        for name in graph
        if in_package(name, side_pkg) and any(in_package(t, other_pkg) for t in reachable(graph, name))
    )
    assert through == [], f"{side} reaches {other} through other modules"


def test_the_shared_layers_import_neither_side() -> None:
    graph = import_graph(function_level=True)
    sides = (f"{PACKAGE}.plugin", f"{PACKAGE}.loop")
    shared = (f"{PACKAGE}.records", f"{PACKAGE}.fleet", f"{PACKAGE}.lab")
    wrong = sorted(
        f"{name} imports {target}"
        for name, targets in graph.items()
        if any(in_package(name, s) for s in shared)
        for target in targets
        if any(in_package(target, s) for s in sides)
    )
    assert wrong == []


def test_every_package_folder_is_listed_in_pyproject() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    dirs = setuptools.get("package-dir", {})
    folders: set[str] = set()
    for folder, dotted in SOURCES.items():
        assert dirs.get(dotted, folder.name) == folder.name, f"{dotted} is not installed from {folder.name}/"
        for path in [folder, *sorted(p for p in folder.rglob("*") if p.is_dir())]:
            if path.name == "__pycache__" or not any(path.glob("*.py")):
                continue
            assert (path / "__init__.py").exists(), f"{path.relative_to(ROOT)} has modules but no __init__.py"
            folders.add(".".join((dotted, *path.relative_to(folder).parts)))
    assert folders - listed == set(), "missing from [tool.setuptools] packages in pyproject.toml"
    assert listed - folders == set(), "listed in pyproject.toml but not a package folder"


def test_no_module_is_longer_than_the_limit_unless_allowed() -> None:
    modules = module_files()
    lengths = {name: len(path.read_text().splitlines()) for name, path in modules.items()}
    too_long = {name: n for name, n in lengths.items() if n > MAX_LINES and name not in LONG_MODULES}
    assert too_long == {}, f"modules over {MAX_LINES} lines: split them or add them to LONG_MODULES with why"
    # The allow-list holds no module that has since been split or removed.
    assert {name for name in LONG_MODULES if lengths.get(name, 0) <= MAX_LINES} == set()
