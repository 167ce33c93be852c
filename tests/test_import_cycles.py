"""No import cycles at module level, and no pass imports a backend.

The check reads the source, not ``sys.modules``: every ``import`` / ``from ... import`` run when a module is
imported (module level, inside ``try`` / ``if`` blocks too, but not under ``if TYPE_CHECKING:`` and not inside
functions) is an edge; importing ``a.b.c`` also runs the packages ``a`` and ``a.b`` first, an edge too, except
to the importer's own packages (they are already importing when it runs). A cycle in that graph is an import
that works or fails depending on which module a user imports first (``import graphopt.targets`` before
``graphopt`` once raised ``ImportError``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: Source folder -> the package it installs as (setup.py).
ROOTS = {"graphopt": "graphopt", "passes": "graphopt.passes", "backends": "graphopt.backends"}


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in ROOTS.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level_imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement run when the module is imported: any block at module level (if, try, with,
    for, while, match, class bodies), not function bodies and not ``if TYPE_CHECKING:``."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _module_level_imports(node.orelse)
        else:
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                for child in getattr(node, field, []):
                    block = child.body if isinstance(child, (ast.ExceptHandler, ast.match_case)) else [child]
                    yield from _module_level_imports(block)


def _with_parents(name: str, modules: dict[str, Path]) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & modules.keys()


def _edges(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    targets: set[str] = set()
    for node in _module_level_imports(ast.parse(path.read_text()).body):
        if isinstance(node, ast.Import):
            for alias in node.names:
                targets |= _with_parents(alias.name, modules)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            base = ".".join([*anchor, *([base] if base else [])])
        targets |= _with_parents(base, modules)
        for alias in node.names:
            targets |= _with_parents(f"{base}.{alias.name}", modules)
    return targets - _with_parents(package, modules) - {name}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _edges(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_checker_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_level_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "module-level import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, pending = set(), [start]
    while pending:
        for successor in graph[pending.pop()] - seen:
            seen.add(successor)
            pending.append(successor)
    return seen


def test_no_pass_imports_a_backend_even_through_other_modules() -> None:
    graph = import_graph()
    offenders = {
        name: sorted(t for t in _reachable(graph, name) if t.startswith("graphopt.backends"))
        for name in graph
        if name.startswith("graphopt.passes.")
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_the_checker_sees_imports_in_every_module_level_block() -> None:
    source = (
        "import a\nclass C:\n    import b\nfor _ in ():\n    import c\n"
        "try:\n    pass\nexcept E:\n    import d\n"
        "def f():\n    import e\nif TYPE_CHECKING:\n    import g\n"
    )
    found = {alias.name for node in _module_level_imports(ast.parse(source).body) for alias in node.names}
    assert found == {"a", "b", "c", "d"}
