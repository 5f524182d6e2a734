"""The generation worker: one resident generator serving a Redis Streams consumer group.

Life of a job here: XREADGROUP (or XAUTOCLAIM of a job whose worker went silent) -> an atomic
claim that counts the attempt -> generate with progress events and cancel checks -> store the
image -> SET NX the result -> XACK. A failure re-queues the job until max_attempts, then moves
it to the dead-letter stream with its error. While a job runs, a heartbeat re-claims it
(XCLAIM JUSTID) so a long job is never mistaken for a stalled one.

SIGTERM/SIGINT: stop reading, let the current jobs finish for `shutdown_grace_s`, then stop
them at the next denoising step and put them back on the stream for another worker.

`python -m generators.worker --help` runs it without the `groundwork` CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from generators.artifacts import ArtifactStore
from generators.base import (
    GenerationCancelled,
    GenerationRequest,
    GenerationResult,
    ProgressCallback,
)
from generators.batching import batch_key
from generators.queue import (
    DEL_IF_EQ,
    EVENTS_TTL_S,
    QueueKeys,
    cancellable,
    connect,
    ensure_group,
)
from generators.settings import ArtifactSettings, GeneratorSettings, QueueSettings

log = logging.getLogger("groundwork.worker")

Backend = Literal["diffusers", "noop"]

# Worker claim: skip finished/cancelled jobs, else count the attempt and mark it running.
CLAIM = """
if redis.call('EXISTS', KEYS[2]) == 1 then return -2 end
local st = redis.call('HGET', KEYS[1], 'state')
if st == 'cancelled' then return -1 end
if st == 'dead' then return -3 end
local n = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'state', 'running', 'worker', ARGV[1], 'started_at', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return n
"""


class JobGenerator(Protocol):
    async def generate(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback | None = None,
        *,
        should_cancel: Callable[[], bool] | None = None,
    ) -> GenerationResult: ...

    async def aclose(self) -> None: ...


@dataclass
class _Job:
    msg_id: str
    job_id: str
    key: str
    request: GenerationRequest
    fields: dict[str, str]
    attempt: int = 0
    cancel: threading.Event = field(default_factory=threading.Event)
    progress: asyncio.Queue[tuple[int, int] | None] = field(default_factory=asyncio.Queue)


class Worker:
    """Consumes jobs with `concurrency` loops sharing one generator (one GPU call at a time)."""

    def __init__(
        self,
        generator: JobGenerator,
        queue: QueueSettings,
        *,
        consumer: str | None = None,
        batch_size: int = 1,
        client: aioredis.Redis | None = None,
    ) -> None:
        self.generator = generator
        self.settings = queue
        self.keys = QueueKeys.from_settings(queue)
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.batch_size = max(1, batch_size)
        # Any: redis-py types every reply as bytes | str whatever decode_responses says.
        self.client: Any = client or connect(queue)
        self._stopping = asyncio.Event()
        self._abort = threading.Event()
        self._active: dict[str, _Job] = {}
        self._claim = self.client.register_script(CLAIM)
        self._last_claim = 0.0
        self._helpers_stop = asyncio.Event()
        self.processed = 0

    # -- lifecycle -----------------------------------------------------------------------

    def request_stop(self) -> None:
        if not self._stopping.is_set():
            log.info("stop requested: no new jobs; finishing %d active", len(self._active))
        self._stopping.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)

    async def run(self) -> None:
        await ensure_group(self.client, self.keys)
        log.info(
            "worker %s reading %s (group %s) on %s, concurrency %d, batch %d",
            self.consumer,
            self.keys.stream,
            self.keys.group,
            self.settings.redis_url,
            self.settings.concurrency,
            self.batch_size,
        )
        await self._beat()
        loops = [asyncio.create_task(self._loop(i)) for i in range(self.settings.concurrency)]
        helpers = [asyncio.create_task(self._heartbeat()), asyncio.create_task(self._watch())]
        stopper = asyncio.create_task(self._stopping.wait())
        done, _ = await asyncio.wait([*loops, stopper], return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t is not stopper and t.exception() is not None:
                self.request_stop()
        await self._drain(loops)
        self._helpers_stop.set()
        await asyncio.gather(*helpers, return_exceptions=True)
        with contextlib.suppress(RedisError):
            await self.client.zrem(self.keys.workers, self.consumer)
            pending = await self.client.xpending_range(
                self.keys.stream, self.keys.group, "-", "+", 10, consumername=self.consumer
            )
            if not pending:
                await self.client.xgroup_delconsumer(
                    self.keys.stream, self.keys.group, self.consumer
                )
        for t in loops:
            if t.done() and not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
        log.info("worker %s stopped after %d job(s)", self.consumer, self.processed)

    async def _drain(self, loops: Sequence[asyncio.Task[None]]) -> None:
        """Finish active jobs within the grace period; then stop them at the next step."""
        grace = self.settings.shutdown_grace_s
        _, pending = await asyncio.wait(loops, timeout=grace) if loops else (set(), set())
        if pending:
            log.warning(
                "grace period %.0fs over: releasing %d job(s) back to the queue",
                grace,
                len(self._active),
            )
            self._abort.set()
            _, pending = await asyncio.wait(pending, timeout=30)
            for t in pending:
                # Stuck inside one step: leave the job pending; XAUTOCLAIM gives it to another
                # worker after the visibility timeout.
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.client.connection_pool.disconnect()

    # -- background tasks ----------------------------------------------------------------

    async def _sleep(self, seconds: float) -> bool:
        """Sleep, or return True at once when the helpers are told to stop (no cancel: see
        queue.cancellable for why cancelling a task inside a redis call is unreliable)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._helpers_stop.wait(), seconds)
        return self._helpers_stop.is_set()

    async def _beat(self) -> None:
        await self.client.zadd(self.keys.workers, {self.consumer: time.time()})

    async def _heartbeat(self) -> None:
        """Keep our jobs' idle time low (so nobody reclaims them) and announce liveness."""
        interval = min(5.0, self.settings.visibility_timeout_s / 3)
        while not await self._sleep(interval):
            try:
                await self._beat()
                ids = [j.msg_id for j in self._active.values()]
                if ids:
                    await self.client.xclaim(
                        self.keys.stream, self.keys.group, self.consumer, 0, ids, justid=True
                    )
            except RedisError as e:
                log.warning("heartbeat failed: %s", e)

    async def _watch(self) -> None:
        """Turn cancel flags in Redis into the thread-safe events the generator polls."""
        while not await self._sleep(0.2):
            jobs = list(self._active.values())
            if not jobs:
                continue
            try:
                flags = await self.client.mget([self.keys.cancel(j.job_id) for j in jobs])
            except RedisError as e:
                log.warning("cancel check failed: %s", e)
                continue
            for job, flag in zip(jobs, flags, strict=True):
                if flag is not None and not job.cancel.is_set():
                    log.info("job %s: cancel requested", job.job_id)
                    job.cancel.set()

    # -- the consume loop ----------------------------------------------------------------

    async def _loop(self, slot: int) -> None:
        k = self.keys
        while not self._stopping.is_set():
            try:
                entries: list[tuple[str, dict[str, str]]] = []
                now = time.monotonic()
                if now - self._last_claim >= self.settings.claim_interval_s:
                    self._last_claim = now
                    entries = await self._autoclaim()
                if not entries:
                    resp = await cancellable(
                        self.client.xreadgroup(
                            k.group,
                            self.consumer,
                            {k.stream: ">"},
                            count=self.batch_size,
                            block=self.settings.block_ms,
                        )
                    )
                    entries = [e for _s, es in (resp or []) for e in es]
                if entries:
                    await self._process(entries)
            except RedisError as e:
                log.error("redis error in consume loop %d: %s; retrying in 1s", slot, e)
                await asyncio.sleep(1.0)

    async def _autoclaim(self) -> list[tuple[str, dict[str, str]]]:
        k = self.keys
        idle_ms = int(self.settings.visibility_timeout_s * 1000)
        resp = await self.client.xautoclaim(
            k.stream, k.group, self.consumer, idle_ms, "0-0", count=self.batch_size
        )
        claimed = resp[1]
        deleted = resp[2] if len(resp) > 2 else []
        if deleted:
            # Trimmed from the stream while pending: nothing left to run.
            await self.client.xack(k.stream, k.group, *deleted)
        live = [(mid, f) for mid, f in claimed if f]
        if live:
            log.warning("reclaimed %d stalled job(s): %s", len(live), [m for m, _ in live])
            await self.client.hincrby(k.stats, "reclaimed", len(live))
        return live

    async def _process(self, entries: list[tuple[str, dict[str, str]]]) -> None:
        runnable: list[_Job] = []
        for msg_id, fields in entries:
            job = await self._admit(msg_id, fields)
            if job is not None:
                # Active from now on: heartbeats keep it ours and cancel flags reach it even
                # while an earlier group of this read is still on the GPU.
                self._active[job.msg_id] = job
                runnable.append(job)
        groups: dict[object, list[_Job]] = {}
        for job in runnable:
            key = batch_key(job.request, "") if hasattr(self.generator, "generate_batch") else None
            groups.setdefault(key if key is not None else job.msg_id, []).append(job)
        try:
            for jobs in groups.values():
                await self._run(jobs)
        finally:
            # Jobs left unrun by an error stop being heartbeated: XAUTOCLAIM will retry them.
            for job in runnable:
                self._active.pop(job.msg_id, None)

    async def _admit(self, msg_id: str, fields: dict[str, str]) -> _Job | None:
        """Claim one message atomically; settle the ones that need no generation."""
        k = self.keys
        try:
            job_id, key = fields["job_id"], fields["key"]
            request = GenerationRequest.model_validate_json(fields["request"])
        except (KeyError, ValueError) as e:
            await self._dead(msg_id, fields, f"malformed job message: {e}", 0)
            return None
        attempt = int(
            await self._claim(
                keys=[k.job(job_id), k.result(key)],
                args=[self.consumer, time.time(), self.settings.result_ttl_s],
            )
        )
        if attempt == -2:
            # A previous worker stored the result but died before XACK: just finish up.
            raw = await self.client.get(k.result(key))
            await self._finish(msg_id, job_id, key, "done", {"result": raw or ""}, None)
            return None
        if attempt in (-1, -3):
            await self.client.xack(k.stream, k.group, msg_id)
            return None
        if attempt > self.settings.max_attempts:
            err = await self.client.hget(k.job(job_id), "error")
            await self._dead(
                msg_id,
                fields,
                f"gave up after {attempt - 1} attempt(s); last error: "
                f"{err or 'the worker died during the job (killed, OOM or crash)'}",
                attempt - 1,
            )
            return None
        log.info(
            "job %s attempt %d: %s %dx%d %r",
            job_id,
            attempt,
            request.mode,
            request.width,
            request.height,
            request.prompt[:60],
        )
        return _Job(msg_id, job_id, key, request, fields, attempt)

    async def _run(self, jobs: list[_Job]) -> None:
        pumps = [asyncio.create_task(self._pump(j)) for j in jobs]
        cancels = [j.cancel for j in jobs]

        def should_cancel() -> bool:
            return self._abort.is_set() or all(c.is_set() for c in cancels)

        t0 = time.perf_counter()
        try:
            results: list[GenerationResult] | None = None
            error: BaseException | None = None
            try:
                if len(jobs) > 1:
                    results = await self.generator.generate_batch(  # type: ignore[attr-defined]
                        [j.request for j in jobs],
                        [self._progress_cb(j) for j in jobs],
                        should_cancel=should_cancel,
                    )
                else:
                    results = [
                        await self.generator.generate(
                            jobs[0].request,
                            self._progress_cb(jobs[0]),
                            should_cancel=should_cancel,
                        )
                    ]
            except GenerationCancelled as e:
                error = e
            except Exception as e:  # noqa: BLE001 - recorded on the job, retried, dead-lettered
                log.exception("job(s) %s failed", [j.job_id for j in jobs])
                error = e
            for j in jobs:
                j.progress.put_nowait(None)  # the pump sends what is queued, then ends
            await asyncio.gather(*pumps, return_exceptions=True)
            if results is not None:
                for j, res in zip(jobs, results, strict=True):
                    if j.cancel.is_set():
                        await self._cancelled(j)
                    else:
                        await self._store(j, res)
                log.info(
                    "job(s) %s done in %.2fs", [j.job_id for j in jobs], time.perf_counter() - t0
                )
            elif isinstance(error, GenerationCancelled):
                for j in jobs:
                    if j.cancel.is_set():
                        await self._cancelled(j)
                    else:
                        await self._release(j)
            else:
                msg = f"{type(error).__name__}: {error}"
                for j in jobs:
                    await self._failed(j, msg)
        finally:
            for j in jobs:
                self._active.pop(j.msg_id, None)
            self.processed += len(jobs)

    def _progress_cb(self, job: _Job) -> ProgressCallback:
        def cb(step: int, total: int) -> None:
            job.progress.put_nowait((step, total))

        return cb

    async def _pump(self, job: _Job) -> None:
        """Progress events in order, from one task per job (callbacks must not await)."""
        while (item := await job.progress.get()) is not None:
            step, total = item
            try:
                await self._emit(job.job_id, {"type": "progress", "step": step, "total": total})
            except RedisError as e:
                log.warning("job %s: progress event lost: %s", job.job_id, e)

    async def _emit(self, job_id: str, fields: dict[str, Any]) -> None:
        ev = self.keys.events(job_id)
        async with self.client.pipeline(transaction=False) as p:
            p.xadd(ev, fields, maxlen=1000, approximate=True)
            p.expire(ev, EVENTS_TTL_S)
            await p.execute()

    # -- terminal transitions ------------------------------------------------------------

    async def _store(self, job: _Job, result: GenerationResult) -> None:
        k = self.keys
        result = result.model_copy(update={"job_id": job.job_id})
        raw = result.model_dump_json()
        first = await self.client.set(
            k.result(job.key), raw, nx=True, ex=self.settings.result_ttl_s
        )
        if not first:
            # Another worker finished this job too (we were presumed dead): keep its result.
            log.warning(
                "job %s: result already stored by another worker; not overwriting", job.job_id
            )
            raw = await self.client.get(k.result(job.key)) or raw
        await self._finish(
            job.msg_id,
            job.job_id,
            job.key,
            "done",
            {"result": raw, "sha256": result.image.sha256},
            "completed" if first else "duplicates",
        )

    async def _finish(
        self,
        msg_id: str,
        job_id: str,
        key: str,
        state: str,
        extra: dict[str, str],
        counter: str | None,
    ) -> None:
        k = self.keys
        event_type = {"done": "done", "cancelled": "cancelled"}.get(state, "failed")
        async with self.client.pipeline(transaction=True) as p:
            p.hset(
                k.job(job_id),
                mapping={
                    "state": state,
                    "finished_at": time.time(),
                    **{f: v for f, v in extra.items() if f != "result"},
                },
            )
            p.xadd(k.events(job_id), {"type": event_type, **extra}, maxlen=1000)
            p.expire(k.events(job_id), EVENTS_TTL_S)
            p.eval(DEL_IF_EQ, 1, k.inflight(key), job_id)
            if counter:
                p.hincrby(k.stats, counter, 1)
            p.xack(k.stream, k.group, msg_id)
            await p.execute()

    async def _cancelled(self, job: _Job) -> None:
        log.info("job %s cancelled", job.job_id)
        await self._finish(
            job.msg_id,
            job.job_id,
            job.key,
            "cancelled",
            {"error": "cancelled while running"},
            "cancelled",
        )

    def _requeue(self, job: _Job, p: Any) -> None:
        p.xadd(self.keys.stream, job.fields, maxlen=self.settings.max_stream_len, approximate=True)
        p.xack(self.keys.stream, self.keys.group, job.msg_id)

    async def _release(self, job: _Job) -> None:
        """Shutdown: give the job back at once (this attempt does not count)."""
        k = self.keys
        log.info("job %s released for another worker", job.job_id)
        async with self.client.pipeline(transaction=True) as p:
            self._requeue(job, p)
            p.hincrby(k.job(job.job_id), "attempts", -1)
            p.hset(k.job(job.job_id), "state", "queued")
            p.hincrby(k.stats, "released", 1)
            await p.execute()

    async def _failed(self, job: _Job, error: str) -> None:
        k = self.keys
        if job.attempt >= self.settings.max_attempts:
            await self._dead(job.msg_id, job.fields, error, job.attempt)
            return
        log.warning(
            "job %s attempt %d/%d failed, re-queued: %s",
            job.job_id,
            job.attempt,
            self.settings.max_attempts,
            error,
        )
        async with self.client.pipeline(transaction=True) as p:
            self._requeue(job, p)
            p.hset(k.job(job.job_id), mapping={"state": "queued", "error": error})
            p.xadd(
                k.events(job.job_id),
                {"type": "retry", "error": error, "attempt": job.attempt},
                maxlen=1000,
            )
            p.expire(k.events(job.job_id), EVENTS_TTL_S)
            p.hincrby(k.stats, "retries", 1)
            await p.execute()

    async def _dead(self, msg_id: str, fields: dict[str, str], error: str, attempts: int) -> None:
        k = self.keys
        job_id = fields.get("job_id", f"malformed-{msg_id}")
        key = fields.get("key", "")
        log.error("job %s dead-lettered after %d attempt(s): %s", job_id, attempts, error)
        await self.client.xadd(
            k.dead,
            {
                **fields,
                "job_id": job_id,
                "error": error,
                "attempts": attempts,
                "worker": self.consumer,
                "failed_at": time.time(),
                "message_id": msg_id,
            },
        )
        await self._finish(
            msg_id, job_id, key, "dead", {"error": error, "attempts": str(attempts)}, "dead"
        )


