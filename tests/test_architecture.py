"""The import graph of ``launch`` and ``_launch_child``, read from the source with ``ast``.

Runtime imports only: what a module imports when it is imported (module level, inside
``if``/``try``/``with`` and class bodies), not what ``if TYPE_CHECKING:`` blocks or
function bodies import.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PACKAGES = ("launch", "_launch_child")
# Not the core: the command line, the bench, the integrations, the pytest plugin.
OUTSIDE_CORE = ("launch._cli", "launch.bench", "launch.integrations", "launch.testing")
NEVER_FROM_CORE = ("launch._cli", "launch.bench", "launch.integrations")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {
        module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")
    }


MODULES = all_modules()


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_nodes(body: list[ast.stmt], *, functions: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements ``body`` runs (with ``functions``: also those of the
    functions it defines); never those under ``if TYPE_CHECKING:``."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not is_type_checking(node.test):
                yield from import_nodes(node.body, functions=functions)
            yield from import_nodes(node.orelse, functions=functions)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if functions:
                yield from import_nodes(node.body, functions=functions)
        elif isinstance(node, ast.Try | ast.TryStar):
            for block in (node.body, node.orelse, node.finalbody):
                yield from import_nodes(block, functions=functions)
            for handler in node.handlers:
                yield from import_nodes(handler.body, functions=functions)
        elif isinstance(node, ast.With | ast.AsyncWith | ast.ClassDef | ast.For | ast.While):
            yield from import_nodes(node.body, functions=functions)


def imported(module: str, *, functions: bool = False) -> set[str]:
    """The absolute names of the modules ``module`` imports (a ``from x import name``
    counts as ``x.name`` when that is a module of ours, else as ``x``)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: set[str] = set()
    for node in import_nodes(tree.body, functions=functions):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            found.add(sub if sub in MODULES else base)
    return found


def graph() -> dict[str, set[str]]:
    """Our modules and the modules of ours each imports at runtime."""
    return {module: {m for m in imported(module) if m in MODULES} for module in MODULES}


def reachable(start: str, edges: dict[str, set[str]]) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in edges[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_graph_reader_sees_the_timeline_package() -> None:
    edges = graph()
    assert "launch._timeline.timeline" in edges["launch._timeline"]
    assert edges["launch._timeline.timeline"] >= {
        "launch._timeline.trace",
        "launch._timeline.gantt",
    }
    assert "launch._timeline" in edges["launch._group"]


def test_the_timeline_package_is_layered() -> None:
    """Model below the writers, the writers below Timeline, Timeline below the builders;
    nothing in it imports the group, pipeline or child modules, even for typing."""
    edges = graph()
    package = {m: e for m, e in edges.items() if under(m, ("launch._timeline",))}
    assert package["launch._timeline.model"] == set()
    for writer in ("launch._timeline.trace", "launch._timeline.gantt"):
        assert "launch._timeline.timeline" not in reachable(writer, edges)
    for module in package:
        everything = imported(module, functions=True)
        source = MODULES[module].read_text(encoding="utf-8")
        assert not everything & {"launch._group", "launch._pipeline", "launch._child"}, module
        assert "TYPE_CHECKING" not in source, module
        assert {m for m in everything if m in MODULES} <= set(package), module
    TopologicalSorter(package).prepare()  # no cycle inside the package


def test_the_runtime_import_graph_has_no_cycle() -> None:
    edges = graph()
    try:
        TopologicalSorter(edges).prepare()
    except CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def test_the_core_never_imports_the_cli_the_bench_or_integrations() -> None:
    edges = graph()
    core = [m for m in MODULES if m.startswith("launch") and not under(m, OUTSIDE_CORE)]
    assert "launch._spec" in core and "launch._timeline.build" in core
    core.remove("launch.__main__")  # ``python -m launch`` is the command line
    for module in core:
        wrong = sorted(m for m in reachable(module, edges) if under(m, NEVER_FROM_CORE))
        assert not wrong, f"{module} imports {wrong} at module level"


def test_the_child_side_imports_only_the_standard_library() -> None:
    for module in (m for m in MODULES if under(m, ("_launch_child",))):
        outside = {
            name
            for name in imported(module, functions=True)
            if name.split(".")[0] not in sys.stdlib_module_names
            and not under(name, ("_launch_child",))
        }
        assert not outside, f"{module} imports {sorted(outside)}"
