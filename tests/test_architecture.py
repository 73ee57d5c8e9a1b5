"""The package's import structure, read from the source with ``ast`` (nothing is imported):

- no import cycle among ``oe_assets`` modules through module-level imports (those that run when a
  module is imported, class bodies included), without exception;
- no import cycle either when imports inside functions count too (a deferred import still ties two
  modules' knowledge into a circle; deferring is how circles hide), except the circles listed in
  :data:`KNOWN_CYCLES`.  Imports under ``if TYPE_CHECKING:`` never run and never count.  An edge goes to the
  module named, or to the package's ``__init__`` for a package: ``from .adapters.text import x``
  is an edge to ``oe_assets.lens.adapters.text``, ``from . import hooks`` to ``oe_assets.lens.hooks``;
  the parent packages Python runs on the way are not edges (every submodule would form a circle with
  its package);
- ``oe_assets.lens`` (the math) imports nothing upward: not Dagster, not ``oe_assets.assets``,
  ``oe_assets.resources``, ``oe_assets.definitions``, nor model loading, data sources or other
  projects' formats (``oe_assets.models``, ``.datasources``, ``.formats``), at module level or inside
  functions; it may use the storage layout (``oe_assets.storage``: the effects file format reads and
  writes through it);
- the storage layout (``oe_assets.storage``) imports no Dagster and nothing of the graph.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "oe_assets"

#: circles through imports inside functions not yet cut, as sorted tuples of their modules (none)
KNOWN_CYCLES: set[tuple[str, ...]] = set()

#: what ``oe_assets.lens`` may not import (prefixes of module names)
UPWARD = ("dagster", "oe_assets.assets", "oe_assets.resources", "oe_assets.definitions", "oe_assets.models",
          "oe_assets.datasources", "oe_assets.formats")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` blocks."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skipped |= {id(n) for n in ast.walk(child)}
    return skipped


def _function_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside function bodies (run when called, not when the module is imported)."""
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inside |= {id(n) for n in ast.walk(node) if n is not node}
    return inside


def imports(name: str, path: Path, known: dict[str, Path], module_level: bool = False) -> list[tuple[str, int]]:
    """``(absolute module name, line)`` of every import in the module ``name`` (only those that run
    on import with ``module_level``), relative imports resolved; ``from pkg import x`` names
    ``pkg.x`` where that is a module of ``known``, else ``pkg``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped = _type_checking_nodes(tree) | (_function_nodes(tree) if module_level else set())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                target = ".".join(parts[:len(parts) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((sub if sub in known else target, node.lineno))
    return found


def import_graph(module_level: bool = False) -> dict[str, set[str]]:
    """``{module: the oe_assets modules it imports}`` (at module level only with ``module_level``)."""
    known = modules()
    return {name: {t for t, _ in imports(name, path, known, module_level) if t in known and t != name}
            for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """The strongly connected components with more than one module (Tarjan), each as a sorted tuple."""
    index, low, stack, on_stack, found = {}, {}, [], set(), set()

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
            if len(component) > 1:
                found.add(tuple(sorted(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_relative_and_absolute_imports():
    graph = import_graph()
    assert "oe_assets.lens.adapters.base" in graph["oe_assets.lens.adapters.text"]  # from .base import
    assert "oe_assets.lens.hooks" in graph["oe_assets.lens.adapters.base"]  # from ..hooks import
    assert "oe_assets.lens.adapters.families" in graph["oe_assets.lens.adapters.decoder"]
    # deferred imports count in the full graph only: base's zero_shot import sits in a method
    assert "oe_assets.lens.zero_shot" in graph["oe_assets.lens.adapters.base"]
    assert "oe_assets.lens.zero_shot" not in import_graph(module_level=True)["oe_assets.lens.adapters.base"]
    # a circle is found: the graph plus one back edge
    assert cycles({**graph, "oe_assets.lens.hooks": graph["oe_assets.lens.hooks"] | {"oe_assets.lens.adapters.base"}})


def test_no_import_cycle_at_module_level():
    found = cycles(import_graph(module_level=True))
    assert not found, "import cycles among oe_assets modules:\n" + "\n".join(" <-> ".join(c) for c in sorted(found))


def test_no_import_cycle_among_oe_assets_modules():
    found = cycles(import_graph())
    new = found - KNOWN_CYCLES
    assert not new, "import cycles among oe_assets modules:\n" + "\n".join(" <-> ".join(c) for c in sorted(new))
    gone = KNOWN_CYCLES - found
    assert not gone, f"cut cycles still listed in KNOWN_CYCLES: {sorted(gone)}"


def test_lens_imports_nothing_upward():
    upward = []
    known = modules()
    for name, path in known.items():
        if name == "oe_assets.lens" or name.startswith("oe_assets.lens."):
            for target, line in imports(name, path, known):
                if any(target == p or target.startswith(p + ".") for p in UPWARD):
                    upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert not upward, "oe_assets.lens imports upward:\n" + "\n".join(upward)


def test_the_storage_layout_knows_nothing_of_dagster_or_the_graph():
    graph = ("dagster", "oe_assets.assets", "oe_assets.resources", "oe_assets.definitions", "oe_assets.lens",
             "oe_assets.resume", "oe_assets.recovery")
    found = []
    known = modules()
    for name, path in known.items():
        if name == "oe_assets.storage" or name.startswith("oe_assets.storage.") or name == "oe_assets.processes":
            for target, line in imports(name, path, known):
                if any(target == p or target.startswith(p + ".") for p in graph):
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert not found, "the storage layout imports the graph:\n" + "\n".join(found)