# -- process entry points ---------------------------------------------------------------


def build_generator(
    backend: Backend,
    generator: GeneratorSettings,
    store: ArtifactStore,
    *,
    noop_delay_s: float = 0.0,
) -> JobGenerator:
    if backend == "noop":
        from generators.noop import NoopGenerator

        return NoopGenerator(store, delay_s=noop_delay_s, steps=generator.steps)
    from generators.diffusers_backend import DiffusersGenerator

    return DiffusersGenerator(generator, store)


async def run_worker(
    generator: GeneratorSettings,
    queue: QueueSettings,
    artifacts: ArtifactSettings,
    *,
    backend: Backend = "diffusers",
    consumer: str | None = None,
    noop_delay_s: float = 0.0,
) -> None:
    """Load (and warm up) the model first, then serve jobs until SIGTERM/SIGINT."""
    store = ArtifactStore.from_settings(artifacts)
    if backend == "diffusers":
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()  # progress goes to the job's event stream
    gen = build_generator(backend, generator, store, noop_delay_s=noop_delay_s)
    warmup = getattr(gen, "warmup", None)
    if warmup is not None:
        log.info(
            "loading %s (device %s, dtype %s)", generator.model, generator.device, generator.dtype
        )
        secs = await warmup()
        log.info("model ready in %.1fs", secs)
    worker = Worker(
        gen,
        queue,
        consumer=consumer,
        batch_size=generator.max_batch_size if backend == "diffusers" else 1,
    )
    worker.install_signal_handlers()
    try:
        await worker.run()
    finally:
        await worker.aclose()
        await gen.aclose()


def main(argv: list[str] | None = None) -> None:
    import typer

    from generators.worker_cli import worker

    app = typer.Typer(add_completion=False)
    app.command()(worker)
    app(args=argv, prog_name="python -m generators.worker")


if __name__ == "__main__":
    main()
