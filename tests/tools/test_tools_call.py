"""One source of truth for tool arguments (issue 10.2): the pydantic models generate the
OpenAI tool schemas AND validate what a model sends; `Toolkit.call` never raises for it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from core.artifacts import ArtifactStore
from tests.tools.conftest import FakeDDGS, LoopServer, tool_settings
from tools.observations import ImageRegistry, Observation, SearchHit
from tools.registry import (
    GEN_SEARCHER_TOOLS,
    TOOLS,
    ToolSpec,
    parse_arguments,
    tool_specs,
)
from tools.schemas import ImageSearchArgs, SearchArgs, ToolCallError
from tools.toolkit import Toolkit

jsonschema = pytest.importorskip("jsonschema")

# Gen-Searcher's tool shapes (its agent's schema), plus our knowledge_base: names, types,
# required, bounds. Only these are pinned; any other registered tool is held to the generic
# invariants below, so adding a tool to tools.registry.TOOLS needs no edit here (issue 24).
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


def _check_any_tool(spec: dict[str, Any]) -> None:
    """What every registered tool's schema must be, whatever the tool."""
    assert spec["type"] == "function"
    fn = spec["function"]
    assert isinstance(fn["name"], str) and fn["name"] and fn["description"], fn["name"]
    params = fn["parameters"]
    jsonschema.Draft202012Validator.check_schema(params)
    assert params["type"] == "object", fn["name"]
    assert set(params.get("required", [])) <= set(params.get("properties", {})), fn["name"]
    assert "title" not in json.dumps(params), fn["name"]
    json.dumps(spec)  # serializable as sent to an OpenAI-compatible server


def test_specs_are_generated_in_gen_searchers_shape() -> None:
    specs = tool_specs()
    assert [s["function"]["name"] for s in specs] == list(TOOLS)
    for spec in specs:
        _check_any_tool(spec)
    by_name = _by_name(specs)
    for name, (required, props) in EXPECTED.items():
        params = by_name[name]["parameters"]
        assert params["required"] == required, name
        shape = {
            k: {kk: vv for kk, vv in v.items() if kk != "description"}
            for k, v in params["properties"].items()
        }
        assert shape == props, name
    assert [s["function"]["name"] for s in tool_specs(GEN_SEARCHER_TOOLS)] == [
        "search",
        "image_search",
        "browse",
    ]
    with pytest.raises(ToolCallError):
        tool_specs(["search", "shell"])


_TEXT = st.text(min_size=1, max_size=30).filter(str.strip)


def _from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values a JSON schema allows (the subset pydantic generates for tool arguments)."""
    kind = schema.get("type")
    if kind == "string":
        return _TEXT
    if kind == "integer":
        return st.integers(schema.get("minimum", -1000), schema.get("maximum", 1000))
    if kind == "number":
        lo, hi = schema.get("minimum", -1e6), schema.get("maximum", 1e6)
        return st.floats(lo, hi, allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "array":
        return st.lists(
            _from_schema(schema.get("items", {"type": "string"})),
            min_size=schema.get("minItems", 0),
            max_size=schema.get("maxItems", 5),
        )
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    return st.none()


def _draw_args(name: str, schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    fields: dict[str, st.SearchStrategy[Any]]
    optional: dict[str, st.SearchStrategy[Any]]
    if name == "search":
        fields = {"queries": st.lists(_TEXT, min_size=1, max_size=8)}
        optional = {"top_k": st.integers(1, 20)}
    elif name == "browse":
        fields, optional = {"url": _TEXT, "query": _TEXT}, {}
    elif name in EXPECTED:
        hi = 10 if name == "image_search" else 20
        fields, optional = {"query": _TEXT}, {"top_k": st.integers(1, hi)}
    else:
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        fields = {k: _from_schema(v) for k, v in props.items() if k in required}
        optional = {k: _from_schema(v) for k, v in props.items() if k not in required}
    return st.fixed_dictionaries(fields, optional=optional)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_what_the_schema_allows_parses_and_what_parses_fits_the_schema(
    data: st.DataObject,
) -> None:
    name = data.draw(st.sampled_from(list(TOOLS)), label="tool")
    schema = _by_name(tool_specs())[name]["parameters"]
    args = data.draw(_draw_args(name, schema), label="arguments")
    jsonschema.validate(args, schema)
    if name in EXPECTED:
        parsed = parse_arguments(name, json.dumps(args))
    else:
        # A tool we know nothing of may refuse more than its schema says (a validator); what
        # it accepts must still fit the schema and survive a round trip.
        try:
            parsed = parse_arguments(name, json.dumps(args))
        except ToolCallError:
            return
    dumped = parsed.model_dump()
    jsonschema.validate(dumped, schema)
    assert type(parsed) is TOOLS[name].args
    assert parse_arguments(name, json.dumps(dumped)) == parsed


class _EchoArgs(BaseModel):
    """Repeat some text (a stand-in for a tool added after these tests were written)."""

    text: str = Field(min_length=1, description="What to repeat.")
    times: int = Field(default=1, ge=1, le=3)
    loud: bool = False


async def _echo(tk: Any, a: _EchoArgs, reg: ImageRegistry) -> Observation:
    return Observation(tool="echo", query=a.text, ok=True)


def test_adding_a_tool_needs_no_test_edit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 24: the tests above pin Gen-Searcher's shapes, not the whole tool set."""
    echo = ToolSpec(
        name="echo",
        args=_EchoArgs,
        run=_echo,
        dedupe_key=lambda a: [a.text],
        label=lambda a: a.text,
    )
    monkeypatch.setitem(TOOLS, "echo", echo)
    assert "echo" in _by_name(tool_specs())
    test_specs_are_generated_in_gen_searchers_shape()
    test_what_the_schema_allows_parses_and_what_parses_fits_the_schema()
    from tests.tools.test_tools_searxng_schemas import test_schemas_match_gen_searcher_shape

    test_schemas_match_gen_searcher_shape()


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
    low = parse_arguments("image_search", {"query": "x", "top_k": 0})
    high = parse_arguments("image_search", {"query": "x", "top_k": 500})
    assert isinstance(low, ImageSearchArgs) and isinstance(high, ImageSearchArgs)
    assert (low.top_k, high.top_k) == (1, 10)
    many = parse_arguments("search", {"queries": [str(i) for i in range(20)]})
    assert isinstance(many, SearchArgs) and many.queries == [str(i) for i in range(8)]
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
