"""Tool-result caching: the same query twice within the TTL costs one provider call.

Keys come from the tool name, the normalized query and every argument that changes the
answer, so "Red  Kangaroo" and "red kangaroo" share an entry. Only successful observations are
stored. Redis when `cache_redis_url` is set (shared by every process), a folder otherwise.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
import time
import unicodedata
from pathlib import Path
from typing import Any, Protocol

from core.errors import GroundworkError
from core.files import atomic_write
from tools.settings import ToolSettings

log = logging.getLogger(__name__)


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


class CacheError(GroundworkError, RuntimeError):
    """The cache backend failed (Redis down, disk full); the message says which and where."""


def _decode_record(raw: bytes | str) -> tuple[float, dict[str, Any]] | None:
    """(expires, value) of a stored record, or None for anything else: bytes that are not
    UTF-8, text that is not JSON (or nests past the stack), or JSON of the wrong shape."""
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError included
        return None
    if not isinstance(record, dict):
        return None
    expires, value = record.get("expires"), record.get("value")
    if isinstance(expires, bool) or not isinstance(expires, int | float):
        return None
    if not isinstance(value, dict):
        return None
    return float(expires), value


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
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:  # a folder in its place, no permission, an I/O error
            self._drop(path, f"unreadable ({exc.strerror or exc})")
            return None
        record = _decode_record(raw)
        if record is None:
            self._drop(path, "not a cache record (bad encoding, JSON or fields)")
            return None
        expires, value = record
        if expires < time.time():
            self._drop(path, None)
            return None
        return value

    @staticmethod
    def _drop(path: Path, why: str | None) -> None:
        """A torn, foreign or poisoned entry is a miss and goes away, so the refetched result
        can take its place; if it cannot be removed either, the write will say so."""
        if why:
            log.warning("tool cache entry %s dropped: %s", path, why)
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("tool cache entry %s could not be removed: %s", path, exc)

    def _set(self, key: str, value: dict[str, Any], ttl_s: int) -> None:
        path = self._path(key)
        data = json.dumps({"expires": time.time() + ttl_s, "value": value}).encode()
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)  # a folder squatting on the entry's name
            atomic_write(path, data, durable=False)  # a lost cache entry is only refetched
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

        name = self.prefix + key
        try:
            raw = await self._client.get(name)
        except rx.ResponseError as exc:  # WRONGTYPE: another kind of value under our key
            await self._drop(name, str(exc))
            return None
        except rx.RedisError as exc:
            raise CacheError(f"tool cache at {self.url}: {exc}") from exc
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested past the stack
            value = None
        if not isinstance(value, dict):
            await self._drop(name, "not a JSON object")
            return None
        return value

    async def _drop(self, name: str, why: str) -> None:
        """A poisoned entry is a miss and goes away (the refetched result replaces it)."""
        import redis.exceptions as rx

        log.warning("tool cache entry %s at %s dropped: %s", name, self.url, why)
        try:
            await self._client.delete(name)
        except rx.RedisError as exc:
            raise CacheError(f"tool cache at {self.url}: {exc}") from exc

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
