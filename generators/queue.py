"""Generation jobs through Redis Streams: the client side and the protocol shared with workers.

Why Redis Streams: consumer groups give at-least-once delivery to many GPU workers on many
hosts, a pending list that survives a worker's death (XAUTOCLAIM hands its job to another
worker after a visibility timeout) and no scheduler of our own. At-least-once becomes
"stored exactly once" because the result key is written with SET NX: a job finished twice (a
worker presumed dead that was only slow) keeps the first result and counts the second as a
duplicate.

Keys (P = QueueSettings.key_prefix):
  <stream>                   job messages {job_id, key, request, submitted_at}
  <dead_letter_stream>       jobs that failed max_attempts times, with their error
  P:result:<key>             GenerationResult JSON, TTL result_ttl_s (key = idempotency key)
  P:inflight:<key>           job_id of the job making <key> now (duplicates attach to it)
  P:job:<job_id>             hash: state (queued/running/done/dead/cancelled), attempts, error
  P:events:<job_id>          stream of {type: progress|retry|done|failed|cancelled}
  P:cancel:<job_id>          set by cancel(); a running worker stops at the next step
  P:workers                  zset consumer -> last heartbeat (for "is anyone listening?")
  P:stats                    hash of counters: submitted, completed, duplicates, retries, ...
Messages and results carry artifact hashes only; bytes live in the shared ArtifactStore.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError, ResponseError

from generators.artifacts import ArtifactStore
from generators.base import (
    GenerationCancelled,
    GenerationRequest,
    GenerationResult,
    GeneratorError,
    ProgressCallback,
)
from generators.settings import QueueSettings

log = logging.getLogger(__name__)

EVENTS_TTL_S = 24 * 3600
WORKER_ALIVE_S = 30.0


@dataclass(frozen=True)
class QueueKeys:
    prefix: str
    stream: str
    group: str
    dead: str

    @classmethod
    def from_settings(cls, s: QueueSettings) -> QueueKeys:
        return cls(s.key_prefix, s.stream, s.group, s.dead_letter_stream)

    def result(self, key: str) -> str:
        return f"{self.prefix}:result:{key}"

    def inflight(self, key: str) -> str:
        return f"{self.prefix}:inflight:{key}"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}:events:{job_id}"

    def cancel(self, job_id: str) -> str:
        return f"{self.prefix}:cancel:{job_id}"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    @property
    def stats(self) -> str:
        return f"{self.prefix}:stats"


# Compare-and-delete: only the job that owns an in-flight marker may clear it.
DEL_IF_EQ = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Client cancel: a queued job is cancelled on the spot; a running one is flagged for its worker.
CANCEL = """
local st = redis.call('HGET', KEYS[1], 'state')
if not st then return 'unknown' end
if st == 'done' or st == 'dead' or st == 'cancelled' then return st end
redis.call('SET', KEYS[2], '1', 'EX', ARGV[1])
if st == 'queued' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'error', 'cancelled while queued')
  redis.call('XADD', KEYS[3], '*', 'type', 'cancelled', 'error', 'cancelled while queued')
  redis.call('EXPIRE', KEYS[3], ARGV[2])
  if redis.call('GET', KEYS[4]) == ARGV[3] then redis.call('DEL', KEYS[4]) end
  redis.call('HINCRBY', KEYS[5], 'cancelled', 1)
  return 'cancelled'
