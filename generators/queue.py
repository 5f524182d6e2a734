"""Generation jobs through Redis Streams: the client side and the protocol shared with workers.

Why Redis Streams: consumer groups give at-least-once delivery to many GPU workers on many
hosts, a pending list that survives a worker's death (another worker claims the job once its
visibility timeout passes without a heartbeat) and no scheduler of our own. At-least-once
becomes "stored exactly once" because the result key is written with SET NX: a job finished
twice (a worker presumed dead that was only slow) keeps the first result and counts the second
as a duplicate.

Cost: every state change is one Lua script, so one round trip, atomic, and safe to retry after
a lost reply (each carries a token it recognises). A job costs the client one script call and
one blocking read; the worker one blocking read, one claim script and one settle script that
stores the result, emits the events, clears the in-flight marker and acknowledges the message.

Keys (P = QueueSettings.key_prefix):
  <stream>                   job messages {job_id, key, request, submitted_at, reply}
  <dead_letter_stream>       jobs that failed for good, with their error and attempts
  P:result:<key>             GenerationResult JSON, TTL result_ttl_s (key = idempotency key)
  P:inflight:<key>           job_id of the job making <key> now (duplicates attach to it)
  P:job:<job_id>             hash: state (queued/running/done/dead/cancelled), attempts (runs
                             started), failures (runs that raised), deaths (runs lost with their
                             worker), worker, run (claim token), visibility_ms, error, ...
  P:events:<job_id>          stream of {type: progress|retry|done|failed|cancelled}
  P:reply:<client>           the same events for every job one client submitted (+ job_id), so
                             a client follows all its jobs with one blocking read
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
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.artifacts import ArtifactStore
from generators.base import (
    GenerationCancelled,
    GenerationRequest,
    GenerationResult,
    GeneratorError,
    JobLostError,
    ProgressCallback,
)
from generators.settings import QueueSettings

log = logging.getLogger(__name__)

EVENTS_TTL_S = 24 * 3600
REPLY_TTL_S = 24 * 3600
EVENTS_MAXLEN = 1000
WORKER_ALIVE_S = 30.0
MAX_VISIBILITY_S = 3600.0
SAFETY_CHECK_S = 10.0
"""A waiting client re-reads its job's state this often even when no event comes (events
expire, a restart can happen between two reads): nothing waits out the job timeout unseen."""

LINK_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)
"""Errors of the link to Redis (down, restarting, loading its AOF), not of a command."""


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

    def reply(self, client_id: str) -> str:
        return f"{self.prefix}:reply:{client_id}"

    def cancel(self, job_id: str) -> str:
        return f"{self.prefix}:cancel:{job_id}"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    @property
    def stats(self) -> str:
        return f"{self.prefix}:stats"


# Submit: return a stored result, or join the identical job in flight, or enqueue a new one (and
# re-create stream and group if Redis lost them). A retried call finds its own job id and stops.
SUBMIT = """
local raw = redis.call('GET', KEYS[1])
if raw then return {'result', raw} end
local cur = redis.call('GET', KEYS[2])
if cur then
  if cur == ARGV[1] then return {'queued', cur} end
  return {'attached', cur}
end
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[6])
if redis.call('EXISTS', KEYS[4]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[4], ARGV[9], '0', 'MKSTREAM')
end
redis.call('HSET', KEYS[3], 'state', 'queued', 'key', ARGV[2], 'attempts', 0,
  'submitted_at', ARGV[3], 'reply', ARGV[5])
redis.call('EXPIRE', KEYS[3], ARGV[7])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[8], '*', 'job_id', ARGV[1], 'key', ARGV[2],
  'submitted_at', ARGV[3], 'reply', ARGV[5], 'request', ARGV[4])
redis.call('HINCRBY', KEYS[5], 'submitted', 1)
return {'queued', ARGV[1]}
"""

# Client cancel: a queued job is cancelled on the spot; a running one is flagged for its worker.
CANCEL = """
local st = redis.call('HGET', KEYS[1], 'state')
if not st then return 'unknown' end
if st == 'done' or st == 'dead' or st == 'cancelled' then return st end
redis.call('SET', KEYS[2], '1', 'EX', ARGV[1])
if st == 'queued' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'error', 'cancelled while queued')
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', 1000, '*', 'type', 'cancelled',
    'error', 'cancelled while queued')
  redis.call('EXPIRE', KEYS[3], ARGV[2])
  if KEYS[6] then
    redis.call('XADD', KEYS[6], 'MAXLEN', '~', 1000, '*', 'job_id', ARGV[3], 'type', 'cancelled',
      'error', 'cancelled while queued')
    redis.call('EXPIRE', KEYS[6], ARGV[2])
  end
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


