"""Tool-result caching: the same query twice within the TTL costs one provider call.

Keys come from the tool name, the normalized query and every argument that changes the
answer, so "Red  Kangaroo" and "red kangaroo" share an entry. Only successful observations are
stored. Redis when `cache_redis_url` is set (shared by every process), a folder otherwise.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import tempfile
import time
import unicodedata
from pathlib import Path
from typing import Any, Protocol

from tools.settings import ToolSettings


def normalize_query(query: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", query).casefold().split())


def cache_key(tool: str, query: str, **params: object) -> str:
    payload = json.dumps(
        {"tool": tool, "q": normalize_query(query), **params},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


class CacheError(RuntimeError):
    """The cache backend failed (Redis down, disk full); the message says which and where."""


class ToolCache(Protocol):
    async def get(self, key: str) -> dict[str, Any] | None: ...

    async def set(self, key: str, value: dict[str, Any], ttl_s: int) -> None: ...

    async def aclose(self) -> None: ...


class DiskCache:
    """One JSON file per key under `root`, with its expiry time inside."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def _get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError):
            path.unlink(missing_ok=True)  # a torn or foreign file is a miss, and goes away
            return None
        if not isinstance(record, dict) or record.get("expires", 0) < time.time():
            path.unlink(missing_ok=True)
            return None
        value = record.get("value")
        return value if isinstance(value, dict) else None

    def _set(self, key: str, value: dict[str, Any], ttl_s: int) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "w") as f:
                json.dump({"expires": time.time() + ttl_s, "value": value}, f)
            os.replace(tmp, path)
        except OSError as exc:
            raise CacheError(f"cannot write tool cache file {path}: {exc}") from exc

    async def get(self, key: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self._get, key)

    async def set(self, key: str, value: dict[str, Any], ttl_s: int) -> None:
        await asyncio.to_thread(self._set, key, value, ttl_s)

    async def aclose(self) -> None:
        return None


class RedisCache:
    """Entries under `prefix` with a native Redis TTL (EX), so expiry needs no sweeper."""

    def __init__(self, url: str, prefix: str = "groundwork:toolcache:") -> None:
        import redis.asyncio as aioredis

        self.url = url
        self.prefix = prefix
        self._client = aioredis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=3)

    async def get(self, key: str) -> dict[str, Any] | None:
        import redis.exceptions as rx

        try:
            raw = await self._client.get(self.prefix + key)
        except rx.RedisError as exc:
            raise CacheError(f"tool cache at {self.url}: {exc}") from exc
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, dict) else None

    async def set(self, key: str, value: dict[str, Any], ttl_s: int) -> None:
        import redis.exceptions as rx

        try:
            await self._client.set(self.prefix + key, json.dumps(value), ex=ttl_s)
        except rx.RedisError as exc:
            raise CacheError(f"tool cache at {self.url}: {exc}") from exc

    async def aclose(self) -> None:
        await self._client.aclose()


def make_cache(settings: ToolSettings) -> ToolCache | None:
    if not settings.cache_enabled:
        return None
    if settings.cache_redis_url:
        return RedisCache(settings.cache_redis_url)
    return DiskCache(settings.cache_dir)
