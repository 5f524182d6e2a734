"""The second provider (SearXNG JSON API on loopback) and the tool-calling schemas."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from core.artifacts import ArtifactStore
from tests.tools.conftest import FakeDDGS, LoopServer, png, tool_settings
from tools.observations import ImageHit, ImageRegistry, SearchHit
from tools.registry import GEN_SEARCHER_SCHEMAS, TOOL_SCHEMAS, tool_specs
from tools.toolkit import Toolkit


def _searx(server: LoopServer, image_host: LoopServer) -> None:
    image_host.add("/roo.png", "image/png", png((150, 70, 30)))

    def handler(h: BaseHTTPRequestHandler) -> None:
        q = h.path
        if "categories=images" in q:
            results = [
                {
                    "img_src": image_host.url + "/roo.png",
                    "url": "https://page.example/",
                    "title": "roo",
                    "resolution": "64 x 48",
                }
            ]
        else:
            results = [
                {"url": "https://a.example/", "title": "A", "content": "alpha"},
                {"title": "no url"},
            ]
        body = json.dumps({"query": "x", "results": results}).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    server.custom("/search", handler)


async def test_searxng_text_and_images(
    tmp_path: Path, server: LoopServer, other_server: LoopServer
) -> None:
    _searx(server, other_server)
    settings = tool_settings(
        tmp_path,
        [other_server.host_port],
        text_provider="searxng",
        image_provider="searxng",
        searxng_url=server.url,
        cache_enabled=False,
    )
    kit = Toolkit(settings, ArtifactStore(tmp_path / "a"))
    try:
        (text,) = await kit.search(["kangaroo"])
        images = await kit.image_search("kangaroo", registry=ImageRegistry())
    finally:
        await kit.aclose()
    assert text.ok and text.provider == "searxng"
    assert [h.url for h in text.items if isinstance(h, SearchHit)] == ["https://a.example/"]
    assert images.ok, images.error
    hit = images.items[0]
    assert isinstance(hit, ImageHit) and (hit.width, hit.height) == (64, 48)
    assert any("format=json" in p for p in server.hits)


async def test_searxng_host_is_allowed_but_its_links_are_not(
    tmp_path: Path, server: LoopServer, other_server: LoopServer
) -> None:
    _searx(server, other_server)
    settings = tool_settings(
        tmp_path, [], image_provider="searxng", searxng_url=server.url, cache_enabled=False
    )
    kit = Toolkit(settings, ArtifactStore(tmp_path / "a"))
    try:
        images = await kit.image_search("kangaroo", registry=ImageRegistry())
    finally:
        await kit.aclose()
    assert not images.ok and "loopback" in (images.error or "")
    assert other_server.hits == []


async def test_searxng_down_is_an_observation(tmp_path: Path, server: LoopServer) -> None:
    settings = tool_settings(
        tmp_path,
        [],
        text_provider="searxng",
        searxng_url=server.url + "/nowhere",
        cache_enabled=False,
        retry_attempts=2,
    )
    kit = Toolkit(settings, ArtifactStore(tmp_path / "a"))
    try:
        (obs,) = await kit.search(["q"])
    finally:
        await kit.aclose()
    assert not obs.ok and "HTTP 404" in (obs.error or "")


def test_schemas_match_gen_searcher_shape() -> None:
    """Gen-Searcher's three tools keep its names and shapes; other registered tools (ours, a
    plugin's) are allowed beside them, so adding one needs no edit here."""
    specs = tool_specs()
    by_name = {s["function"]["name"]: s["function"] for s in specs}
    assert {"search", "image_search", "browse", "knowledge_base"} <= set(by_name)
    assert by_name["search"]["parameters"]["required"] == ["queries"]
    assert by_name["search"]["parameters"]["properties"]["queries"]["type"] == "array"
    assert set(by_name["image_search"]["parameters"]["properties"]) == {"query", "top_k"}
    assert by_name["browse"]["parameters"]["required"] == ["url", "query"]
    assert [s["function"]["name"] for s in GEN_SEARCHER_SCHEMAS] == [
        "search",
        "image_search",
        "browse",
    ]
    assert [s["function"]["name"] for s in TOOL_SCHEMAS][:4] == list(by_name)[:4]
    json.dumps(specs)  # serializable as sent to an OpenAI-compatible server


async def test_toolkit_call_runs_model_tool_calls(
    tmp_path: Path, fake_ddgs: type[FakeDDGS]
) -> None:
    # Was `dispatch`, which raised ToolCallError; `Toolkit.call` answers a failed observation.
    fake_ddgs.text_results = {"a": [{"href": "https://a/"}], "b": [{"href": "https://b/"}]}
    kit = Toolkit(tool_settings(tmp_path, [], cache_enabled=False), ArtifactStore(tmp_path / "a"))
    reg = ImageRegistry()
    try:
        obs = await kit.call("search", '{"queries": ["a", "b"], "top_k": 3}', registry=reg)
        assert isinstance(obs, list)
        assert [o.query for o in obs] == ["a", "b"] and all(o.ok for o in obs)
        browse = await kit.call("browse", {"url": "ftp://x/", "query": "q"}, registry=reg)
        assert not isinstance(browse, list) and not browse.ok
        unknown = await kit.call("rm_rf", "{}", registry=reg)
        assert not isinstance(unknown, list) and not unknown.ok
        assert "unknown tool" in (unknown.error or "")
        bad = await kit.call("search", "{not json", registry=reg)
        assert isinstance(bad, list) and len(bad) == 1
        assert not bad[0].ok and "not JSON" in (bad[0].error or "")
    finally:
        await kit.aclose()
