"""The provider registry: built by name from a factory dict above the providers, so no module
of tools/ imports another that imports it back (issue: base <-> ddgs <-> searxng cycle)."""

from __future__ import annotations

import ast
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.tools.conftest import tool_settings
from tools.providers import PROVIDERS, ProviderError, make_provider

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(TOOLS.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in TOOLS.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
                targets |= {f"{node.module}.{a.name}" for a in node.names}
        deps = set()
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name:
                deps.add(t)
        graph[name] = deps
    return graph


def test_no_import_cycles_in_tools() -> None:
    graph = _import_graph()
    assert "tools.providers.base" in graph
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for dep in graph[node]:
            if state.get(dep) == 1:
                cycle = path[path.index(dep) :] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        path.pop()
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node)
    assert not graph["tools.providers.base"] & {
        "tools.providers",
        "tools.providers.ddgs_provider",
        "tools.providers.searxng_provider",
    }


async def test_registry_builds_each_provider_and_refuses_unknown_names(tmp_path: Path) -> None:
    assert set(PROVIDERS) == {"ddgs", "searxng"}
    with ThreadPoolExecutor(1) as pool:
        ddgs = make_provider("ddgs", tool_settings(tmp_path, []), executor=pool)
        searx = make_provider(
            "searxng",
            tool_settings(tmp_path, [], searxng_url="http://127.0.0.1:8888"),
            executor=pool,
        )
        assert (ddgs.name, searx.name) == ("ddgs", "searxng")
        await ddgs.aclose()
        await searx.aclose()
        with pytest.raises(ProviderError, match="searxng_url"):
            make_provider("searxng", tool_settings(tmp_path, []), executor=pool)
        with pytest.raises(ProviderError, match="unknown search provider 'bing'"):
            make_provider("bing", tool_settings(tmp_path, []), executor=pool)
