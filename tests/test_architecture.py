"""The package's imports go one way: no cycles, models/ is a leaf, the three libraries stand alone.

Read from the source with `ast` (nothing is imported). Every import counts, the lazy ones inside
functions included (most of the old cycles were lazy imports), except those under
`if TYPE_CHECKING:`. `from pkg import x` is an edge to pkg.x when that is a module, else to pkg,
so a re-export through an __init__ counts. The parents a dotted import runs implicitly do not.

ALLOWED_CYCLES and ALLOWED_EDGES list the known violations (issue 14 removes them step by step).
They are a ratchet: a listed violation that no longer occurs fails the test too, so the lists
only shrink; delete an entry in the commit that removes it.
"""

from __future__ import annotations

import ast
import re
from collections import deque
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The repository keeps these folders at the top; they are installed as ctxprobe.<folder>.
FOLDERS = ("attention", "probes", "plots")
LIBRARIES = tuple(f"ctxprobe.{folder}" for folder in FOLDERS)

# Strongly connected components of more than one module, as they stand today.
ALLOWED_CYCLES: set[frozenset[str]] = set()

# Single edges that break a layering rule below (models/ a leaf, RANKS), cycles or not.
ALLOWED_EDGES: set[tuple[str, str]] = set()

# models/ may use these and nothing else of ctxprobe (besides itself).
MODELS_MAY_IMPORT = ("ctxprobe.errors", "ctxprobe.units", "ctxprobe.attention", "ctxprobe.probes")

