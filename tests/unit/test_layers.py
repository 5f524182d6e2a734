"""The layers of DESIGN.md, enforced: no import runs up a layer, no two modules import each
other (directly or through a cycle), and the product never imports test support."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LAYERS = {
    "core": 0,
    "generators": 1,
    "retrieval": 1,
    "tools": 2,
    "agent": 3,
    "graphs": 4,
    "evals": 5,
    "service": 5,
    "cli": 6,
}


def _modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for pkg in LAYERS:
        for f in (REPO / pkg).rglob("*.py") if (REPO / pkg).is_dir() else []:
            name = ".".join(f.relative_to(REPO).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = f
    return mods


def _imports(f: Path) -> set[str]:
    """Every module named by an import anywhere in the file (lazy imports count too)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    mods = _modules()
    edges: dict[str, set[str]] = {}
    raw: dict[str, set[str]] = {}
    for name, f in mods.items():
        raw[name] = _imports(f)
        deps = set()
        for target in raw[name]:
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                deps.add(target)
        edges[name] = deps
    return edges, raw


def test_no_import_runs_up_a_layer() -> None:
    edges, _ = _graph()
    upward = [
        f"{a} -> {b}"
        for a, deps in edges.items()
        for b in deps
        if LAYERS[b.split(".")[0]] > LAYERS[a.split(".")[0]]
    ]
    assert upward == []


def test_no_import_cycles() -> None:
    edges, _ = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_product_never_imports_test_support() -> None:
    _, raw = _graph()
    offenders = [
        name for name, targets in raw.items() if any(t.startswith("tests") for t in targets)
    ]
    assert offenders == []


def test_the_check_catches_an_upward_import(tmp_path: Path) -> None:
    """The walker itself works: an upward import in a throwaway module is found."""
    f = tmp_path / "m.py"
    f.write_text("from graphs.build import build_graph\n")
    assert "graphs.build" in _imports(f)
