"""The house plan holds: the Wan library imports one way and never reaches into the graph.

    nodes/*.py (adapters) -> nodes/wan/pipelines -> nodes/wan/checkpoints -> nodes/wan/models -> nodes/wan/backend
    graphrt never imports nodes; nodes/wan never imports graphrt or an adapter module; no module
    imports another in a circle (lazy imports inside functions count too); no file name inside
    nodes/ means two things.
"""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent
# A layer may import itself and the layers listed after it.
LAYERS = ["pipelines", "checkpoints", "models", "backend"]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of every module `path` imports, at top level or inside functions."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)   # `from . import x` names a module
    return found


def _graph() -> nx.DiGraph:
    files = [p for top in ("graphrt", "nodes") for p in (ROOT / top).rglob("*.py")]
    modules = {_module_name(p): p for p in files}
    g = nx.DiGraph()
    g.add_nodes_from(modules)
    for name, path in modules.items():
        for imported in _imports(path):
            if imported in modules and imported != name:
                g.add_edge(name, imported)
    return g


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[:2] != ["nodes", "wan"]:
        return None
    return parts[2] if len(parts) > 2 and parts[2] in LAYERS else "top"


def test_the_import_graph_has_no_circles():
    g = _graph()
    # The package __init__ re-exports the public names; a submodule importing its package's __init__
    # is how Python resolves relative imports, not a dependency, so __init__ edges into submodules go.
    g.remove_edges_from([(a, b) for a, b in list(g.edges) if b in ("nodes", "nodes.wan", "graphrt")
                         or (b.count(".") < a.count(".") and a.startswith(b + "."))])
    cycles = list(nx.simple_cycles(g))
    assert not cycles, f"import circles: {cycles[:3]}"


def test_the_engine_knows_nothing_of_nodes():
    bad = [(a, b) for a, b in _graph().edges if a.startswith("graphrt") and b.startswith("nodes")]
    assert not bad, f"graphrt imports node code: {bad}"


def test_the_wan_library_does_not_import_the_graph_or_the_adapters():
    bad = [(a, b) for a, b in _graph().edges
           if a.startswith("nodes.wan") and not b.startswith("nodes.wan") and b.startswith(("graphrt", "nodes"))]
    assert not bad, f"nodes/wan imports the engine or an adapter: {bad}"


def test_layers_import_one_way():
    bad = []
    for a, b in _graph().edges:
        la, lb = _layer(a), _layer(b)
        if la in LAYERS and lb in LAYERS and LAYERS.index(lb) < LAYERS.index(la):
            bad.append((a, b))
        if la in LAYERS and lb == "top" and b != "nodes.wan":
            bad.append((a, b))
    assert not bad, f"imports against the layer order {' -> '.join(LAYERS)}: {bad}"


def test_no_file_name_means_two_things():
    names: dict[str, list] = {}
    for p in (ROOT / "nodes").rglob("*.py"):
        if p.name != "__init__.py":
            names.setdefault(p.name, []).append(str(p.relative_to(ROOT)))
    repeated = {n: ps for n, ps in names.items() if len(ps) > 1}
    assert not repeated, f"file names used twice: {repeated}"


@pytest.mark.parametrize("bad_import, expect", [
    ("from graphrt import Node", "graphrt"),
    ("from ..pipelines.sampling import denoise", "pipelines"),
])
def test_the_checks_catch_a_violation(tmp_path, monkeypatch, bad_import, expect):
    # The rules above must fail on a tree that breaks them: add one bad import to a models module.
    target = ROOT / "nodes" / "wan" / "models" / "rope.py"
    original = target.read_text()
    edited = original + f"\n\ndef _probe():\n    {bad_import}\n"
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: edited if self == target
                        else original_read(self, *a, **k))
    with pytest.raises(AssertionError, match=expect):
        test_the_wan_library_does_not_import_the_graph_or_the_adapters()
        test_layers_import_one_way()


original_read = Path.read_text
