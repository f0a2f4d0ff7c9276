"""The package layout: imports only go down (no library imports an app, nothing below the
Lightning layer imports it) and no files import each other in a circle, counting the
imports made inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "softlabel"
#: the apps, on top of every library
APPS = ("softlabel.train", "softlabel.cache_cli", "softlabel.compare", "softlabel.loop")
#: the Lightning layer and what uses it
LIGHTNING = ("softlabel.modules",)
#: the layers of the libraries, bottom up: a module imports from its own layer or below
LAYERS = (
    (
        "softlabel._io",
        "softlabel._conf",
        "softlabel._hf_files",
        "softlabel._manifest",
        "softlabel._threads",
        "softlabel.schedules",
        "softlabel.kernels",
    ),
    ("softlabel.functional",),
    ("softlabel.targets",),
    ("softlabel.loss",),
    ("softlabel.linear_loss",),
    ("softlabel.data", "softlabel.models", "softlabel.cache"),
    ("softlabel.modules",),
    ("softlabel._config_check", "softlabel._hydra_app"),  # the apps' entry point
    APPS,
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The softlabel modules ``name`` imports anywhere in its file (a ``from X import Y``
    counts as importing X.Y when that is a module, else X)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.add(child if child in known else base)
    return {m for m in found if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(name, path, known) for name, path in known.items()}


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_imports_only_go_down():
    graph = _graph()
    assert "softlabel.cache_cli" in graph and "softlabel.loop.tables" in graph
    upward = sorted(
        f"{a} -> {b}"
        for a, targets in graph.items()
        for b in targets
        if (_under(b, APPS) and not _under(a, APPS))
        or (_under(b, LIGHTNING) and not _under(a, LIGHTNING + APPS))
    )
    assert not upward, f"imports from a lower layer to a higher one: {upward}"


def test_no_import_circles():
    graph = _graph()
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(path[path.index(nxt) :])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not circles, f"modules importing each other in a circle: {circles}"


def _layer(name: str) -> int | None:
    for index, prefixes in enumerate(LAYERS):
        if _under(name, prefixes):
            return index
    return None


def test_the_loss_core_is_layered():
    """kernels (the engine) < functional < targets < loss < linear_loss < data, models,
    cache < modules < apps: no module imports from a layer above its own."""
    graph = _graph()
    assert set(graph) - {"softlabel"} <= {m for m in graph if _layer(m) is not None}, (
        "a module outside every layer: add it to LAYERS"
    )
    upward = sorted(
        f"{a} -> {b}"
        for a, targets in graph.items()
        for b in targets
        if a != "softlabel" and b != "softlabel" and _layer(b) > _layer(a)
    )
    assert not upward, f"imports from a lower layer to a higher one: {upward}"
