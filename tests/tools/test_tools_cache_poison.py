"""A poisoned tool-cache entry is dropped and refetched, never fatal (issue 9): bytes that are
not UTF-8, text that is not JSON, JSON of the wrong shape, an observation that does not
validate or lies about its artifacts, a folder or an unreadable file where the entry should
be; on disk and in Redis."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from core.artifacts import ArtifactStore
from tests.tools.conftest import FakeDDGS, LoopServer, png, tool_settings
from tools.cache import DiskCache, RedisCache, cache_key
from tools.observations import ImageHit, ImageRegistry
from tools.toolkit import Toolkit

KEY = "ab" * 32

RAW_POISON: dict[str, bytes] = {
    "latin1": '{"expires": 9e99, "value": {"q": "caf\xe9"}}'.encode("latin-1"),
    "binary": b"\x00\xff\xfe\x89PNG\r\n",
    "torn": b'{"expires": 9e99, "val',
    "empty": b"",
    "list": b"[1, 2, 3]",
    "string": b'"hello"',
    "expires-string": b'{"expires": "tomorrow", "value": {}}',
    "expires-bool": b'{"expires": true, "value": {}}',
    "expires-missing": b'{"value": {"a": 1}}',
    "value-list": b'{"expires": 9e99, "value": [1]}',
    "value-missing": b'{"expires": 9e99}',
    "deep": b"[" * 100_000 + b"]" * 100_000,
}


def _entry(root: Path, key: str = KEY) -> Path:
    return root / key[:2] / f"{key}.json"


@pytest.mark.parametrize("name", RAW_POISON)
async def test_disk_poison_is_a_miss_and_is_removed(tmp_path: Path, name: str) -> None:
    cache = DiskCache(tmp_path / "c")
    path = _entry(tmp_path / "c")
    path.parent.mkdir(parents=True)
    path.write_bytes(RAW_POISON[name])
    assert await cache.get(KEY) is None
    assert not path.exists()
    await cache.set(KEY, {"v": 1}, ttl_s=60)
    assert await cache.get(KEY) == {"v": 1}


def _folder(path: Path) -> None:
    (path / "inner").mkdir(parents=True)
    (path / "inner" / "x").write_text("x")


def _self_loop(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(path.name)  # ELOOP on open: unreadable even for root


def _no_permission(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"expires": 9e99, "value": {"a": 1}}')
    path.chmod(0)


SPECIAL: dict[str, Callable[[Path], None]] = {
    "folder": _folder,
    "symlink-loop": _self_loop,
    "no-permission": _no_permission,
}


@pytest.mark.parametrize("name", SPECIAL)
async def test_disk_entry_that_cannot_be_read_is_replaced(tmp_path: Path, name: str) -> None:
    if name == "no-permission" and os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    cache = DiskCache(tmp_path / "c")
    path = _entry(tmp_path / "c")
    path.parent.mkdir(parents=True, exist_ok=True)
    SPECIAL[name](path)
    assert await cache.get(KEY) is None
    await cache.set(KEY, {"v": 2}, ttl_s=60)
    assert await cache.get(KEY) == {"v": 2}


async def test_disk_entry_in_an_unwritable_place_is_a_miss_not_a_crash(tmp_path: Path) -> None:
    """A folder squatting on the entry whose removal fails: still only a miss."""
    cache = DiskCache(tmp_path / "c")
    path = _entry(tmp_path / "c")
    _folder(path)
    cache._drop = lambda path, why: None  # type: ignore[method-assign]  # removal "fails"
    assert await cache.get(KEY) is None


OBS_POISON: dict[str, dict[str, Any]] = {
    "not-an-observation": {"hello": "world"},
    "bad-tool": {"tool": "rm_rf", "query": "q", "ok": True},
    "other-tool": {"tool": "browse", "query": "q", "ok": True, "items": []},
    "failure": {"tool": "search", "query": "q", "ok": False, "error": "x"},
    "bad-item": {"tool": "search", "query": "q", "ok": True, "items": [{"kind": "alien"}]},
    "wrong-types": {"tool": "search", "query": ["q"], "ok": "maybe", "items": "none"},
}


@pytest.mark.parametrize("name", OBS_POISON)
async def test_toolkit_refetches_over_a_poisoned_observation(
    tmp_path: Path, fake_ddgs: type[FakeDDGS], name: str
) -> None:
    fake_ddgs.text_results = {"q": [{"title": "t", "href": "https://x.example/"}]}
    settings = tool_settings(tmp_path, [])
    cache = DiskCache(settings.cache_dir)
    key = cache_key("search", "q", k=settings.top_k, p=settings.text_provider)
    await cache.set(key, OBS_POISON[name], ttl_s=60)
    kit = Toolkit(settings, ArtifactStore(tmp_path / "a"), cache=cache)
    try:
        (first,) = await kit.search(["q"])
        (second,) = await kit.search(["q"])
    finally:
        await kit.aclose()
    assert first.ok and not first.cached and first.items
    assert second.ok and second.cached  # the poisoned entry was overwritten
    assert fake_ddgs.calls == [("text", "q")]


@pytest.mark.parametrize("bad_sha", ["../../../../etc/passwd", "zz", "A" * 64, ""])
async def test_cached_image_hit_with_a_lying_hash_is_refetched(
    tmp_path: Path,
    fake_ddgs: type[FakeDDGS],
    server: LoopServer,
    bad_sha: str,
) -> None:
    server.add("/a.png", "image/png", png((10, 200, 10)))
    fake_ddgs.image_results = {"q": [{"image": server.url + "/a.png"}]}
    settings = tool_settings(tmp_path, [server.host_port])
    cache = DiskCache(settings.cache_dir)
    key = cache_key("image_search", "q", k=settings.max_images_per_query, p="ddgs", r="none")
    hit = ImageHit(img_id="IMG_009", sha256=bad_sha, thumbnail_sha256=bad_sha)
    poisoned = {"tool": "image_search", "query": "q", "ok": True, "items": [hit.model_dump()]}
    await cache.set(key, poisoned, ttl_s=60)
    kit = Toolkit(settings, ArtifactStore(tmp_path / "a"), cache=cache)
    try:
        obs = await kit.image_search("q", registry=ImageRegistry())
    finally:
        await kit.aclose()
    assert obs.ok and not obs.cached, obs.error
    assert [h.img_id for h in obs.items if isinstance(h, ImageHit)] == ["IMG_001"]


@pytest.mark.redis
@pytest.mark.parametrize("name", ["latin1", "binary", "torn", "list", "deep"])
async def test_redis_poison_is_a_miss_and_is_removed(redis_url: str, name: str) -> None:
    cache = RedisCache(redis_url, prefix=f"gw-test-poison-{name}:")
    try:
        await cache._client.set(cache.prefix + KEY, RAW_POISON[name])
        assert await cache.get(KEY) is None
        assert await cache._client.exists(cache.prefix + KEY) == 0
    finally:
        await cache.aclose()


@pytest.mark.redis
async def test_redis_key_of_another_type_is_a_miss_and_the_toolkit_refetches(
    tmp_path: Path, redis_url: str, fake_ddgs: type[FakeDDGS]
) -> None:
    fake_ddgs.text_results = {"q": [{"title": "t", "href": "https://x.example/"}]}
    settings = tool_settings(tmp_path, [], cache_redis_url=redis_url)
    cache = RedisCache(redis_url, prefix="gw-test-wrongtype:")
    key = cache_key("search", "q", k=settings.top_k, p=settings.text_provider)
    await cache._client.hset(cache.prefix + key, mapping={"a": "b"})  # WRONGTYPE for GET
    kit = Toolkit(settings, ArtifactStore(tmp_path / "a"), cache=cache)
    try:
        (first,) = await kit.search(["q"])
        (second,) = await kit.search(["q"])
    finally:
        await kit.aclose()
    assert first.ok and not first.cached
    assert second.ok and second.cached
