"""Per-token request rate and unfinished-run limits.

Redis holds them so that every server process behind a load balancer shares one budget per
token: a fixed one-minute window counter (INCR + EXPIRE) for requests, and a sorted set of the
token's unfinished run ids scored by deadline for concurrency. The deadline makes the set heal
itself: a run whose server died without releasing its slot stops counting when it expires.
The in-memory variant has the same semantics for a single process without Redis.
"""

from __future__ import annotations

import math
import time
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

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

    async def acquire(self, owner: str, run_id: str) -> None:
        """Take a run slot; raise LimitExceeded when the token has too many unfinished runs."""

    async def hold(self, owner: str, run_id: str) -> None:
        """Take a slot unconditionally (a run resumed after a restart already had one)."""

    async def release(self, owner: str, run_id: str) -> None: ...

    async def ping(self) -> None: ...

    async def aclose(self) -> None: ...


def redact(url: str) -> str:
    """The URL without a password, for messages and /readyz."""
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


def _runs_error(limit: int) -> LimitExceeded:
    return LimitExceeded(
        f"this token already has {limit} unfinished runs (the limit); wait for one to finish "
        "or cancel one (DELETE /v1/runs/{id})",
        CONCURRENCY_RETRY_S,
    )


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


class RedisLimiter:
    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        per_minute: int,
        max_runs: int,
        run_ttl_s: float,
        max_connections: int = 32,
    ) -> None:
        import redis.asyncio as aioredis

        self.url = url
        self.prefix = prefix
        self.per_minute = per_minute
        self.max_runs = max_runs
        self.run_ttl_s = run_ttl_s
        # A blocking pool: a burst waits for a free connection (redis-py's default pool raises
        # "Too many connections" past 100, which would turn a burst of requests into 503s).
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
        self._acquire = self.client.register_script(_ACQUIRE)

    async def _call(self, coro: Any) -> Any:
        from redis.exceptions import RedisError

        try:
            return await coro
        except RedisError as e:
            raise LimiterUnavailable(
                f"the rate limiter's Redis at {redact(self.url)} failed: {e}; check that it "
                "runs (GROUNDWORK_SERVICE__REDIS_URL) or set GROUNDWORK_SERVICE__LIMITS_BACKEND="
                "memory for a single process"
            ) from e

    async def hit(self, owner: str) -> None:
        now = time.time()
        window = int(now // WINDOW_S)
        key = f"{self.prefix}:rate:{owner}:{window}"
        pipe = self.client.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, WINDOW_S * 2)
        count, _ = await self._call(pipe.execute())
        if int(count) > self.per_minute:
            raise _rate_error(self.per_minute, (window + 1) * WINDOW_S - now)

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


class MemoryLimiter:
    def __init__(self, *, per_minute: int, max_runs: int, run_ttl_s: float) -> None:
        self.per_minute = per_minute
        self.max_runs = max_runs
        self.run_ttl_s = run_ttl_s
        self._counts: dict[tuple[str, int], int] = {}
        self._runs: dict[str, dict[str, float]] = {}

    async def hit(self, owner: str) -> None:
        now = time.time()
        window = int(now // WINDOW_S)
        self._counts = {k: v for k, v in self._counts.items() if k[1] >= window}
        count = self._counts.get((owner, window), 0) + 1
        self._counts[(owner, window)] = count
        if count > self.per_minute:
            raise _rate_error(self.per_minute, (window + 1) * WINDOW_S - now)

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
        return None
