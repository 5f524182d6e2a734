"""retrieval/ is a ground-floor layer: it imports only core/ (and libraries), never tools/,
agent/, graphs/, evals/, service/ or cli/, and no two of its modules import each other (lazy and
TYPE_CHECKING imports count: they are cycles waiting for the first eager one)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ABOVE = ("tools", "agent", "graphs", "evals", "service", "server", "cli", "tests")


def _modules() -> dict[str, Path]:
    out = {}
    for f in (REPO / "retrieval").rglob("*.py"):
        name = ".".join(f.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        out[name] = f
    return out


def _imports(f: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return names


def test_retrieval_imports_nothing_above_it() -> None:
    upward = {
        f"{name} -> {target}"
        for name, f in _modules().items()
        for target in _imports(f)
        if target.split(".")[0] in ABOVE
    }
    assert not upward


def test_no_import_cycles_inside_retrieval() -> None:
    mods = _modules()
    edges: dict[str, set[str]] = {}
    for name, f in mods.items():
        deps = set()
        for target in _imports(f):
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                deps.add(target)
        edges[name] = deps

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            cur = todo.pop()
            for nxt in edges.get(cur, ()):
                if nxt == goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    cycles = sorted(f"{a} <-> {b}" for a in edges for b in edges[a] if reaches(b, a))
    assert not cycles