def is_nogroup(e: BaseException) -> bool:
    """Redis lost the stream's consumer group (restarted without persistence, or flushed)."""
    return isinstance(e, ResponseError) and str(e).startswith("NOGROUP")


def _retry(settings: QueueSettings) -> Retry:
    """Reconnect-and-retry for about reconnect_s: rides out a Redis restart (BusyLoadingError,
    raised while Redis reloads its AOF, is a ConnectionError too)."""
    backoff = ExponentialBackoff(cap=0.5, base=0.025)
    retries, total = 0, 0.0
    while total < settings.reconnect_s and retries < 100:
        retries += 1
        total += backoff.compute(retries)
    return Retry(backoff, retries, supported_errors=(RedisConnectionError, RedisTimeoutError))


def connect(settings: QueueSettings) -> aioredis.Redis:
    """A client whose pool makes bursts wait for a connection instead of failing (redis-py's
    default pool raises MaxConnectionsError past 100), health-checks connections that sat idle
    and reconnects and retries a call that met a dead connection (Redis restarted)."""
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.max_connections,
        timeout=60,
        decode_responses=True,
        health_check_interval=15,
        socket_connect_timeout=2,
        retry=_retry(settings),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    return aioredis.Redis(connection_pool=pool)


def connect_blocking_reader(settings: QueueSettings) -> aioredis.Redis:
    """One dedicated connection for a long blocking read, without automatic retries: its owner
    must see a broken link to know that a restart happened (and resynchronise)."""
    return aioredis.Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        single_connection_client=True,
        socket_connect_timeout=2,
        retry=Retry(NoBackoff(), 0),
    )


def _redis_error(url: str, e: Exception) -> GeneratorError:
    return GeneratorError(
        f"job queue Redis at {url} failed ({type(e).__name__}: {e}); fix: start Redis "
        "(`docker compose up redis` or `redis-server`), or set GROUNDWORK_QUEUE__REDIS_URL, or "
        "use GROUNDWORK_GENERATOR__BACKEND=inprocess"
    )


class _Resync:
    """Marker put before the events of a link that was re-established: state may have changed
    unseen (a result stored, or everything lost), so the waiter re-reads it."""


RESYNC = _Resync()
EventItem = dict[str, str] | BaseException | _Resync
TERMINAL = frozenset({"done", "failed", "cancelled"})


@dataclass
class _Sub:
    """What one client knows of one job's events, and who is listening."""

    stream: str | None
    """The job's own events stream for jobs submitted elsewhere; None = our reply stream."""
    last: str = "0-0"
    history: list[EventItem] = field(default_factory=list)
    listeners: set[asyncio.Queue[EventItem]] = field(default_factory=set)
    terminal: bool = False


