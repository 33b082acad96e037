"""The code's shape, checked: no import cycle between modules or between folders, no module over 400
lines, and the light paths (`ray-ha start` passthrough, `ray-ha health`) free of Redis and click.

Imports are read from the source (every `import`, at any depth, TYPE_CHECKING ones included): a
cycle hidden inside a function is still a cycle in the design.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Iterator

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "raylaunch"
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The raylaunch modules `path` imports (a `from package import name` counts as the module if it is one)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name in known}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(path, set(mods)) - {name} for name, path in mods.items()}


def folder(module: str) -> str:
    """The unit of the folder graph: a sub-package (raylaunch.store), or a top-level module."""
    return ".".join(module.split(".")[:2])


def cycles(edges: dict[str, set[str]]) -> Iterator[list[str]]:
    """One example path for every strongly connected group of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> Iterator[list[str]]:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                yield from visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                yield sorted(group)

    for node in sorted(edges):
        if node not in index:
            yield from visit(node)


def test_the_cycle_finder_finds_a_cycle():
    assert list(cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})) == [["a", "b", "c"]]
    assert list(cycles({"a": {"b"}, "b": set()})) == []


def test_the_import_reader_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from raylaunch.store import lease\n    import raylaunch.config\n")
    assert imports_of(source, {"raylaunch.store.lease", "raylaunch.store", "raylaunch.config"}) == {
        "raylaunch.store", "raylaunch.store.lease", "raylaunch.config"}


def test_no_import_cycle_between_modules():
    found = list(cycles(graph()))
    assert found == [], f"import cycles: {found}"


def test_no_import_cycle_between_folders():
    edges: dict[str, set[str]] = {}
    for src, targets in graph().items():
        edges.setdefault(folder(src), set()).update(folder(t) for t in targets if folder(t) != folder(src))
    found = list(cycles(edges))
    assert found == [], f"folders that import each other: {found}"


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_is_over_the_limit(name):
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines (limit {MAX_LINES})"


def reachable(start: str) -> set[str]:
    edges, seen, todo = graph(), set(), [start]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(edges.get(name, ()))
    return seen


def test_the_entry_point_imports_only_config_before_the_cli():
    edges = graph()
    assert edges["raylaunch.entry"] == {"raylaunch.cli", "raylaunch.config"}
    assert edges["raylaunch.config"] == set(), "config is the bottom of the graph"


def test_the_health_probe_does_not_reach_redis():
    reached = reachable("raylaunch.local.control")
    assert not any(name.startswith("raylaunch.store") for name in reached), sorted(reached)


@pytest.mark.parametrize("loop", ["raylaunch.head.campaign", "raylaunch.follow.follower"])
def test_the_decision_loops_speak_no_redis(loop):
    """They hear outage.Unavailable/Refused and read typed records; Redis's client, errors and keys stay in store/."""
    reached = {name for name in reachable(loop) if name.startswith("raylaunch.store")}
    assert reached <= {"raylaunch.store", "raylaunch.store.records"}, sorted(reached)


def test_the_readme_layout_names_every_module_and_no_other():
    """The README's "How the code is laid out" is the map a newcomer reads first: it follows the tree."""
    readme = (PACKAGE.parent / "README.md").read_text()
    section = readme.split("## How the code is laid out", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([a-z_]+\.py)`", section))
    ours = {p.name for p in PACKAGE.rglob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    elsewhere = {p.name for top in ("tests", "testkit", "bench") for p in (PACKAGE.parent / top).rglob("*.py")}
    assert ours - named == set(), "modules the README's layout does not name"
    assert named - ours - elsewhere == set(), "names in the README's layout that are no file"
