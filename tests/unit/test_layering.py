"""The package's import structure, read statically with ``ast``: no app-only dependencies in the library, no import
cycles, library layers that point one way; plus one runtime check that ``import lightning_ard`` stays light.

Every ``import`` statement counts, at module level or inside a function (a lazy import that closes a cycle is still a
cycle). Imports under ``if TYPE_CHECKING:`` never run, so they are left out of the cycle graph (they still count for
the dependency and layering rules).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from tests.conftest import ROOT

PKG = "lightning_ard"
PKG_DIR = ROOT / PKG
APP_ONLY = ("hydra", "omegaconf", "matplotlib")
"""Third-party packages only the Hydra application and the benchmarks may import."""
OUTSIDE_LIBRARY = (f"{PKG}.app", f"{PKG}.bench")


@dataclass(frozen=True)
class Import:
    """One import statement of a ``lightning_ard`` module, relative names resolved."""

    importer: str
    module: str
    """The module the statement names: ``a.b`` for ``import a.b`` and for ``from a.b import c``."""
    names: tuple[str, ...]
    """The names of a ``from`` import; empty for ``import a.b``."""
    lineno: int
    lazy: bool
    type_only: bool

    def describe(self) -> str:
        what = f"from {self.module} import {', '.join(self.names)}" if self.names else f"import {self.module}"
        where = " (inside a function)" if self.lazy else " (under TYPE_CHECKING)" if self.type_only else ""
        return f"{self.importer} line {self.lineno}: {what}{where}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def _sources() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by the name of its ``__init__``)."""
    return {_module_name(p): p for p in sorted(PKG_DIR.rglob("*.py"))}


def _is_package(module: str) -> bool:
    return _sources()[module].name == "__init__.py"


def _is_ancestor(package: str, module: str) -> bool:
    return module.startswith(package + ".")