class _EventMux:
    """One blocking XREAD, on a connection of its own, for every job this client waits on.

    Jobs this client submitted report on its reply stream, which the read always covers, so a
    new job needs no extra round trip. Jobs submitted elsewhere are followed on their own
    events stream; subscribing to one wakes the read with an entry on the reply stream. When
    the link breaks (Redis restarted), the read reconnects with backoff and every listener gets
    RESYNC to re-read its job's state.
    """

    HISTORY = 1000

    def __init__(self, settings: QueueSettings, keys: QueueKeys) -> None:
        self.settings = settings
        self.reply_key = keys.reply(uuid.uuid4().hex)
        self._reply_last = "0-0"
        self._subs: dict[str, _Sub] = {}
        self._by_stream: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None
        self._conn: Any = None
        self._closed = False
        self.outage_since: float | None = None

    def own(self, job_id: str) -> None:
        """Route this job's reply events from now on (before its submit call, so none is lost)."""
        if job_id not in self._subs:
            self._subs[job_id] = _Sub(stream=None)
        self._ensure_running()

    def disown(self, job_id: str) -> None:
        sub = self._subs.get(job_id)
        if sub is not None and not sub.listeners:
            del self._subs[job_id]

    def is_own(self, job_id: str) -> bool:
        sub = self._subs.get(job_id)
        return sub is not None and sub.stream is None

    @contextlib.asynccontextmanager
    async def listen(
        self, job_id: str, stream: str, wake: Any
    ) -> AsyncIterator[asyncio.Queue[EventItem]]:
        """Events of one job (those seen so far first). `wake` is a client for the wake-up."""
        queue: asyncio.Queue[EventItem] = asyncio.Queue()
        sub = self._subs.get(job_id)
        fresh = sub is None
        if sub is None:
            sub = self._subs[job_id] = _Sub(stream=stream)
            self._by_stream[stream] = job_id
        for item in sub.history:
            queue.put_nowait(item)
        sub.listeners.add(queue)
        try:
            running = self._task is not None and not self._task.done()
            self._ensure_running()
            if fresh and running:
                async with wake.pipeline(transaction=False) as p:
                    p.xadd(self.reply_key, {"type": "wake"}, maxlen=EVENTS_MAXLEN)
                    p.expire(self.reply_key, REPLY_TTL_S)
                    await p.execute()
            yield queue
        finally:
            # Nobody left listening: forget the job (a later wait() follows its own events
            # stream from the start, so nothing is missed).
            sub.listeners.discard(queue)
            if not sub.listeners:
                self._drop(job_id)

    def _drop(self, job_id: str) -> None:
        sub = self._subs.pop(job_id, None)
        if sub is not None and sub.stream is not None:
            self._by_stream.pop(sub.stream, None)

    def _ensure_running(self) -> None:
        if self._closed:
            raise GeneratorError("this QueueGenerator is closed")
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._read())

    def _deliver(self, sub: _Sub, job_id: str, item: dict[str, str]) -> None:
        if len(sub.history) >= self.HISTORY:
            del sub.history[: self.HISTORY // 2]
        sub.history.append(item)
        for q in sub.listeners:
            q.put_nowait(item)
        if item.get("type") in TERMINAL:
            sub.terminal = True
            if not sub.listeners:
                self._drop(job_id)

    async def _read(self) -> None:
        backoff = 0.02
        sub: _Sub | None
        while self._subs and not self._closed:
            streams = {self.reply_key: self._reply_last}
            streams.update({s.stream: s.last for s in self._subs.values() if s.stream})
            try:
                if self._conn is None:
                    self._conn = connect_blocking_reader(self.settings)
                resp = await cancellable(self._conn.xread(streams, block=5000, count=1000))
            except LINK_ERRORS as e:
                if self.outage_since is None:
                    self.outage_since = time.monotonic()
                    log.debug("event read lost its link to Redis (%s); reconnecting", e)
                await self._reset_conn()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 0.5)
                continue
            except RedisError as e:
                for sub in self._subs.values():
                    for q in sub.listeners:
                        q.put_nowait(e)
                return
            backoff = 0.02
            if self.outage_since is not None:
                self.outage_since = None
                for each in list(self._subs.values()):
                    for q in each.listeners:
                        q.put_nowait(RESYNC)
            for stream, entries in resp or []:
                if stream == self.reply_key:
                    self._reply_last = entries[-1][0]
                    for _id, fields in entries:
                        job_id = fields.get("job_id")
                        sub = self._subs.get(job_id) if job_id else None
                        if sub is not None and sub.stream is None:
                            self._deliver(sub, job_id or "", fields)
                    continue
                job_id = self._by_stream.get(stream)
                sub = self._subs.get(job_id) if job_id else None
                if sub is None:
                    continue
                sub.last = entries[-1][0]
                for _id, fields in entries:
                    self._deliver(sub, job_id or "", fields)

    async def _reset_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(RedisError, OSError):
                await conn.aclose()

    async def aclose(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._reset_conn()


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
        self._submit: AsyncScript | None = None
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
        s = self.settings
        if self._submit is None:
            self._submit = self.client.register_script(SUBMIT)
        mux = self._mux()
        job_id = uuid.uuid4().hex
        mux.own(job_id)
        vis = s.visibility_timeout_s or MAX_VISIBILITY_S
        try:
            kind, value = await self._submit(
                keys=[k.result(key), k.inflight(key), k.job(job_id), k.stream, k.stats],
                args=[
                    job_id,
                    key,
                    time.time(),
                    request.model_dump_json(),
                    mux.reply_key,
                    int(s.job_timeout_s + vis) + 60,
                    s.result_ttl_s,
                    s.max_stream_len,
                    k.group,
                ],
            )
        except RedisError as e:
            mux.disown(job_id)
            raise _redis_error(s.redis_url, e) from e
        if kind == "queued":
            return JobHandle(job_id, key)
        mux.disown(job_id)
        if kind == "result":
            return JobHandle(None, key, result=self._cached(value))
        return JobHandle(value, key, attached=True)

    async def wait(
        self,
        job_id: str,
        on_progress: ProgressCallback | None = None,
        *,
        key: str | None = None,
        timeout_s: float | None = None,
    ) -> GenerationResult:
        """Follow the job's events until done/failed/cancelled, calling on_progress.

        Raises JobLostError as soon as the job is found gone from Redis (a restart without
        persistence), GeneratorError when Redis stays unreachable for outage_timeout_s.
        """
        k = self.keys
        s = self.settings
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout_s or s.job_timeout_s)
        mux = self._mux()
        own = mux.is_own(job_id)
        try:
            async with mux.listen(job_id, k.events(job_id), self.client) as events:
                if not own:
                    # Not submitted just now by us: it may have ended (or vanished) long ago.
                    done = await self._check(job_id, key)
                    if done is not None:
                        return done
                next_check = loop.time() + SAFETY_CHECK_S
                while True:
                    now = loop.time()
                    if now >= deadline:
                        raise await self._timeout_error(job_id)
                    try:
                        async with asyncio.timeout(min(deadline, next_check, now + 1.0) - now):
                            item = await events.get()
                    except TimeoutError:
                        outage = mux.outage_since
                        if outage is not None and time.monotonic() - outage > s.outage_timeout_s:
                            raise _redis_error(
                                s.redis_url, RedisConnectionError("unreachable while waiting")
                            ) from None
                        if outage is None and loop.time() >= next_check:
                            next_check = loop.time() + SAFETY_CHECK_S
                            done = await self._check(job_id, key)
                            if done is not None:
                                return done
                        continue
                    if isinstance(item, _Resync):
                        done = await self._check(job_id, key)
                        if done is not None:
                            return done
                        continue
                    if isinstance(item, BaseException):
                        raise item
                    result = self._on_event(job_id, item, on_progress)
                    if result is not None:
                        return result
        except RedisError as e:
            raise _redis_error(s.redis_url, e) from e

    async def _check(self, job_id: str, key: str | None) -> GenerationResult | None:
        """The job's state read directly: its result, or the error it ended with, or None while
        it is still queued or running. A job that is gone is reported lost, not waited for."""
        k = self.keys
        r = self.client
        state, hkey, error, attempts = await r.hmget(
            k.job(job_id), "state", "key", "error", "attempts"
        )
        key = key or hkey
        raw = await r.get(k.result(key)) if key else None
        if raw is not None:
            return self._cached(raw, job_id).model_copy(update={"cached": False, "job_id": job_id})
        if state is None:
            raise JobLostError(
                f"generation job {job_id} is gone from Redis {self.settings.redis_url}: Redis "
                "restarted without persistence (or was flushed) while the job was queued or "
                "running, so no worker will finish it; submit it again (run Redis with "
                "--appendonly yes to keep jobs across restarts)"
            )
        if state == "dead":
            self._on_event(job_id, {"type": "failed", "error": error, "attempts": attempts}, None)
        if state == "cancelled":
            self._on_event(job_id, {"type": "cancelled", "error": error or ""}, None)
        return None

    def _on_event(
        self, job_id: str, fields: dict[str, str], on_progress: ProgressCallback | None
    ) -> GenerationResult | None:
        kind = fields.get("type")
        if kind == "progress":
            if on_progress is not None:
                on_progress(int(fields["step"]), int(fields["total"]))
        elif kind == "retry":
            log.warning("job %s attempt failed, retrying: %s", job_id, fields.get("error"))
        elif kind == "done":
            result = GenerationResult.model_validate_json(fields["result"])
            return result.model_copy(update={"job_id": job_id})
        elif kind == "failed":
            why = "" if fields.get("retryable", "1") == "1" else "not retryable; "
            raise GeneratorError(
                f"generation job {job_id} failed after {fields.get('attempts')} attempt(s): "
                f"{fields.get('error')} ({why}kept in dead-letter stream {self.keys.dead})"
            )
        elif kind == "cancelled":
            raise GenerationCancelled(
                f"generation job {job_id} cancelled: {fields.get('error', '')}"
            )
        return None

    def _mux(self) -> _EventMux:
        if self._events is None:
            self._events = _EventMux(self.settings, self.keys)
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
        """Workers whose heartbeat was seen in the last WORKER_ALIVE_S seconds."""
        since = time.time() - WORKER_ALIVE_S
        try:
            return int(await self.client.zcount(self.keys.workers, since, "+inf"))
        except RedisError as e:
            raise _redis_error(self.settings.redis_url, e) from e

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
                with contextlib.suppress(RedisError, GeneratorError):
                    await asyncio.shield(self.cancel(handle.job_id))
            raise

    async def cancel(self, job_id: str) -> str:
        """Cancel a job: 'cancelled' if it was queued, 'cancelling' if a worker is on it (it
        stops at the next step), or its final state ('done', 'dead', 'cancelled', 'unknown')."""
        k = self.keys
        r = self.client
        try:
            key, reply = await r.hmget(k.job(job_id), "key", "reply")
            if self._cancel is None:
                self._cancel = r.register_script(CANCEL)
            keys = [
                k.job(job_id),
                k.cancel(job_id),
                k.events(job_id),
                k.inflight(key or ""),
                k.stats,
            ]
            out = await self._cancel(
                keys=keys + ([reply] if reply else []),
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