# Layers, lowest first: a module imports only modules of its own rank or lower. The longest
# matching prefix decides. The root package is left out: it is the façade, whose lazy
# __getattr__ re-exports names from above by design (run, RunConfig, Grid, load_model).
RANKS = {
    "ctxprobe.attention": 0, "ctxprobe.probes": 0, "ctxprobe.plots": 0,
    "ctxprobe.errors": 0, "ctxprobe.units": 0, "ctxprobe.grid": 0, "ctxprobe.hardware": 0,
    "ctxprobe.output_file": 0, "ctxprobe.pass_progress": 0, "ctxprobe.router_trace": 0,
    "ctxprobe.version": 0,
    "ctxprobe.models": 1, "ctxprobe.builtin": 1,
    "ctxprobe.runner": 2, "ctxprobe.store": 2, "ctxprobe.scoring": 2, "ctxprobe.analysis": 2,
    "ctxprobe.backends": 3,
    "ctxprobe.sweep": 4,
    "ctxprobe.api": 5, "ctxprobe.demo": 5,
    "ctxprobe.commands": 6, "ctxprobe.cli": 6, "ctxprobe.__main__": 6,
}
UNRANKED = {"ctxprobe"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    if parts[0] in FOLDERS:
        parts.insert(0, "ctxprobe")
    return ".".join(parts)


def _files() -> dict[str, Path]:
    return {_module_name(p): p for top in ("ctxprobe",) + FOLDERS for p in sorted((ROOT / top).rglob("*.py"))}


FILES = _files()
MODULES = set(FILES)


def _known(name: str) -> str | None:
    """The nearest module of ours that `name` is or lies inside (None for other packages)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    todo = deque([tree])
    while todo:
        node = todo.popleft()
        if isinstance(node, ast.If) and _is_type_checking(node):
            todo.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        todo.extend(ast.iter_child_nodes(node))


def imports_in(source: str, module: str, is_package: bool = False) -> list[tuple[str, int]]:
    """(imported module of ours, line) for every import in `module`'s source."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in _import_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                       for alias in node.names]
        for target in targets:
            known = _known(target)
            if known is not None and known != module:
                found.append((known, node.lineno))
    return found


def imports_of(module: str) -> list[tuple[str, int]]:
    path = FILES[module]
    return imports_in(path.read_text(), module, path.name == "__init__.py")


GRAPH: dict[str, dict[str, int]] = {}
for _module in sorted(MODULES):
    GRAPH[_module] = {}
    for _target, _line in imports_of(_module):
        GRAPH[_module].setdefault(_target, _line)


def _where(a: str, b: str) -> str:
    return f"{FILES[a].relative_to(ROOT)}:{GRAPH[a][b]} ({a} -> {b})"


def strongly_connected(graph) -> list[set[str]]:
    """Tarjan's algorithm, iterative; components of more than one module."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
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
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(component)
    return found


def shortest_cycle(graph, component: set[str]) -> list[str]:
    best = None
    for start in sorted(component):
        parent, todo = {start: None}, deque([start])
        while todo:
            node = todo.popleft()
            for child in sorted(graph[node]):
                if child == start:
                    path = [node]
                    while parent[path[-1]] is not None:
                        path.append(parent[path[-1]])
                    cycle = [start] + path[::-1][1:] + [start]
                    if best is None or len(cycle) < len(best):
                        best = cycle
                    todo.clear()
                    break
                if child in component and child not in parent:
                    parent[child] = node
                    todo.append(child)
    return best


def _check_allowed(violations: set, allowed: set, what: str):
    new = sorted(violations - allowed)
    assert not new, f"new {what}:\n" + "\n".join(map(str, new))


def test_the_walker_sees_lazy_relative_and_reexported_imports():
    source = """
import torch
from typing import TYPE_CHECKING
import ctxprobe.models.config as config_mod
from ctxprobe.runner import loop, Settings
from . import keymap
from ..errors import UserError
if TYPE_CHECKING:
    from ctxprobe.store import Store
def f():
    from ctxprobe.attention import attend
    import ctxprobe.probes.niah.nothing
"""
    got = imports_in(source, "ctxprobe.models.model")
    assert got == [("ctxprobe.models.config", 4), ("ctxprobe.runner.loop", 5), ("ctxprobe.runner", 5),
                   ("ctxprobe.models.keymap", 6), ("ctxprobe.errors", 7), ("ctxprobe.attention", 11),
                   ("ctxprobe.probes.niah", 12)]
    assert (imports_in("from .blockwise import attend", "ctxprobe.attention", is_package=True)
            == [("ctxprobe.attention.blockwise", 1)])
    assert "ctxprobe.commands.run" in GRAPH["ctxprobe.cli"]  # cli.py imports each command lazily


def test_no_import_cycle_anywhere():
    components = strongly_connected(GRAPH)
    found = {frozenset(c) for c in components}
    messages = []
    for component in components:
        if frozenset(component) not in ALLOWED_CYCLES:
            cycle = shortest_cycle(GRAPH, component)
            messages.append(f"cycle among {sorted(component)}; shortest:\n  "
                            + "\n  ".join(_where(a, b) for a, b in zip(cycle, cycle[1:])))
    assert not messages, "\n".join(messages)
    gone = ALLOWED_CYCLES - found
    assert not gone, f"these allowed cycles are gone or changed; update ALLOWED_CYCLES: {sorted(map(sorted, gone))}"


def _models_violations() -> set[tuple[str, str]]:
    return {(a, b) for a in GRAPH if a == "ctxprobe.models" or a.startswith("ctxprobe.models.")
            for b in GRAPH[a]
            if b.startswith("ctxprobe") and not (b == "ctxprobe.models" or b.startswith("ctxprobe.models."))
            and b not in MODELS_MAY_IMPORT}


def test_models_never_import_the_runner():
    _check_allowed(_models_violations(), ALLOWED_EDGES, "imports from models/ outside "
                   f"models, {', '.join(MODELS_MAY_IMPORT)}, attention and probes")


@pytest.mark.parametrize("library", LIBRARIES)
def test_libraries_stand_alone(library):
    def within(name):
        return name == library or name.startswith(library + ".")

    bad = [_where(a, b) for a in GRAPH if within(a) for b in GRAPH[a] if not within(b)]
    assert not bad, f"{library}/ must import nothing of ctxprobe or the other libraries:\n" + "\n".join(bad)


def rank(module: str) -> int | None:
    prefixes = [p for p in RANKS if module == p or module.startswith(p + ".")]
    return RANKS[max(prefixes, key=len)] if prefixes else None


def test_every_module_has_a_rank():
    assert not sorted(m for m in GRAPH if m not in UNRANKED and rank(m) is None)


def _rank_violations() -> set[tuple[str, str]]:
    return {(a, b) for a in GRAPH if a not in UNRANKED for b in GRAPH[a]
            if b not in UNRANKED and rank(b) > rank(a)}


def test_imports_go_one_way():
    bad = _rank_violations() - ALLOWED_EDGES
    assert not bad, "imports from a lower layer to a higher one (see RANKS):\n" + "\n".join(
        _where(a, b) + f" rank {rank(a)} -> {rank(b)}" for a, b in sorted(bad))


def test_allowed_edges_still_occur():
    # The ratchet: an entry whose import is gone must be deleted from ALLOWED_EDGES.
    gone = sorted((a, b) for a, b in ALLOWED_EDGES if b not in GRAPH.get(a, {}))
    assert not gone, f"these allowed edges no longer occur; delete them from ALLOWED_EDGES: {gone}"
    unneeded = sorted(ALLOWED_EDGES - _models_violations() - _rank_violations())
    assert not unneeded, f"these allowed edges break no rule; delete them: {unneeded}"


# --- one name per module: the libraries are imported as ctxprobe.<folder> only (issue 19 item 9) ---

TOP_LEVEL_IMPORT = re.compile(rf"^\s*(from|import)\s+({'|'.join(FOLDERS)})(\.|\s|$)"
                              rf"|(files|import_module)\(\s*[\"']({'|'.join(FOLDERS)})[\"'.]", re.M)


def _sources():
    for top in ("ctxprobe", "tests", "bench", "scripts") + FOLDERS:
        yield from sorted((ROOT / top).rglob("*.py"))


def _python_blocks(markdown: str):
    yield from re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def test_nothing_imports_the_libraries_by_their_folder_names():
    # Installed, `import attention` would be some other project's package (PyPI has one), or none.
    bad = [f"{path.relative_to(ROOT)}: {m.group(0).strip()}" for path in _sources()
           for m in TOP_LEVEL_IMPORT.finditer(path.read_text())]
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        bad += [f"{doc.relative_to(ROOT)}: {m.group(0).strip()}" for block in _python_blocks(doc.read_text())
                for m in TOP_LEVEL_IMPORT.finditer(block)]
    assert not bad, "import these as ctxprobe.<name>:\n" + "\n".join(bad)


def test_pyproject_installs_every_package_under_ctxprobe():
    tomllib = pytest.importorskip("tomllib")
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setup["packages"])
    wanted = {_module_name(init.parent / "__init__.py") for top in ("ctxprobe",) + FOLDERS
              for init in (ROOT / top).rglob("__init__.py")}
    assert listed == wanted
    assert setup["package-dir"] == {f"ctxprobe.{folder}": folder for folder in FOLDERS}
