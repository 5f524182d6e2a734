"""Per-token request rate, per-client failed-auth rate, and unfinished-run limits.

Request rates use the `limits` library's moving window (a sorted log of hits per key, in Redis
so every server process behind a load balancer shares one budget per token). A fixed window,
which this module used to keep, lets a client spend its budget twice around a window boundary
(2x bursts); a moving window counts the last 60 s wherever they fall. Failed authentications
are limited per client address the same way, so a token cannot be guessed at request speed.

Unfinished runs are not a rate: they are a sorted set of the token's unfinished run ids scored
by deadline (one Lua script takes a slot atomically). The deadline makes the set heal itself: a
run whose server died without releasing its slot stops counting when it expires. The
in-memory variant has the same semantics for a single process without Redis.
"""

from __future__ import annotations

import math
import time
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError

from core.errors import GroundworkError

WINDOW_S = 60
CONCURRENCY_RETRY_S = 5


class LimitExceeded(GroundworkError):
    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(1, math.ceil(retry_after))


class LimiterUnavailable(GroundworkError):
    pass


class Limiter(Protocol):
    async def hit(self, owner: str) -> None:
        """Count one request; raise LimitExceeded past the per-minute budget."""

    async def check_auth(self, client: str) -> None:
        """Raise LimitExceeded when `client` (an address) spent its failed-auth budget."""

    async def auth_failed(self, client: str) -> None:
        """Count one failed authentication of `client`."""

    async def acquire(self, owner: str, run_id: str) -> None:
        """Take a run slot; raise LimitExceeded when the token has too many unfinished runs."""

    async def hold(self, owner: str, run_id: str) -> None:
        """Take a slot unconditionally (a run resumed after a restart already had one)."""

    async def release(self, owner: str, run_id: str) -> None: ...

    async def ping(self) -> None: ...

    async def aclose(self) -> None: ...


def redact(url: str) -> str:
    """The URL without a password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _rate_error(limit: int, retry_after: float) -> LimitExceeded:
    return LimitExceeded(
        f"rate limit of {limit} requests per minute reached for this token; "
        f"retry after {max(1, math.ceil(retry_after))} s",
        retry_after,
    )


def _auth_error(limit: int, retry_after: float) -> LimitExceeded:
    return LimitExceeded(
        f"more than {limit} requests with a missing or invalid token from this address in the "
        f"last minute; retry after {max(1, math.ceil(retry_after))} s with a valid token",
        retry_after,
    )


def _runs_error(limit: int) -> LimitExceeded:
    return LimitExceeded(
        f"this token already has {limit} unfinished runs (the limit); wait for one to finish "
        "or cancel one (DELETE /v1/runs/{id})",
        CONCURRENCY_RETRY_S,
    )


class _MovingWindows:
    """Request and failed-auth rates as moving windows on a `limits` storage."""

    def __init__(self, storage: Storage, *, per_minute: int, auth_per_minute: int) -> None:
        self.storage = storage
        self.strategy = MovingWindowRateLimiter(storage)
        self.per_minute = per_minute
        self.auth_per_minute = auth_per_minute
        self.requests: RateLimitItem = RateLimitItemPerMinute(per_minute)
        self.auth: RateLimitItem = RateLimitItemPerMinute(auth_per_minute)

    async def _unavailable(self, error: Exception) -> LimiterUnavailable:
        return LimiterUnavailable(f"the rate limiter failed: {error}")

    async def _guard(self, coro: Any) -> Any:
        try:
            return await coro
        except StorageError as e:
            raise await self._unavailable(e.storage_error) from e

    async def _retry_after(self, item: RateLimitItem, *ids: str) -> float:
        stats = await self._guard(self.strategy.get_window_stats(item, *ids))
        return max(1.0, float(stats.reset_time) - time.time())

    async def hit(self, owner: str) -> None:
        if not await self._guard(self.strategy.hit(self.requests, "requests", owner)):
            raise _rate_error(
                self.per_minute, await self._retry_after(self.requests, "requests", owner)
            )

    async def check_auth(self, client: str) -> None:
        if not await self._guard(self.strategy.test(self.auth, "auth-failures", client)):
            raise _auth_error(
                self.auth_per_minute, await self._retry_after(self.auth, "auth-failures", client)
            )

    async def auth_failed(self, client: str) -> None:
        await self._guard(self.strategy.hit(self.auth, "auth-failures", client))


# Drop expired slots, then add this run if there is room (or it already holds one).
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[4]) or ARGV[5] == '1'
   or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  return 1
end
return 0
"""


