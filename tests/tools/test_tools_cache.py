"""Tool-result caching: normalized keys, TTL on disk and in a real (hermetic) Redis."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from core.artifacts import ArtifactStore
from tests.support.redis_server import free_port
from tests.tools.conftest import FakeDDGS, tool_settings
from tools.cache import CacheError, DiskCache, RedisCache, cache_key, make_cache
from tools.toolkit import Toolkit


def test_keys_normalize_queries_but_not_parameters() -> None:
    assert cache_key("search", "Red  Kangaroo ", k=5) == cache_key("search", "red kangaroo", k=5)
    assert cache_key("search", "ｒｅｄ kangaroo", k=5) == cache_key("search", "red kangaroo", k=5)
    assert cache_key("search", "red kangaroo", k=5) != cache_key("search", "red kangaroo", k=6)
    assert cache_key("search", "x", k=5) != cache_key("image_search", "x", k=5)


async def test_disk_cache_ttl_and_corruption(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = DiskCache(tmp_path / "c")
    await cache.set("ab" * 32, {"v": 1}, ttl_s=60)
    assert await cache.get("ab" * 32) == {"v": 1}
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 61)
    assert await cache.get("ab" * 32) is None
    monkeypatch.undo()
    path = tmp_path / "c" / "cd" / f"{'cd' * 32}.json"
    path.parent.mkdir(parents=True)
    path.write_text("{torn")
    assert await cache.get("cd" * 32) is None and not path.exists()


def test_make_cache_follows_settings(tmp_path: Path) -> None:
    assert make_cache(tool_settings(tmp_path, [], cache_enabled=False)) is None
    assert isinstance(make_cache(tool_settings(tmp_path, [])), DiskCache)
    assert isinstance(
        make_cache(tool_settings(tmp_path, [], cache_redis_url="redis://127.0.0.1:1/0")),
        RedisCache,
    )


@pytest.mark.redis
async def test_redis_cache_ttl(redis_url: str) -> None:
    cache = RedisCache(redis_url)
    try:
        await cache.set("k1", {"v": [1, 2]}, ttl_s=1)
        assert await cache.get("k1") == {"v": [1, 2]}
        ttl = await cache._client.ttl(cache.prefix + "k1")
        assert 0 < ttl <= 1
        time.sleep(1.2)
        assert await cache.get("k1") is None
    finally:
        await cache.aclose()


@pytest.mark.redis
async def test_toolkit_with_redis_cache(
    tmp_path: Path, redis_url: str, fake_ddgs: type[FakeDDGS]
) -> None:
    fake_ddgs.text_results = {"q": [{"title": "t", "href": "https://x.example/"}]}
    settings = tool_settings(tmp_path, [], cache_redis_url=redis_url)
    kits = [Toolkit(settings, ArtifactStore(tmp_path / "a")) for _ in range(2)]
    try:
        (a,) = await kits[0].search(["q"])
        (b,) = await kits[1].search(["Q"])  # another process would share it the same way
    finally:
        for kit in kits:
            await kit.aclose()
    assert a.ok and not a.cached and b.cached
    assert fake_ddgs.calls == [("text", "q")]


async def test_unreachable_redis_degrades_to_a_note(
    tmp_path: Path, fake_ddgs: type[FakeDDGS]
) -> None:
    fake_ddgs.text_results = {"q": [{"title": "t", "href": "https://x.example/"}]}
    settings = tool_settings(tmp_path, [], cache_redis_url=f"redis://127.0.0.1:{free_port()}/0")
    kit = Toolkit(settings, ArtifactStore(tmp_path / "a"))
    try:
        (obs,) = await kit.search(["q"])
    finally:
        await kit.aclose()
    assert obs.ok
    assert any("cache read failed" in n for n in obs.notes)
    assert any("cache write failed" in n for n in obs.notes)
    with pytest.raises(CacheError):
        bad = RedisCache(f"redis://127.0.0.1:{free_port()}/0")
        try:
            await bad.get("x")
        finally:
            await bad.aclose()