end
return 'cancelling'
"""


T = TypeVar("T")


async def cancellable(aw: Awaitable[T]) -> T:
    """Await a redis call so that cancelling the caller always works.

    redis-py 8 can lose a cancellation that lands while a command is in flight (the command
    returns normally and the task runs on). Running the call in its own task makes our await
    the one that is cancelled; the orphaned call ends by itself within its block timeout.
    """
    task = asyncio.ensure_future(aw)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.cancel()
        task.add_done_callback(_consume)
        raise


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def ensure_group(client: aioredis.Redis, keys: QueueKeys) -> None:
    """Create stream and group at id 0 (idempotent): jobs added before any worker are kept."""
    try:
        await client.xgroup_create(keys.stream, keys.group, id="0", mkstream=True)
    except ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise


def connect(settings: QueueSettings) -> aioredis.Redis:
    """A client whose pool makes bursts wait for a connection instead of failing (redis-py's
    default pool raises MaxConnectionsError past 100)."""
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.max_connections,
        timeout=60,
        decode_responses=True,
    )
    return aioredis.Redis(connection_pool=pool)


def _redis_error(url: str, e: Exception) -> GeneratorError:
    return GeneratorError(
        f"job queue Redis at {url} failed ({type(e).__name__}: {e}); fix: start Redis "
        "(`docker compose up redis` or `redis-server`), or set GROUNDWORK_QUEUE__REDIS_URL, or "
        "use GROUNDWORK_GENERATOR__BACKEND=inprocess"
    )


EventItem = dict[str, str] | BaseException


class _EventMux:
    """One blocking XREAD over the event streams of every job this client waits on.

    A blocking read holds a connection, so one read per waiting job would need a connection per
    job (hundreds for a batch of requests). New subscribers wake the pending read by adding to
    a private wake-up stream, so their first events are not delayed by the block timeout.
    """

    def __init__(self, client: Any, wake_key: str) -> None:
        self.client = client
        self.wake_key = wake_key
        self._wake_last = "0-0"
        self._streams: dict[str, tuple[str, asyncio.Queue[EventItem]]] = {}
        self._task: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def subscribe(self, stream: str) -> AsyncIterator[asyncio.Queue[EventItem]]:
        queue: asyncio.Queue[EventItem] = asyncio.Queue()
        self._streams[stream] = ("0-0", queue)
        try:
            if self._task is None or self._task.done():
                self._task = asyncio.create_task(self._read())
            else:
                async with self.client.pipeline(transaction=False) as p:
                    p.xadd(self.wake_key, {"w": 1}, maxlen=10, approximate=False)
                    p.expire(self.wake_key, 300)
                    await p.execute()
            yield queue
        finally:
            self._streams.pop(stream, None)

    async def _read(self) -> None:
        try:
            while self._streams:
                ids = {self.wake_key: self._wake_last}
                ids.update({s: last for s, (last, _) in self._streams.items()})
                resp = await cancellable(self.client.xread(ids, block=1000, count=100))
                for stream, entries in resp or []:
                    if stream == self.wake_key:
                        self._wake_last = entries[-1][0]
                        continue
                    sub = self._streams.get(stream)
                    if sub is None:
                        continue
                    for _entry_id, fields in entries:
                        sub[1].put_nowait(fields)
                    self._streams[stream] = (entries[-1][0], sub[1])
        except RedisError as e:
            for _, queue in self._streams.values():
                queue.put_nowait(e)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


@dataclass
class JobHandle:
    """A submitted (or deduplicated) job: wait on it, or cancel it."""

    job_id: str | None
    key: str
    result: GenerationResult | None = None
    attached: bool = False
    """True when an identical job was already running and this submission joined it."""


class QueueGenerator:
    """`Generator` that sends requests to `groundwork worker` processes and awaits the result.

    Fully async (redis.asyncio): waiting for a GPU never blocks the agent's event loop.
    """

    def __init__(
        self,
        settings: QueueSettings,
        store: ArtifactStore | None = None,
        *,
        default_model: str | None = None,
        client: aioredis.Redis | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.default_model = default_model
        self.keys = QueueKeys.from_settings(settings)
        self._client = client
        self._own_client = client is None
        self._group_ready = False
        self._cancel: AsyncScript | None = None
        self._events: _EventMux | None = None

    @property
    def client(self) -> Any:
        """The redis.asyncio client (decode_responses=True). Typed Any: redis-py's annotations
        say bytes | str for every reply whatever decode_responses is."""
        if self._client is None:
            self._client = connect(self.settings)
        return self._client

    def _normalise(self, request: GenerationRequest) -> GenerationRequest:
        """The model is part of the idempotency key, so fill the default in before hashing."""
        if request.model is None and self.default_model is not None:
            return request.model_copy(update={"model": self.default_model})
        return request

    def _cached(self, raw: str, job_id: str | None = None) -> GenerationResult:
        result = GenerationResult.model_validate_json(raw)
        if self.store is not None and not self.store.exists(result.image.sha256):
            raise GeneratorError(
                f"the queue's result {result.image.sha256} is not in the artifact store "
                f"{self.store.root}; fix: mount the workers' artifact volume here (same "
                "GROUNDWORK_ARTIFACTS__ROOT on agent and workers)"
            )
        return result.model_copy(update={"cached": True, "job_id": result.job_id or job_id})

    async def submit(self, request: GenerationRequest) -> JobHandle:
        """Enqueue unless an identical request is stored (returns it) or in flight (joins it)."""
        request = self._normalise(request)
        key = request.idempotency_key()
        k = self.keys
        r = self.client
        try:
            if not self._group_ready:
                await ensure_group(r, k)
                self._group_ready = True
            for _ in range(3):
                raw = await r.get(k.result(key))
                if raw is not None:
                    return JobHandle(None, key, result=self._cached(raw))
                job_id = uuid.uuid4().hex
                ttl = int(self.settings.job_timeout_s + self.settings.visibility_timeout_s) + 60
                if await r.set(k.inflight(key), job_id, nx=True, ex=ttl):
                    now = time.time()
                    async with r.pipeline(transaction=True) as p:
                        p.hset(
                            k.job(job_id),
                            mapping={
                                "state": "queued",
                                "key": key,
                                "attempts": 0,
                                "submitted_at": now,
                            },
                        )
                        p.expire(k.job(job_id), self.settings.result_ttl_s)
                        p.xadd(
                            k.stream,
                            {
                                "job_id": job_id,
                                "key": key,
                                "submitted_at": now,
                                "request": request.model_dump_json(),
                            },
                            maxlen=self.settings.max_stream_len,
                            approximate=True,
                        )
                        p.hincrby(k.stats, "submitted", 1)
                        await p.execute()
                    return JobHandle(job_id, key)
                existing = await r.get(k.inflight(key))
                if existing is not None:
                    return JobHandle(existing, key, attached=True)
                # The other job finished between our SET and GET: loop to read its result.
        except RedisError as e:
            raise _redis_error(self.settings.redis_url, e) from e
        raise GeneratorError(f"could not submit job {key}: in-flight marker kept changing")

    async def wait(
        self,
        job_id: str,
        on_progress: ProgressCallback | None = None,
        *,
        key: str | None = None,
        timeout_s: float | None = None,
    ) -> GenerationResult:
        """Follow the job's event stream until done/failed/cancelled, calling on_progress."""
        k = self.keys
        r = self.client
        deadline = time.monotonic() + (timeout_s or self.settings.job_timeout_s)
        try:
            if key is None:
                key = await r.hget(k.job(job_id), "key")
            async with self._mux().subscribe(k.events(job_id)) as events:
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise await self._timeout_error(job_id)
                    try:
                        item = await asyncio.wait_for(events.get(), min(remaining, 2.0))
                    except TimeoutError:
                        # Events can expire or be trimmed; the result key is the truth.
                        if key is not None and (raw := await r.get(k.result(key))) is not None:
                            return self._cached(raw, job_id).model_copy(update={"cached": False})
                        if await r.hget(k.job(job_id), "state") is None:
                            raise GeneratorError(
                                f"job {job_id} is unknown to Redis {self.settings.redis_url} "
                                "(expired, or Redis restarted without persistence); submit it "
                                "again"
                            ) from None
                        continue
                    if isinstance(item, BaseException):
                        raise item
                    result = self._on_event(job_id, item, on_progress)
                    if result is not None:
                        return result
        except RedisError as e:
            raise _redis_error(self.settings.redis_url, e) from e

    def _on_event(
        self, job_id: str, fields: dict[str, str], on_progress: ProgressCallback | None
    ) -> GenerationResult | None:
        kind = fields.get("type")
        if kind == "progress" and on_progress is not None:
            on_progress(int(fields["step"]), int(fields["total"]))
        elif kind == "retry":
            log.warning("job %s attempt failed, retrying: %s", job_id, fields.get("error"))
        elif kind == "done":
            result = GenerationResult.model_validate_json(fields["result"])
            return result.model_copy(update={"job_id": job_id})
        elif kind == "failed":
            raise GeneratorError(
                f"generation job {job_id} failed after {fields.get('attempts')} attempt(s): "
                f"{fields.get('error')} (kept in dead-letter stream {self.keys.dead})"
            )
        elif kind == "cancelled":
            raise GenerationCancelled(
                f"generation job {job_id} cancelled: {fields.get('error', '')}"
            )
        return None

    def _mux(self) -> _EventMux:
        if self._events is None:
            self._events = _EventMux(self.client, f"{self.keys.prefix}:wake:{uuid.uuid4().hex}")
        return self._events

    async def _timeout_error(self, job_id: str) -> GeneratorError:
        alive = await self.live_workers()
        state = await self.client.hget(self.keys.job(job_id), "state")
        hint = (
            "no worker has been seen in the last 30 s: start one with `groundwork worker`"
            if alive == 0
            else f"{alive} worker(s) alive: the queue may be long or the job slow; raise "
            "GROUNDWORK_QUEUE__JOB_TIMEOUT_S"
        )
        return GeneratorError(
            f"generation job {job_id} not finished within {self.settings.job_timeout_s:.0f}s "
            f"(state {state}); {hint}"
        )

    async def live_workers(self) -> int:
        since = time.time() - WORKER_ALIVE_S
        return int(await self.client.zcount(self.keys.workers, since, "+inf"))

    async def generate(
        self, request: GenerationRequest, on_progress: ProgressCallback | None = None
    ) -> GenerationResult:
        handle = await self.submit(request)
        if handle.result is not None:
            return handle.result
        assert handle.job_id is not None
        try:
            result = await self.wait(handle.job_id, on_progress, key=handle.key)
            return result.model_copy(update={"cached": True}) if handle.attached else result
        except asyncio.CancelledError:
            # The caller gave up (Ctrl-C, run cancelled): free the GPU, unless we only joined
            # somebody else's identical job.
            if not handle.attached:
                with contextlib.suppress(RedisError):
                    await asyncio.shield(self.cancel(handle.job_id))
            raise

    async def cancel(self, job_id: str) -> str:
        """Cancel a job: 'cancelled' if it was queued, 'cancelling' if a worker is on it (it
        stops at the next step), or its final state ('done', 'dead', 'cancelled', 'unknown')."""
        k = self.keys
        r = self.client
        try:
            key = await r.hget(k.job(job_id), "key") or ""
            if self._cancel is None:
                self._cancel = r.register_script(CANCEL)
            out = await self._cancel(
                keys=[k.job(job_id), k.cancel(job_id), k.events(job_id), k.inflight(key), k.stats],
                args=[int(self.settings.job_timeout_s) + 60, EVENTS_TTL_S, job_id],
            )
        except RedisError as e:
            raise _redis_error(self.settings.redis_url, e) from e
        return str(out)

    async def status(self, job_id: str) -> dict[str, Any]:
        """The job's hash (state, attempts, worker, error, result sha) for CLIs and tests."""
        state: dict[str, Any] = await self.client.hgetall(self.keys.job(job_id))
        return state

    async def stats(self) -> dict[str, int]:
        raw = await self.client.hgetall(self.keys.stats)
        return {name: int(v) for name, v in raw.items()}

    async def aclose(self) -> None:
        if self._events is not None:
            await self._events.aclose()
            self._events = None
        if self._client is not None and self._own_client:
            await self._client.aclose()
            await self._client.connection_pool.disconnect()
        self._client = None


def result_json(result: GenerationResult) -> str:
    return result.model_dump_json()


def parse_message(fields: dict[str, str]) -> tuple[str, str, GenerationRequest]:
    return fields["job_id"], fields["key"], GenerationRequest.model_validate_json(fields["request"])


def dump_fields(fields: dict[str, Any]) -> dict[str, str]:
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}