def _in(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """Ids of the nodes under an ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``) block."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else ""
            if name == "TYPE_CHECKING":
                for child in node.body:
                    inside.update(id(n) for n in ast.walk(child))
    return inside


def _lazy_nodes(tree: ast.AST) -> set[int]:
    """Ids of the nodes inside a function or lambda body."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inside.update(id(n) for n in ast.walk(node) if n is not node)
    return inside


def _absolute(importer: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".") if _is_package(importer) else importer.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


@cache
def imports() -> tuple[Import, ...]:
    """Every import statement of every module of the package."""
    found: list[Import] = []
    for module, path in _sources().items():
        tree = ast.parse(path.read_text(), filename=str(path))
        lazy, type_only = _lazy_nodes(tree), _type_checking_nodes(tree)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            flags = {"lazy": id(node) in lazy, "type_only": id(node) in type_only, "lineno": node.lineno}
            if isinstance(node, ast.Import):
                found.extend(Import(module, alias.name, (), **flags) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
                names = tuple(alias.name for alias in node.names)
                found.append(Import(module, _absolute(module, node), names, **flags))
    return tuple(sorted(found, key=lambda i: (i.importer, i.lineno)))


def _defining_module(package: str, name: str, seen: frozenset[str] = frozenset()) -> str:
    """The module that binds ``name`` in ``package``: a submodule ``package.name``, the submodule the package's
    ``__init__`` re-exports ``name`` from (followed through further re-exports), else the package itself."""
    if f"{package}.{name}" in _sources():
        return f"{package}.{name}"
    if package not in _sources() or not _is_package(package) or package in seen:
        return package
    for imp in imports():
        if imp.importer == package and not imp.lazy and imp.names and _in(imp.module, PKG):
            if name in imp.names and imp.module in _sources():
                return _defining_module(imp.module, name, seen | {package})
    return package


def _runtime_edges(imp: Import) -> Iterator[str]:
    """The ``lightning_ard`` modules an import statement runs.

    ``import a.b.c`` and ``from a.b.c import x`` run the ``__init__`` of every package on the way (``a``, ``a.b``)
    and ``a.b.c`` itself; packages that enclose the importer are already being imported, so they are no edge.
    ``from pkg import name`` from inside ``pkg`` reaches only the submodule that defines ``name``.
    """
    if not _in(imp.module, PKG):
        return
    parts = imp.module.split(".")
    for i in range(1, len(parts) + 1):
        target = ".".join(parts[:i])
        if target in _sources() and target != imp.importer and not _is_ancestor(target, imp.importer):
            yield target
    if imp.module in _sources():
        for name in imp.names:
            target = _defining_module(imp.module, name)
            if target != imp.importer and not _is_ancestor(target, imp.importer):
                yield target


def _layer_targets(imp: Import) -> Iterator[str]:
    """What an import statement depends on: the module it names and the modules defining the names it takes."""
    if not _in(imp.module, PKG):
        return
    if not _is_ancestor(imp.module, imp.importer):
        yield imp.module
    if imp.module in _sources():
        for name in imp.names:
            yield _defining_module(imp.module, name)


def _library_modules() -> Iterable[str]:
    return (m for m in _sources() if not any(_in(m, outside) for outside in OUTSIDE_LIBRARY))


def test_scanner_sees_lazy_relative_and_re_exported_imports() -> None:
    """The scanner itself: it finds every module, lazy imports, and resolves re-exports to the defining module."""
    assert {f"{PKG}", f"{PKG}.controller", f"{PKG}.kernels.triton.backend", f"{PKG}.app.train"} <= set(_sources())
    lazy = {(i.importer, i.module) for i in imports() if i.lazy}
    assert (f"{PKG}.lstm_policy", f"{PKG}.search") in lazy
    assert _defining_module(f"{PKG}.patterns", "RowPattern") == f"{PKG}.patterns.row"
    assert _defining_module(PKG, "ARDConfig") == f"{PKG}.config"
    assert _defining_module(f"{PKG}.kernels", "torch_ops") == f"{PKG}.kernels.torch_ops"
    fake = ast.parse("from ..patterns import row").body[0]
    assert isinstance(fake, ast.ImportFrom)
    assert _absolute(f"{PKG}.kernels.base", fake) == f"{PKG}.patterns"
    assert _absolute(f"{PKG}.kernels", fake) == f"{PKG}.patterns"


def test_library_does_not_import_app_dependencies() -> None:
    """Outside ``app/`` and ``bench/`` no module imports hydra, omegaconf or matplotlib (not even lazily)."""
    offending = [
        imp.describe()
        for imp in imports()
        if imp.importer in set(_library_modules()) and imp.module.partition(".")[0] in APP_ONLY
    ]
    assert not offending, "library modules import app-only dependencies:\n" + "\n".join(offending)


def _cycles(graph: dict[str, dict[str, Import]]) -> list[tuple[list[str], list[str]]]:
    """Each strongly connected component of more than one module (or a self-loop), with one shortest cycle
    through its first module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan; the graph is small, recursion depth is no concern
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, {})):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, {}):
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)

    cycles = []
    for component in components:
        members, start = set(component), component[0]
        paths, frontier = {start: [start]}, [start]
        cycle: list[str] | None = None
        while frontier and cycle is None:  # breadth first from start, back to start, inside the component
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w == start:
                        cycle = [*paths[v], start]
                        break
                    if w in members and w not in paths:
                        paths[w] = [*paths[v], w]
                        nxt.append(w)
                if cycle:
                    break
            frontier = nxt
        assert cycle is not None
        cycles.append((component, cycle))
    return cycles


def test_no_import_cycles() -> None:
    """The graph of the package's runtime imports (lazy ones included) has no cycle."""
    graph: dict[str, dict[str, Import]] = {m: {} for m in _sources()}
    for imp in imports():
        if not imp.type_only:
            for target in _runtime_edges(imp):
                graph[imp.importer].setdefault(target, imp)
    cycles = _cycles(graph)
    report = []
    for component, cycle in cycles:
        steps = [f"  {graph[a][b].describe()}  ->  {b}" for a, b in zip(cycle, cycle[1:])]
        more = (
            f"\n  (these modules are all on cycles with each other: {', '.join(component)})"
            if len(component) > len(cycle) - 1
            else ""
        )
        report.append(" -> ".join(cycle) + "\n" + "\n".join(steps) + more)
    assert not cycles, "import cycles:\n" + "\n".join(report)


LAYERS = {
    "patterns": (f"{PKG}.patterns", ("layers", "kernels", "sites", "controller", "callback", "app", "bench")),
    "search": (f"{PKG}.search", ("layers", "kernels", "sites", "controller", "callback", "app", "bench")),
    "kernels": (f"{PKG}.kernels", ("layers", "sites", "controller", "callback", "app", "bench")),
    "layers": (f"{PKG}.layers", ("sites", "controller", "callback", "app", "bench")),
}


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_layer_imports_nothing_above_it(layer: str) -> None:
    """patterns/ and search/ sit at the bottom, then kernels/, then layers/: none imports a layer above it."""
    prefix, forbidden = LAYERS[layer]
    offending = sorted(
        {
            f"{imp.describe()}  ->  {target}"
            for imp in imports()
            if _in(imp.importer, prefix)
            for target in _layer_targets(imp)
            if any(_in(target, f"{PKG}.{above}") for above in forbidden)
        }
    )
    assert not offending, f"{layer}/ imports from layers above it:\n" + "\n".join(offending)


def test_library_does_not_import_app_or_bench() -> None:
    """No library module (outside app/ and bench/) imports ``lightning_ard.app`` or ``lightning_ard.bench``."""
    library = set(_library_modules())
    offending = sorted(
        {
            f"{imp.describe()}  ->  {target}"
            for imp in imports()
            if imp.importer in library
            for target in _layer_targets(imp)
            if any(_in(target, outside) for outside in OUTSIDE_LIBRARY)
        }
    )
    assert not offending, "the library imports the app or the benchmarks:\n" + "\n".join(offending)


_CHILD = """
import json, sys, traceback
BANNED = set(sys.argv[1].split(","))
chains = {}

class Spy:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in BANNED and top not in chains:
            chains[top] = [f"{f.filename}:{f.lineno}" for f in traceback.extract_stack()[:-1]
                           if not f.filename.startswith("<")]
        return None

sys.meta_path.insert(0, Spy())
import lightning_ard
import lightning_ard.controller
print(json.dumps({m: chains.get(m, []) for m in sorted(BANNED) if m in sys.modules}))
"""


def _short_chain(frames: list[str]) -> str:
    """The lightning_ard frames of an import stack, then the third-party frames from there to the import."""
    short = [f.split("site-packages/")[-1].replace(str(ROOT) + "/", "") for f in frames]
    ours = [i for i, f in enumerate(short) if f.startswith(f"{PKG}/")]
    if not ours:
        return " -> ".join(short[-6:])
    rest = short[ours[-1] + 1 :]
    tail = rest if len(rest) <= 5 else [*rest[:3], "...", *rest[-2:]]
    return " -> ".join([short[i] for i in ours] + tail)


@pytest.mark.slow  # a fresh interpreter importing lightning: seconds
def test_import_does_not_load_app_dependencies() -> None:
    """In a fresh interpreter ``import lightning_ard`` and ``lightning_ard.controller`` load no hydra, omegaconf
    or matplotlib (checked in ``sys.modules``; the message shows the import chain that loaded each)."""
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, ",".join(APP_ONLY)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    loaded: dict[str, list[str]] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not loaded, "import lightning_ard loads app-only packages:\n" + "\n".join(
        f"{name}: {_short_chain(frames)}" for name, frames in loaded.items()
    )
