"""The Toolkit against a fake ddgs and real loopback servers: normalization, failures as
observations, image download/verify/dedupe/store, stable IMG ids, caching."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import ddgs.exceptions as dx
import pytest

from core.artifacts import ArtifactStore
from tests.tools.conftest import FakeDDGS, LoopServer, png, tool_settings
from tools.cache import DiskCache
from tools.observations import ImageHit, ImageRegistry, Passage, SearchHit
from tools.toolkit import Toolkit


def make_kit(tmp_path: Path, store: ArtifactStore, allow: list[str], **kw: object) -> Toolkit:
    return Toolkit(tool_settings(tmp_path, allow, **kw), store)


async def test_search_normalizes_key_drift_and_keeps_query_order(
    tmp_path: Path, store: ArtifactStore, fake_ddgs: type[FakeDDGS]
) -> None:
    fake_ddgs.text_results = {
        "a": [{"title": "A", "href": "https://a.example/1", "body": "alpha"}],
        "b": [{"title": "B", "link": "https://b.example/1", "snippet": "beta"}],
        "c": [{"title": "C", "url": "https://c.example/1", "content": "gamma"}, {"title": "x"}],
    }
    kit = make_kit(tmp_path, store, [], cache_enabled=False)
    try:
        obs = await kit.search(["a", "b", "c"])
    finally:
        await kit.aclose()
    assert [o.query for o in obs] == ["a", "b", "c"]
    assert all(o.ok and o.tool == "search" for o in obs)
    urls = [[h.url for h in o.items if isinstance(h, SearchHit)] for o in obs]
    assert urls == [["https://a.example/1"], ["https://b.example/1"], ["https://c.example/1"]]
    assert [o.items[0].snippet for o in obs] == ["alpha", "beta", "gamma"]  # type: ignore[union-attr]


async def test_search_queries_run_concurrently(
    tmp_path: Path, store: ArtifactStore, fake_ddgs: type[FakeDDGS]
) -> None:
    fake_ddgs.delay_s = 0.3
    kit = make_kit(tmp_path, store, [], cache_enabled=False)
    try:
        t0 = time.perf_counter()
        obs = await kit.search([f"q{i}" for i in range(4)])
        wall = time.perf_counter() - t0
    finally:
        await kit.aclose()
    assert all(o.ok for o in obs)
    assert wall < 0.9, f"4 x 0.3 s calls took {wall:.2f}s: not concurrent"


async def test_offline_is_a_fast_failure_observation(
    tmp_path: Path, store: ArtifactStore, fake_ddgs: type[FakeDDGS]
) -> None:
    fake_ddgs.fail = [
        dx.DDGSException("DNSError: error sending request > error resolving DNS > no records")
    ] * 5
    kit = make_kit(tmp_path, store, [], cache_enabled=False)
    try:
        t0 = time.perf_counter()
        (obs,) = await kit.search(["kangaroo"])
        elapsed = time.perf_counter() - t0
    finally:
        await kit.aclose()
    assert not obs.ok
    assert obs.error and obs.error.startswith("web search disabled/unavailable")
    assert "offline" in obs.error
    assert len(fake_ddgs.calls) == 1, "offline must not be retried"
    assert elapsed < 1.0


async def test_provider_none_and_unknown_config(
    tmp_path: Path, store: ArtifactStore, fake_ddgs: type[FakeDDGS]
) -> None:
    kit = make_kit(tmp_path, store, [], text_provider="none", image_provider="searxng")
    try:
        (obs,) = await kit.search(["x"])
        img = await kit.image_search("x", registry=ImageRegistry())
    finally:
        await kit.aclose()
    assert not obs.ok and "disabled/unavailable" in (obs.error or "")
    assert not img.ok and "searxng_url" in (img.error or "")
    assert fake_ddgs.calls == []


async def test_rate_limit_is_retried_with_backoff(
    tmp_path: Path, store: ArtifactStore, fake_ddgs: type[FakeDDGS]
) -> None:
    fake_ddgs.fail = [dx.RatelimitException("202 Ratelimit")]
    fake_ddgs.text_results = {"q": [{"title": "t", "href": "https://x.example/"}]}
    kit = make_kit(tmp_path, store, [], cache_enabled=False)
    try:
        (obs,) = await kit.search(["q"])
    finally:
        await kit.aclose()
    assert obs.ok and len(fake_ddgs.calls) == 2


async def test_persistent_errors_give_up_after_bounded_attempts(
    tmp_path: Path, store: ArtifactStore, fake_ddgs: type[FakeDDGS]
) -> None:
    fake_ddgs.fail = [dx.TimeoutException("timed out")] * 10
    kit = make_kit(tmp_path, store, [], cache_enabled=False, retry_attempts=3)
    try:
        (obs,) = await kit.search(["q"])
    finally:
        await kit.aclose()
    assert not obs.ok and "after 3 attempt(s)" in (obs.error or "")
    assert len(fake_ddgs.calls) == 3


async def test_slow_provider_hits_the_call_timeout(
    tmp_path: Path, store: ArtifactStore, fake_ddgs: type[FakeDDGS]
) -> None:
    fake_ddgs.delay_s = 2.0
    kit = make_kit(tmp_path, store, [], cache_enabled=False, timeout_s=0.3)
    try:
        t0 = time.perf_counter()
        (obs,) = await kit.search(["q"])
        assert time.perf_counter() - t0 < 1.5
    finally:
        await kit.aclose()
    assert not obs.ok and "timed out" in (obs.error or "")


async def test_image_search_downloads_verifies_dedupes_and_stores(
    tmp_path: Path, store: ArtifactStore, fake_ddgs: type[FakeDDGS], server: LoopServer
) -> None:
    red = png((200, 30, 30))
    blue = png((20, 40, 220), size=(80, 60))
    server.add("/red.png", "image/png", red)
    server.add("/red-copy.png", "image/png", red)  # byte-identical duplicate
    server.add("/red.jpg", "image/jpeg", png((200, 30, 30), size=(128, 96), fmt="JPEG"))  # near
    server.add("/blue.png", "image/png", blue)
    server.add("/fake.png", "image/png", b"<!doctype html><html>not an image</html>")
    fake_ddgs.image_results = {
        "kangaroo": [
            {"title": "red", "image": server.url + "/red.png", "url": "https://page/1"},
            {"title": "red copy", "image": server.url + "/red-copy.png", "url": "https://p/2"},
            {"title": "red jpg", "image": server.url + "/red.jpg", "url": "https://p/3"},
            {"title": "html", "image": server.url + "/fake.png", "url": "https://p/4"},
            {"title": "blue", "image": server.url + "/blue.png", "url": "https://p/5"},
            {"title": "gone", "image": server.url + "/404.png", "url": "https://p/6"},
        ]
    }
    kit = make_kit(tmp_path, store, [server.host_port], cache_enabled=False)
    registry = ImageRegistry()
    try:
        obs = await kit.image_search("kangaroo", top_k=4, registry=registry)
        again = await kit.image_search("kangaroo", top_k=4, registry=registry)
    finally:
        await kit.aclose()
    assert obs.ok, obs.error
    hits = [h for h in obs.items if isinstance(h, ImageHit)]
    assert [h.title for h in hits] == ["red", "blue"]
    assert [h.img_id for h in hits] == ["IMG_001", "IMG_002"]
    assert [h.img_id for h in again.items if isinstance(h, ImageHit)] == ["IMG_001", "IMG_002"]
    assert (hits[1].width, hits[1].height) == (80, 60)
    for h in hits:
        assert store.get_bytes(h.sha256) in (red, blue)
        assert h.thumbnail_sha256 and store.exists(h.thumbnail_sha256)
    assert any("near-duplicate" in n for n in obs.notes)
    assert any("fake.png" in n and "not PNG/JPEG" in n for n in obs.notes)


async def test_image_search_all_failed_is_not_ok(
    tmp_path: Path, store: ArtifactStore, fake_ddgs: type[FakeDDGS], server: LoopServer
) -> None:
    fake_ddgs.image_results = {"q": [{"image": server.url + "/missing.png"}]}
    kit = make_kit(tmp_path, store, [server.host_port], cache_enabled=False)
    try:
        obs = await kit.image_search("q", registry=ImageRegistry())
    finally:
        await kit.aclose()
    assert not obs.ok and "HTTP 404" in (obs.error or "")


async def test_image_downloads_respect_the_allow_list(
    tmp_path: Path, store: ArtifactStore, fake_ddgs: type[FakeDDGS], server: LoopServer
) -> None:
    server.add("/a.png", "image/png", png((1, 2, 3)))
    fake_ddgs.image_results = {"q": [{"image": server.url + "/a.png"}]}
    kit = make_kit(tmp_path, store, [], cache_enabled=False)  # loopback not allowed
    try:
        obs = await kit.image_search("q", registry=ImageRegistry())
    finally:
        await kit.aclose()
    assert not obs.ok and "loopback" in (obs.error or "")
    assert server.hits == []


async def test_cache_hits_are_marked_and_skip_the_provider(
    tmp_path: Path, store: ArtifactStore, fake_ddgs: type[FakeDDGS], server: LoopServer
) -> None:
    server.add("/a.png", "image/png", png((10, 200, 10)))
    fake_ddgs.text_results = {"red kangaroo": [{"title": "t", "href": "https://x.example/"}]}
    fake_ddgs.image_results = {"red kangaroo": [{"image": server.url + "/a.png"}]}
    cache = DiskCache(tmp_path / "cache")
    kit = Toolkit(tool_settings(tmp_path, [server.host_port]), store, cache=cache)
    try:
        (first,) = await kit.search(["red kangaroo"])
        (second,) = await kit.search(["  Red   KANGAROO "])
        img1 = await kit.image_search("red kangaroo", registry=ImageRegistry())
        reg2 = ImageRegistry()
        reg2.assign("0" * 64)  # another run, numbering already at IMG_001
        img2 = await kit.image_search("red kangaroo", registry=reg2)
    finally:
        await kit.aclose()
    assert not first.cached and second.cached and second.items == first.items
    assert not img1.cached and img2.cached
    assert img2.items[0].img_id == "IMG_002"  # type: ignore[union-attr]
    assert fake_ddgs.calls == [("text", "red kangaroo"), ("images", "red kangaroo")]


async def test_browse_returns_relevant_passages(
    tmp_path: Path, store: ArtifactStore, server: LoopServer
) -> None:
    html = (
        "<html><head><title>Kangaroos</title></head><body><nav>Home | About</nav><article>"
        "<p>The red kangaroo is the largest of all kangaroos and the largest terrestrial mammal "
        "native to Australia. Males have short red-brown fur.</p>"
        "<p>Tea is a beverage made from the leaves of the tea plant, enjoyed worldwide in many "
        "forms and traditions across Asia and Europe.</p></article></body></html>"
    )
    url = server.add("/article", "text/html; charset=utf-8", html.encode())
    kit = make_kit(tmp_path, store, [server.host_port], cache_enabled=False)
    try:
        obs = await kit.browse(url, "red kangaroo fur colour")
    finally:
        await kit.aclose()
    assert obs.ok, obs.error
    first = obs.items[0]
    assert isinstance(first, Passage) and "red-brown fur" in first.text
    assert "Home | About" not in " ".join(p.text for p in obs.items if isinstance(p, Passage))


async def test_knowledge_base_without_retrieval_settings_is_an_observation(
    tmp_path: Path, store: ArtifactStore
) -> None:
    kit = make_kit(tmp_path, store, [], cache_enabled=False)
    try:
        obs = await kit.knowledge_base("anything", registry=ImageRegistry())
    finally:
        await kit.aclose()
    assert not obs.ok and "not configured" in (obs.error or "")


async def test_many_concurrent_calls_do_not_leak_exceptions(
    tmp_path: Path, store: ArtifactStore, fake_ddgs: type[FakeDDGS]
) -> None:
    fake_ddgs.fail = [dx.DDGSException("boom")] * 100
    kit = make_kit(tmp_path, store, [], cache_enabled=False, retry_attempts=1)
    try:
        results = await asyncio.gather(
            kit.search(["a", "b"]),
            kit.image_search("c", registry=ImageRegistry()),
            kit.browse("file:///etc/passwd", "root"),
            kit.browse("http://169.254.169.254/latest/meta-data/", "keys"),
        )
    finally:
        await kit.aclose()
    flat = [*results[0], results[1], results[2], results[3]]
    assert all(not o.ok and o.error for o in flat)
    assert "http/https" in (results[2].error or "")
    assert "metadata" in (results[3].error or "")


@pytest.mark.parametrize("bad", ["", "   "])
async def test_empty_queries(
    tmp_path: Path, store: ArtifactStore, fake_ddgs: type[FakeDDGS], bad: str
) -> None:
    kit = make_kit(tmp_path, store, [], cache_enabled=False)
    try:
        (obs,) = await kit.search([bad])
    finally:
        await kit.aclose()
    assert not obs.ok and fake_ddgs.calls == []


async def test_thumbnail_is_used_when_the_original_refuses(
    tmp_path: Path, store: ArtifactStore, fake_ddgs: type[FakeDDGS], server: LoopServer
) -> None:
    server.add("/orig.png", "text/html", b"hotlinking forbidden", status=403)
    thumb = server.add("/thumb.png", "image/png", png((90, 10, 200)))
    fake_ddgs.image_results = {"q": [{"image": server.url + "/orig.png", "thumbnail": thumb}]}
    kit = make_kit(tmp_path, store, [server.host_port], cache_enabled=False)
    try:
        obs = await kit.image_search("q", registry=ImageRegistry())
    finally:
        await kit.aclose()
    assert obs.ok and len(obs.items) == 1
    assert obs.items[0].url == thumb  # type: ignore[union-attr]


async def test_slow_downloads_are_abandoned_at_the_deadline_not_the_whole_call(
    tmp_path: Path, store: ArtifactStore, fake_ddgs: type[FakeDDGS], server: LoopServer
) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler

    release = threading.Event()

    def stuck(h: BaseHTTPRequestHandler) -> None:
        release.wait(5)

    server.custom("/stuck.png", stuck)
    fast = server.add("/fast.png", "image/png", png((10, 120, 60)))
    fake_ddgs.image_results = {"q": [{"image": server.url + "/stuck.png"}, {"image": fast}]}
    kit = make_kit(tmp_path, store, [server.host_port], cache_enabled=False, timeout_s=1.5)
    try:
        t0 = time.perf_counter()
        obs = await kit.image_search("q", registry=ImageRegistry())
        assert time.perf_counter() - t0 < 1.5
    finally:
        release.set()
        await kit.aclose()
    assert obs.ok and [h.url for h in obs.items] == [fast]  # type: ignore[union-attr]
    assert any("abandoned" in n for n in obs.notes)
