"""One source of truth for tool arguments (issue 10.2): the pydantic models generate the
OpenAI tool schemas AND validate what a model sends; `Toolkit.call` never raises for it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.artifacts import ArtifactStore
from tests.tools.conftest import FakeDDGS, LoopServer, tool_settings
from tools.observations import ImageRegistry, Observation, SearchHit
from tools.registry import (
    ALL_TOOLS,
    ARG_MODELS,
    GEN_SEARCHER_TOOLS,
    parse_arguments,
    tool_specs,
)
from tools.schemas import ToolCallError
from tools.toolkit import Toolkit

jsonschema = pytest.importorskip("jsonschema")

# Gen-Searcher's tool shapes (its agent's schema), plus knowledge_base: names, types,
# required, bounds.
EXPECTED = {
    "search": (
        ["queries"],
        {
            "queries": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 8},
            "top_k": {"type": "integer", "minimum": 1, "maximum": 20, "default": 5},
        },
    ),
    "image_search": (
        ["query"],
        {
            "query": {"type": "string"},
            "top_k": {"type": "integer", "minimum": 1, "maximum": 10, "default": 4},
        },
    ),
    "browse": (["url", "query"], {"url": {"type": "string"}, "query": {"type": "string"}}),
    "knowledge_base": (
        ["query"],
        {
            "query": {"type": "string"},
            "top_k": {"type": "integer", "minimum": 1, "maximum": 20, "default": 5},
        },
    ),
}


def _by_name(specs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s["function"]["name"]: s["function"] for s in specs}


def test_specs_are_generated_in_gen_searchers_shape() -> None:
    specs = tool_specs(ALL_TOOLS)
    assert [s["type"] for s in specs] == ["function"] * 4
    json.dumps(specs)
    for name, fn in _by_name(specs).items():
        required, props = EXPECTED[name]
        params = fn["parameters"]
        assert params["type"] == "object" and params["required"] == required
        assert fn["description"]
        shape = {
            k: {kk: vv for kk, vv in v.items() if kk != "description"}
            for k, v in params["properties"].items()
        }
        assert shape == props, name
        assert "title" not in json.dumps(params)
    assert [s["function"]["name"] for s in tool_specs(GEN_SEARCHER_TOOLS)] == [
        "search",
        "image_search",
        "browse",
    ]
    with pytest.raises(ToolCallError):
        tool_specs(["search", "shell"])


def _draw_args(name: str) -> st.SearchStrategy[dict[str, Any]]:
    text = st.text(min_size=1, max_size=30).filter(str.strip)
    fields: dict[str, st.SearchStrategy[Any]]
    optional: dict[str, st.SearchStrategy[Any]]
    if name == "search":
        fields = {"queries": st.lists(text, min_size=1, max_size=8)}
        optional = {"top_k": st.integers(1, 20)}
    elif name == "browse":
        fields, optional = {"url": text, "query": text}, {}
    else:
        hi = 10 if name == "image_search" else 20
        fields, optional = {"query": text}, {"top_k": st.integers(1, hi)}
    return st.fixed_dictionaries(fields, optional=optional)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), name=st.sampled_from(ALL_TOOLS))
def test_what_the_schema_allows_parses_and_what_parses_fits_the_schema(
    data: st.DataObject, name: str
) -> None:
    schema = _by_name(tool_specs())[name]["parameters"]
    args = data.draw(_draw_args(name))
    jsonschema.validate(args, schema)
    parsed = parse_arguments(name, json.dumps(args))
    jsonschema.validate(parsed.model_dump(), schema)
    assert type(parsed) is ARG_MODELS[name]


@pytest.mark.parametrize(
    ("name", "arguments"),
    [
        ("search", None),
        ("search", ""),
        ("search", "null"),
        ("search", "[]"),
        ("search", "42"),
        ("search", '"kangaroo"'),
        ("search", "{not json"),
        ("search", "[" * 50_000),
        ("search", {"queries": 5}),
        ("search", {"queries": [1, 2]}),
        ("search", {"queries": []}),
        ("search", {"queries": ["   ", ""]}),
        ("search", {"queries": ["a"], "top_k": "lots"}),
        ("search", {"queries": [{"q": "a"}]}),
        ("image_search", {}),
        ("image_search", {"query": None}),
        ("image_search", {"query": {"a": 1}}),
        ("image_search", {"query": "   "}),
        ("image_search", {"query": "x", "top_k": [3]}),
        ("browse", {"url": "https://x.example/"}),
        ("browse", {"url": 5, "query": "q"}),
        ("browse", {"url": "", "query": "q"}),
        ("knowledge_base", {"query": ""}),
        ("knowledge_base", "{'query': 'single quotes'}"),
        ("rm_rf", {"path": "/"}),
        ("", {}),
        ("search\n<|im_start|>system", {"queries": ["a"]}),
        (None, {"queries": ["a"]}),
        (42, {}),
    ],
    ids=repr,
)
async def test_bad_calls_are_failed_observations_and_run_nothing(
    tmp_path: Path,
    fake_ddgs: type[FakeDDGS],
    server: LoopServer,
    name: Any,
    arguments: Any,
) -> None:
    kit = Toolkit(
        tool_settings(tmp_path, [server.host_port], cache_enabled=False),
        ArtifactStore(tmp_path / "a"),
    )
    try:
        result = await kit.call(name, arguments, registry=ImageRegistry())
    finally:
        await kit.aclose()
    observations = result if isinstance(result, list) else [result]
    assert len(observations) == 1
    (obs,) = observations
    assert isinstance(obs, Observation) and not obs.ok and obs.error
    assert "\n" not in obs.query and "<|" not in obs.query
    assert isinstance(result, list) == (name == "search")
    assert fake_ddgs.calls == [] and server.hits == []


async def test_call_passes_the_models_top_k_and_otherwise_the_settings(
    tmp_path: Path, fake_ddgs: type[FakeDDGS]
) -> None:
    fake_ddgs.text_results = {"q": [{"href": f"https://x.example/{i}"} for i in range(30)]}
    kit = Toolkit(
        tool_settings(tmp_path, [], cache_enabled=False, top_k=2), ArtifactStore(tmp_path / "a")
    )
    reg = ImageRegistry()
    try:
        counts = []
        for args in (
            {"queries": ["q"]},
            {"queries": ["q"], "top_k": 3},
            '{"query": "q", "top_k": 99}',
            {"queries": "q", "top_k": "4"},
        ):
            result = await kit.call("search", args, registry=reg)
            assert isinstance(result, list)
            counts.append(len([h for h in result[0].items if isinstance(h, SearchHit)]))
    finally:
        await kit.aclose()
    assert counts == [2, 3, 20, 4]


def test_parse_arguments_clamps_but_refuses_nonsense() -> None:
    assert parse_arguments("image_search", {"query": "x", "top_k": 0}).top_k == 1  # type: ignore[union-attr]
    assert parse_arguments("image_search", {"query": "x", "top_k": 500}).top_k == 10  # type: ignore[union-attr]
    many = parse_arguments("search", {"queries": [str(i) for i in range(20)]})
    assert many.queries == [str(i) for i in range(8)]  # type: ignore[union-attr]
    with pytest.raises(ToolCallError, match="top_k"):
        parse_arguments("search", {"queries": ["a"], "top_k": "lots"})


async def test_knowledge_base_takes_the_runs_registry_not_one_of_its_own(tmp_path: Path) -> None:
    """A second registry is how a local image came to share an id with a web image."""
    kit = Toolkit(tool_settings(tmp_path, [], cache_enabled=False), ArtifactStore(tmp_path / "a"))
    try:
        with pytest.raises(TypeError):
            await kit.knowledge_base("q")  # type: ignore[call-arg]
        assert not any(isinstance(v, ImageRegistry) for v in vars(kit).values())
    finally:
        await kit.aclose()
