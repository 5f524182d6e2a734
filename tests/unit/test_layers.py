"""The layers (README, "Layout"), enforced: no import runs up a layer, no two modules import each
other (directly or through a cycle), and the product never imports test support."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAYERS = {
    "core": 0,
    "generators": 1,
    "retrieval": 1,
    "tools": 2,
    "agent": 3,
    "graphs": 4,
    "evals": 5,
    "tuning": 6,
    "service": 6,
    "cli": 7,
}
IMPORT_FUNCTIONS = {"import_module", "__import__"}


def _modules(root: Path = REPO) -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for pkg in LAYERS:
        for f in (root / pkg).rglob("*.py") if (root / pkg).is_dir() else []:
            name = ".".join(f.relative_to(root).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = f
    return mods


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    """`from ..x import y` inside `module` -> the absolute name it reaches."""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    base = parts[: len(parts) - (level - 1)] if level > 1 else parts
    return ".".join([*base, target] if target else base)


def _string_arg(call: ast.Call) -> str | None:
    if call.args and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str):
        return call.args[0].value
    return None


def _imports(f: Path, module: str | None = None) -> set[str]:
    """Every module named by an import anywhere in the file: lazy imports, relative imports
    (resolved against `module`, the file's dotted name) and `importlib.import_module(...)` /
    `__import__(...)` with a literal name all count."""
    out: set[str] = set()
    is_package = f.name == "__init__.py"
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                base = node.module
            elif node.level > 0 and module is not None:
                base = _resolve_relative(module, is_package, node.level, node.module)
            else:
                base = "." * node.level + (node.module or "")  # unresolvable: still reported
            if base:
                out.add(base)
            out |= {f"{base}.{a.name}" if base else a.name for a in node.names}
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            target = _string_arg(node) if name in IMPORT_FUNCTIONS else None
            if target is None:
                continue
            package = next(
                (
                    k.value.value
                    for k in node.keywords
                    if k.arg == "package" and isinstance(k.value, ast.Constant)
                ),
                None,
            )
            if target.startswith(".") and isinstance(package, str):
                level = len(target) - len(target.lstrip("."))
                out.add(_resolve_relative(package, True, level, target.lstrip(".") or None))
            elif target.startswith(".") and module is not None:
                level = len(target) - len(target.lstrip("."))
                out.add(_resolve_relative(module, is_package, level, target.lstrip(".") or None))
            else:
                out.add(target)
    return out


def _graph(root: Path = REPO) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    mods = _modules(root)
    edges: dict[str, set[str]] = {}
    raw: dict[str, set[str]] = {}
    for name, f in mods.items():
        raw[name] = _imports(f, name)
        deps = set()
        for target in raw[name]:
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                deps.add(target)
        edges[name] = deps
    return edges, raw


def _upward(root: Path = REPO) -> list[str]:
    edges, _ = _graph(root)
    return sorted(
        f"{a} -> {b}"
        for a, deps in edges.items()
        for b in deps
        if LAYERS[b.split(".")[0]] > LAYERS[a.split(".")[0]]
    )


def test_no_import_runs_up_a_layer() -> None:
    assert _upward() == []


def test_every_top_level_package_has_a_layer() -> None:
    """A new package must be placed in the layer order before it can import anything."""
    packages = {
        p.name
        for p in REPO.iterdir()
        if (p / "__init__.py").is_file() and p.name not in {"tests", "benchmarks"}
    }
    assert packages - set(LAYERS) == set()


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


def _plant(root: Path, files: dict[str, str]) -> Path:
    """A throwaway tree laid out like the repository, with the given modules."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in path.relative_to(root).parents:
            if str(parent) != ".":
                (root / parent / "__init__.py").touch()
        path.write_text(text)
    return root


def test_the_check_catches_an_upward_import(tmp_path: Path) -> None:
    """The walker itself works: an upward import in a throwaway module is found."""
    f = tmp_path / "m.py"
    f.write_text("from graphs.build import build_graph\n")
    assert "graphs.build" in _imports(f)


@pytest.mark.parametrize(
    ("planted", "found"),
    [
        # relative, from a sub-package up to a higher layer
        ("from ...graphs.build import build_graph\n", "agent.stages.x -> graphs.build"),
        ("from ... import graphs\n", "agent.stages.x -> graphs"),
        # importlib and __import__ with a literal name
        ("import importlib\nimportlib.import_module('graphs.build')\n", "-> graphs.build"),
        ("from importlib import import_module\nimport_module('evals.arms')\n", "-> evals.arms"),
        ("__import__('service.app')\n", "agent.stages.x -> service.app"),
        ("import importlib\nimportlib.import_module('.build', package='graphs')\n", "-> graphs"),
    ],
)
def test_the_check_fails_on_planted_hidden_upward_imports(
    tmp_path: Path, planted: str, found: str
) -> None:
    root = _plant(
        tmp_path,
        {
            "agent/stages/x.py": planted,
            "graphs/build.py": "",
            "evals/arms.py": "",
            "service/app.py": "",
        },
    )
    upward = _upward(root)
    assert any(found in line for line in upward), upward


def test_relative_imports_inside_a_layer_are_allowed(tmp_path: Path) -> None:
    root = _plant(
        tmp_path,
        {"graphs/a.py": "from . import b\nfrom .b import thing\n", "graphs/b.py": "thing = 1\n"},
    )
    edges, _ = _graph(root)
    assert edges["graphs.a"] == {"graphs.b"}
    assert _upward(root) == []


OUTSIDE = ("../shared", "shared/PEERS", "PEERS.md", "DESIGN.md", "RECIPES.md", "/work/")


def test_the_product_points_at_no_file_outside_the_repository() -> None:
    """A clone is the whole product: code and docs describe facts instead of citing notes that
    live beside the checkout."""
    files = [REPO / "README.md", REPO / "pyproject.toml", *(REPO / "docs").rglob("*.md")]
    for pkg in LAYERS:
        files += [f for f in (REPO / pkg).rglob("*") if f.suffix in {".py", ".md", ".toml"}]
    offenders = [
        f"{f.relative_to(REPO)}: {needle}"
        for f in files
        if f.is_file()
        for needle in OUTSIDE
        if needle in f.read_text(errors="replace")
    ]
    assert offenders == []
