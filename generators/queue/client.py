"""The queue's client side: `QueueGenerator` submits jobs and follows their events.

Fully async (redis.asyncio): waiting for a GPU never blocks the agent's event loop. One
blocking XREAD per client follows every job it waits on (`_EventMux`); an idle read is a
normal answer, not an outage (see protocol.read_timeout_s), so a client outwaits a busy or
empty worker pool up to `job_timeout_s` and fails early only when Redis itself stays gone for
`outage_timeout_s`. The protocol (keys, scripts, connections) is in `generators.queue.protocol`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from core.artifacts import ArtifactStore
from generators.base import (
    GenerationCancelled,
    GenerationRequest,
    GenerationResult,
    GeneratorError,
    JobLostError,
    ProgressCallback,
)
from generators.queue.protocol import (
    CANCEL,
    EVENT_BLOCK_MS,
    EVENTS_MAXLEN,
    EVENTS_TTL_S,
    LINK_ERRORS,
    MAX_VISIBILITY_S,
    REPLY_TTL_S,
    SAFETY_CHECK_S,
    SUBMIT,
    WORKER_ALIVE_S,
    Outage,
    QueueKeys,
    cancellable,
    connect,
    connect_blocking_reader,
    redis_error,
)
from generators.settings import QueueSettings

log = logging.getLogger(__name__)


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
        self.outage = Outage(
            settings.redis_url, logger=log, level=logging.DEBUG, first_s=0.02, max_s=0.5
        )
        """The event read's link: down since when (cleared by the next successful read)."""

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
        sub: _Sub | None
        while self._subs and not self._closed:
            streams = {self.reply_key: self._reply_last}
            streams.update({s.stream: s.last for s in self._subs.values() if s.stream})
            try:
                if self._conn is None:
                    self._conn = connect_blocking_reader(self.settings, EVENT_BLOCK_MS)
                resp = await cancellable(
                    self._conn.xread(streams, block=EVENT_BLOCK_MS, count=1000)
                )
            except LINK_ERRORS as e:
                # The socket timeout outlasts the block (protocol.read_timeout_s): an idle
                # read returns None above, so landing here means the link itself is gone.
                self.outage.failed(e)
                await self._reset_conn()
                await self.outage.pause()
                continue
            except RedisError as e:
                for sub in self._subs.values():
                    for q in sub.listeners:
                        q.put_nowait(e)
                return
            if self.outage.since is not None:
                for each in list(self._subs.values()):
                    for q in each.listeners:
                        q.put_nowait(RESYNC)
            self.outage.ok()  # any answer, an idle one included, proves the link is up
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
            raise redis_error(s.redis_url, e) from e
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
                        if mux.outage.down_for() > s.outage_timeout_s:
                            raise redis_error(
                                s.redis_url, RedisConnectionError("unreachable while waiting")
                            ) from None
                        if mux.outage.since is None and loop.time() >= next_check:
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
            raise redis_error(s.redis_url, e) from e

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
            raise redis_error(self.settings.redis_url, e) from e

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
            raise redis_error(self.settings.redis_url, e) from e
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