class RedisLimiter(_MovingWindows):
    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        per_minute: int,
        max_runs: int,
        run_ttl_s: float,
        auth_per_minute: int = 60,
        max_connections: int = 32,
    ) -> None:
        import redis.asyncio as aioredis

        self.url = url
        self.prefix = prefix
        self.max_runs = max_runs
        self.run_ttl_s = run_ttl_s
        # A blocking pool: a burst waits for a free connection (redis-py's default pool raises
        # "Too many connections" past 100, which would turn a burst of requests into 503s).
        # The rate windows (limits) and the run slots share it.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=10,
            decode_responses=True,
            socket_timeout=5,
            socket_connect_timeout=2,
            health_check_interval=15,
        )
        self.client: Any = aioredis.Redis(connection_pool=pool)
        # `connection_pool` is a documented option of limits' redis-py bridge; its signature
        # types options as scalars only
        shared: dict[str, Any] = {"connection_pool": pool}
        storage = RedisStorage(
            "async+" + url,
            implementation="redispy",
            key_prefix=f"{prefix}:rate",
            wrap_exceptions=True,
            **shared,
        )
        super().__init__(storage, per_minute=per_minute, auth_per_minute=auth_per_minute)
        self._acquire = self.client.register_script(_ACQUIRE)

    async def _unavailable(self, error: Exception) -> LimiterUnavailable:
        return LimiterUnavailable(
            f"the rate limiter's Redis at {redact(self.url)} failed: {error}; check that it "
            "runs (GROUNDWORK_SERVICE__REDIS_URL) or set GROUNDWORK_SERVICE__LIMITS_BACKEND="
            "memory for a single process"
        )

    async def _call(self, coro: Any) -> Any:
        from redis.exceptions import RedisError

        try:
            return await coro
        except RedisError as e:
            raise await self._unavailable(e) from e

    async def _take(self, owner: str, run_id: str, force: bool) -> bool:
        now = time.time()
        keys = [f"{self.prefix}:runs:{owner}"]
        args: list[str | int | float] = [
            now,
            now + self.run_ttl_s,
            self.max_runs,
            run_id,
            "1" if force else "0",
            math.ceil(self.run_ttl_s) + 60,
        ]
        return bool(await self._call(self._acquire(keys=keys, args=args)))

    async def acquire(self, owner: str, run_id: str) -> None:
        if not await self._take(owner, run_id, force=False):
            raise _runs_error(self.max_runs)

    async def hold(self, owner: str, run_id: str) -> None:
        await self._take(owner, run_id, force=True)

    async def release(self, owner: str, run_id: str) -> None:
        await self._call(self.client.zrem(f"{self.prefix}:runs:{owner}", run_id))

    async def ping(self) -> None:
        await self._call(self.client.ping())

    async def aclose(self) -> None:
        await self.client.aclose()


class MemoryLimiter(_MovingWindows):
    def __init__(
        self, *, per_minute: int, max_runs: int, run_ttl_s: float, auth_per_minute: int = 60
    ) -> None:
        super().__init__(MemoryStorage(), per_minute=per_minute, auth_per_minute=auth_per_minute)
        self.max_runs = max_runs
        self.run_ttl_s = run_ttl_s
        self._runs: dict[str, dict[str, float]] = {}

    def _live(self, owner: str) -> dict[str, float]:
        now = time.time()
        runs = {r: d for r, d in self._runs.get(owner, {}).items() if d > now}
        self._runs[owner] = runs
        return runs

    async def acquire(self, owner: str, run_id: str) -> None:
        runs = self._live(owner)
        if run_id not in runs and len(runs) >= self.max_runs:
            raise _runs_error(self.max_runs)
        runs[run_id] = time.time() + self.run_ttl_s

    async def hold(self, owner: str, run_id: str) -> None:
        self._live(owner)[run_id] = time.time() + self.run_ttl_s

    async def release(self, owner: str, run_id: str) -> None:
        self._live(owner).pop(run_id, None)

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        timer = getattr(self.storage, "timer", None)
        if timer is not None:
            timer.cancel()
