"""The generation worker: one resident generator serving a Redis Streams consumer group.

Life of a job here: XREADGROUP (or a reclaim of a job whose worker went silent past the job's
visibility timeout) -> one claim script for the whole read -> generate with progress events and
cancel checks -> store the image -> one settle script (result SET NX, events, XACK).

Who pays for a failure:
- the job, when its generation raised: it is re-queued until max_attempts, then dead-lettered
  with its error; an error that cannot succeed on retry (unknown model, missing input image)
  is dead-lettered at once;
- nobody, when its worker died (SIGKILL, OOM, lost host): the run is not charged to the
  error budget. A job whose worker died while it ran alone counts a death, and after
  max_worker_deaths it is dead-lettered as a poison job; the jobs of a batch whose worker died
  are split and rerun alone, so one crash never charges several jobs.

The visibility timeout fits the work: each run records its own (min_visibility_s plus twice
its expected time, from its steps and size at the step time this worker measured), and a
heartbeat renews it as long as the worker lives. A Redis outage is logged once, and its end
once; the worker re-creates a consumer group that Redis lost.

SIGTERM/SIGINT: stop reading, let the current jobs finish for `shutdown_grace_s`, then stop
them at the next denoising step and put them back on the stream for another worker.

`python -m cli.worker --help` runs it without the rest of the `groundwork` CLI. The Redis
protocol (keys, Lua scripts, connections) is in `generators.queue.protocol`.
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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core.artifacts import ArtifactNotFound, ArtifactSettings, ArtifactStore
from generators.base import (
    BatchGenerator,
    GenerationCancelled,
    GenerationRequest,
    GenerationResult,
    JobGenerator,
    ProgressCallback,
    Warmable,
)
from generators.batching import batch_key
from generators.queue.protocol import (
    CLAIM,
    EVENTS_MAXLEN,
    EVENTS_TTL_S,
    FAIL,
    HEARTBEAT,
    MAX_VISIBILITY_S,
    RELEASE,
    REPLY_TTL_S,
    SETTLE,
    Outage,
    QueueKeys,
    cancellable,
    connect,
    ensure_group,
    is_nogroup,
    ride_out,
)
from generators.settings import GeneratorSettings, QueueSettings

log = logging.getLogger("groundwork.worker")

T = TypeVar("T")


def retryable(error: BaseException) -> bool:
    """Can running the same request again succeed? No for errors whose class says so
    (GeneratorError.retryable, e.g. ModelNotFoundError) and for input images missing from the
    artifact store, anywhere in the cause chain."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ArtifactNotFound) or getattr(type(e), "retryable", True) is False:
            return False
        e = e.__cause__
    return True


class StepClock:
    """Seconds per denoising step per megapixel on this worker: an estimate until measured,
    then a moving average of real runs. Sizes the visibility timeout of each run."""

    REF_MP = 512 * 512 / 1e6

    def __init__(self, step_time_s: float, default_steps: int) -> None:
        self.rate = step_time_s / self.REF_MP
        self.default_steps = default_steps
        self.measured = False

    def work(self, requests: Sequence[GenerationRequest]) -> float:
        return sum((r.steps or self.default_steps) * r.width * r.height / 1e6 for r in requests)

    def expected_s(self, requests: Sequence[GenerationRequest]) -> float:
        return self.rate * self.work(requests)

    def observe(self, elapsed_s: float, requests: Sequence[GenerationRequest]) -> None:
        work = self.work(requests)
        if work <= 0:
            return
        rate = elapsed_s / work
        self.rate = rate if not self.measured else 0.7 * self.rate + 0.3 * rate
        self.measured = True


@dataclass
class _Job:
    msg_id: str
    job_id: str
    key: str
    request: GenerationRequest
    fields: dict[str, str]
    attempt: int = 0
    token: str = ""
    solo: bool = False
    reply: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    lost: bool = False
    """Another worker took this run over (we were presumed dead): drop it, settle nothing."""
    progress: list[tuple[int, int]] = field(default_factory=list)
    progress_ready: asyncio.Event = field(default_factory=asyncio.Event)
    ended: bool = False


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
        default_steps: int = 4,
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
        self._settle_script = self.client.register_script(SETTLE)
        self._fail_script = self.client.register_script(FAIL)
        self._release_script = self.client.register_script(RELEASE)
        self._heartbeat_script = self.client.register_script(HEARTBEAT)
        self._last_claim = 0.0
        self._helpers_stop = asyncio.Event()
        self.outage = Outage(queue.redis_url, logger=log)
        self.clock = StepClock(queue.step_time_s, default_steps)
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

    @property
    def heartbeat_interval_s(self) -> float:
        """Three heartbeats fit in the shortest visibility timeout a run can get."""
        s = self.settings
        return min(s.heartbeat_s, (s.visibility_timeout_s or s.min_visibility_s) / 3)

    def visibility_s(self, requests: Sequence[GenerationRequest]) -> float:
        """How long a run may go without a heartbeat before another worker takes it."""
        fixed = self.settings.visibility_timeout_s
        if fixed:
            return fixed
        expected = self.clock.expected_s(requests)
        return min(MAX_VISIBILITY_S, self.settings.min_visibility_s + 2 * expected)

    async def _connect(self) -> bool:
        """Consumer group and first heartbeat, waiting out Redis being down (logged once)."""
        while not self._stopping.is_set():
            try:
                await ensure_group(self.client, self.keys)
                await self._beat()
                self.outage.ok()
                return True
            except RedisError as e:
                self.outage.failed(e)
                await self.outage.pause()
        return False

    async def run(self) -> None:
        if not await self._connect():
            return
        log.info(
            "worker %s reading %s (group %s) on %s, concurrency %d, batch %d",
            self.consumer,
            self.keys.stream,
            self.keys.group,
            self.settings.redis_url,
            self.settings.concurrency,
            self.batch_size,
        )
        loops = [asyncio.create_task(self._loop(i)) for i in range(self.settings.concurrency)]
        helpers = [asyncio.create_task(self._heartbeat()), asyncio.create_task(self._watch())]
        stopper = asyncio.create_task(self._stopping.wait())
        done, _ = await asyncio.wait([*loops, stopper], return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t is not stopper and t.exception() is not None:
                self.request_stop()
        await self._drain(loops)
        self._helpers_stop.set()
        stopper.cancel()
        await asyncio.gather(*helpers, stopper, return_exceptions=True)
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
                # Stuck inside one step: leave the job pending; another worker reclaims it
                # after its visibility timeout.
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.client.connection_pool.disconnect()

    # -- background tasks ----------------------------------------------------------------

    async def _sleep(self, seconds: float) -> bool:
        """Sleep, or return True at once when the helpers are told to stop (no cancel: see
        protocol.cancellable for why cancelling a task inside a redis call is unreliable)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._helpers_stop.wait(), seconds)
        return self._helpers_stop.is_set()

    async def _beat(self) -> None:
        """Liveness, and the renewal of every run we still own (one round trip)."""
        jobs = list(self._active.values())
        k = self.keys
        lost = await self._heartbeat_script(
            keys=[k.workers, k.stream, *(k.job(j.job_id) for j in jobs)],
            args=[
                time.time(),
                self.consumer,
                k.group,
                *(x for j in jobs for x in (j.token, j.msg_id)),
            ],
        )
        for msg_id in lost or []:
            job = self._active.get(msg_id)
            if job is not None and not job.lost and not job.ended:
                log.warning(
                    "job %s was given to another worker (this one was presumed dead); "
                    "stopping this run",
                    job.job_id,
                )
                job.lost = True
                job.cancel.set()

    async def _heartbeat(self) -> None:
        """Keep our runs' idle time low (so nobody reclaims them) and announce liveness."""
        while not await self._sleep(self.heartbeat_interval_s):
            try:
                await self._beat()
                self.outage.ok()
            except RedisError as e:
                self.outage.failed(e)

    async def _watch(self) -> None:
        """Turn cancel flags in Redis into the thread-safe events the generator polls."""
        while not await self._sleep(0.2):
            jobs = list(self._active.values())
            if not jobs:
                continue
            try:
                flags = await self.client.mget([self.keys.cancel(j.job_id) for j in jobs])
                self.outage.ok()
            except RedisError as e:
                self.outage.failed(e)
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
                    entries = await self._reclaim()
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
                self.outage.ok()
                if entries:
                    await self._process(entries)
            except RedisError as e:
                if is_nogroup(e):
                    await self._regroup()
                    continue
                self.outage.failed(e)
                await self.outage.pause()

    async def _regroup(self) -> None:
        """Redis lost the consumer group (a restart without persistence): make it again."""
        try:
            await ensure_group(self.client, self.keys)
            log.warning(
                "consumer group %s of %s was gone (Redis restarted without persistence?); "
                "re-created",
                self.keys.group,
                self.keys.stream,
            )
        except RedisError as e:
            self.outage.failed(e)
            await self.outage.pause()

    async def _reclaim(self) -> list[tuple[str, dict[str, str]]]:
        """Take over runs idle past their own visibility timeout (their worker is gone)."""
        k = self.keys
        s = self.settings
        floor_ms = int((s.visibility_timeout_s or s.min_visibility_s) * 1000)
        pending = await self.client.xpending_range(
            k.stream, k.group, "-", "+", 4 * self.batch_size, idle=floor_ms
        )
        pending = [p for p in pending if p["message_id"] not in self._active]
        if not pending:
            return []
        ids = [p["message_id"] for p in pending]
        async with self.client.pipeline(transaction=False) as p:
            for mid in ids:
                p.xrange(k.stream, mid, mid)
            found = await p.execute()
        gone = [mid for mid, rows in zip(ids, found, strict=True) if not rows]
        live = [(mid, rows[0][1]) for mid, rows in zip(ids, found, strict=True) if rows]
        if gone:
            # Trimmed from the stream while pending: nothing left to run.
            await self.client.xack(k.stream, k.group, *gone)
        if not live:
            return []
        async with self.client.pipeline(transaction=False) as p:
            for _mid, fields in live:
                p.hget(k.job(fields.get("job_id", "")), "visibility_ms")
            vis = await p.execute()
        async with self.client.pipeline(transaction=False) as p:
            for (mid, _f), v in zip(live[: self.batch_size], vis, strict=False):
                p.xclaim(k.stream, k.group, self.consumer, int(v or floor_ms), [mid])
            claimed = await p.execute()
        taken = [e for rows in claimed for e in rows if e and e[1]]
        if taken:
            log.warning(
                "reclaimed %d job(s) whose worker went silent: %s",
                len(taken),
                [m for m, _ in taken],
            )
            await self.client.hincrby(k.stats, "reclaimed", len(taken))
        return taken

    async def _process(self, entries: list[tuple[str, dict[str, str]]]) -> None:
        parsed: list[_Job] = []
        for msg_id, fields in entries:
            try:
                job_id, key = fields["job_id"], fields["key"]
                request = GenerationRequest.model_validate_json(fields["request"])
            except (KeyError, ValueError) as e:
                await self._dead(msg_id, fields, f"malformed job message: {e}")
                continue
            parsed.append(
                _Job(msg_id, job_id, key, request, fields, reply=fields.get("reply") or None)
            )
        if not parsed:
            return
        batches = isinstance(self.generator, BatchGenerator)
        groups: dict[object, list[_Job]] = {}
        for job in parsed:
            bkey = batch_key(job.request, "") if batches else None
            groups.setdefault(bkey if bkey is not None else job.msg_id, []).append(job)
        runnable = await self._admit(parsed, groups)
        for job in runnable:
            # Active from now on: heartbeats keep it ours and cancel flags reach it even
            # while an earlier group of this read is still on the GPU.
            self._active[job.msg_id] = job
        final: list[list[_Job]] = []
        for jobs in groups.values():
            ready = [j for j in jobs if j.attempt > 0]
            final += [[j] for j in ready if j.solo]
            if rest := [j for j in ready if not j.solo]:
                final.append(rest)
        try:
            for jobs in final:
                await self._run(jobs)
        finally:
            # Jobs left unrun by an error stop being heartbeated: another worker reclaims them.
            for job in runnable:
                self._active.pop(job.msg_id, None)

    async def _admit(self, parsed: list[_Job], groups: dict[object, list[_Job]]) -> list[_Job]:
        """Claim a whole read in one call; settle the messages that need no generation."""
        k = self.keys
        size = {id(j): len(g) for g in groups.values() for j in g}
        vis = {id(j): self.visibility_s([x.request for x in g]) for g in groups.values() for j in g}
        token = uuid.uuid4().hex
        out = await self._claim(
            keys=[x for j in parsed for x in (k.job(j.job_id), k.result(j.key))],
            args=[
                self.consumer,
                time.time(),
                self.settings.result_ttl_s,
                token,
                self.settings.max_worker_deaths,
                *(x for j in parsed for x in (size[id(j)], int(vis[id(j)] * 1000))),
            ],
        )
        runnable: list[_Job] = []
        for i, (job, (code, attempt, deaths, solo)) in enumerate(zip(parsed, out, strict=True)):
            code = int(code)
            if code == -2:
                # Already stored (by a run whose worker died before acknowledging, or an
                # identical job): finish this message with that result.
                await self._settle(job, "ack")
            elif code in (-1, -3):
                await self.client.xack(k.stream, k.group, job.msg_id)
            elif code == -4:
                await self._dead(
                    job.msg_id,
                    job.fields,
                    f"poison job: {deaths} worker(s) died while running it (killed, out of "
                    "memory or crashed); not retried again",
                )
            else:
                job.attempt, job.solo, job.token = int(attempt), bool(int(solo)), f"{token}:{i + 1}"
                log.info(
                    "job %s attempt %d%s: %s %dx%d %r",
                    job.job_id,
                    job.attempt,
                    " (alone: its batch's worker died)" if job.solo else "",
                    job.request.mode,
                    job.request.width,
                    job.request.height,
                    job.request.prompt[:60],
                )
                runnable.append(job)
        return runnable

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
                    assert isinstance(self.generator, BatchGenerator)
                    results = await self.generator.generate_batch(
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
            elapsed = time.perf_counter() - t0
            for j in jobs:
                j.ended = True
                j.progress_ready.set()  # the pump finishes the send in flight, then ends
            await asyncio.gather(*pumps, return_exceptions=True)
            for j in [j for j in jobs if j.lost]:
                log.info("job %s: run dropped, another worker owns it now", j.job_id)
            live = [j for j in jobs if not j.lost]
            if results is not None:
                self.clock.observe(elapsed, [j.request for j in jobs])
                for j, res in zip(jobs, results, strict=True):
                    if j.lost:
                        continue
                    if j.cancel.is_set():
                        await self._settle(j, "cancelled", error="cancelled while running")
                    else:
                        await self._store(j, res)
                log.info("job(s) %s done in %.2fs", [j.job_id for j in jobs], elapsed)
            elif isinstance(error, GenerationCancelled):
                for j in live:
                    if j.cancel.is_set():
                        await self._settle(j, "cancelled", error="cancelled while running")
                    else:
                        await self._release(j)
            else:
                assert error is not None
                msg = f"{type(error).__name__}: {error}"
                again = retryable(error)
                for j in live:
                    await self._failed(j, msg, again)
        finally:
            for j in jobs:
                self._active.pop(j.msg_id, None)
            self.processed += len(jobs)

    def _progress_cb(self, job: _Job) -> ProgressCallback:
        def cb(step: int, total: int) -> None:
            job.progress.append((step, total))
            job.progress_ready.set()

        return cb

    async def _pump(self, job: _Job) -> None:
        """Progress events in order, coalesced: whatever queued up goes in one round trip.
        What is left when the run ends travels with the settle call instead."""
        while True:
            await job.progress_ready.wait()
            if job.ended:
                return
            job.progress_ready.clear()
            batch, job.progress = job.progress, []
            try:
                await self._emit_progress(job, batch)
            except RedisError as e:
                log.debug("job %s: progress events lost: %s", job.job_id, e)

    async def _emit_progress(self, job: _Job, steps: list[tuple[int, int]]) -> None:
        ev = self.keys.events(job.job_id)
        async with self.client.pipeline(transaction=False) as p:
            for step, total in steps:
                fields = {"type": "progress", "step": step, "total": total}
                p.xadd(ev, fields, maxlen=EVENTS_MAXLEN, approximate=True)
                if job.reply:
                    p.xadd(
                        job.reply,
                        {"job_id": job.job_id, **fields},
                        maxlen=EVENTS_MAXLEN,
                        approximate=True,
                    )
            p.expire(ev, EVENTS_TTL_S)
            if job.reply:
                p.expire(job.reply, REPLY_TTL_S)
            await p.execute()

    # -- terminal transitions (each one script, retried through a Redis outage) -----------

    async def _ride_out(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run a terminal write; through a Redis outage keep trying for outage_timeout_s (the
        job stays pending if Redis never comes back, and another worker reclaims it)."""
        return await ride_out(call, self.outage, self.settings.outage_timeout_s)

    def _event_keys(self, job_id: str, reply: str | None) -> tuple[list[str], list[str]]:
        k = self.keys
        head = [k.job(job_id), k.events(job_id)]
        return head, ([reply] if reply else [])

    async def _settle(
        self,
        job: _Job,
        mode: Literal["done", "ack", "cancelled"],
        *,
        raw: str = "",
        sha: str = "",
        error: str = "",
    ) -> str:
        k = self.keys
        progress, job.progress = job.progress, []
        head, tail = self._event_keys(job.job_id, job.reply)
        keys = [*head, k.inflight(job.key), k.stats, k.stream, k.result(job.key), *tail]
        args: list[str | int | float] = [
            mode,
            job.token,
            job.job_id,
            k.group,
            job.msg_id,
            time.time(),
            EVENTS_TTL_S,
            self.settings.result_ttl_s,
            raw,
            sha,
            error,
            len(progress),
            *(x for pair in progress for x in pair),
        ]
        out = str(await self._ride_out(lambda: self._settle_script(keys=keys, args=args)))
        if mode == "cancelled" and out != "stale":
            log.info("job %s cancelled", job.job_id)
        return out

    async def _store(self, job: _Job, result: GenerationResult) -> None:
        result = result.model_copy(update={"job_id": job.job_id})
        out = await self._settle(job, "done", raw=result.model_dump_json(), sha=result.image.sha256)
        if out == "duplicate":
            # Another worker finished this job too (we were presumed dead): keep its result.
            log.warning(
                "job %s: result already stored by another worker; not overwriting", job.job_id
            )

    async def _release(self, job: _Job) -> None:
        """Shutdown: give the job back at once (this attempt does not count)."""
        k = self.keys
        log.info("job %s released for another worker", job.job_id)
        fields = [x for kv in job.fields.items() for x in kv]
        await self._ride_out(
            lambda: self._release_script(
                keys=[k.job(job.job_id), k.stream, k.stats],
                args=[job.token, k.group, job.msg_id, self.settings.max_stream_len, *fields],
            )
        )

    async def _failed(self, job: _Job, error: str, again: bool) -> None:
        out = await self._fail(job.msg_id, job.fields, error, again, job.token, job.reply)
        if out == "retry":
            log.warning(
                "job %s attempt %d failed, re-queued (%d attempt(s) at most): %s",
                job.job_id,
                job.attempt,
                self.settings.max_attempts,
                error,
            )

    async def _dead(self, msg_id: str, fields: dict[str, str], error: str) -> None:
        """Dead-letter a message that must not run (malformed, or a poison job)."""
        await self._fail(msg_id, fields, error, False, "", fields.get("reply") or None)

    async def _fail(
        self,
        msg_id: str,
        fields: dict[str, str],
        error: str,
        again: bool,
        token: str,
        reply: str | None,
    ) -> str:
        k = self.keys
        job_id = fields.get("job_id") or f"malformed-{msg_id}"
        key = fields.get("key", "")
        extra = {
            "job_id": job_id,
            "error": error,
            "retryable": "1" if again else "0",
            "worker": self.consumer,
            "failed_at": str(time.time()),
            "message_id": msg_id,
        }
        dead = {**{f: v for f, v in fields.items() if f != "attempts"}, **extra}
        requeue = [x for kv in fields.items() for x in kv]
        head, tail = self._event_keys(job_id, reply)
        keys = [*head, k.inflight(key), k.stats, k.stream, k.dead, *tail]
        args: list[str | int | float] = [
            token,
            "",
            job_id,
            k.group,
            msg_id,
            time.time(),
            EVENTS_TTL_S,
            error,
            "1" if again else "0",
            self.settings.max_attempts,
            self.settings.max_stream_len,
            len(requeue),
            *requeue,
            *(x for kv in dead.items() for x in kv),
        ]
        out = str(await self._ride_out(lambda: self._fail_script(keys=keys, args=args)))
        if out == "dead":
            log.error("job %s dead-lettered: %s", job_id, error)
        return out


# -- process entry points ---------------------------------------------------------------


async def run_worker(
    generator: GeneratorSettings,
    queue: QueueSettings,
    artifacts: ArtifactSettings,
    *,
    backend: str = "diffusers",
    consumer: str | None = None,
    noop_delay_s: float = 0.0,
) -> None:
    """Load (and warm up) the model first, then serve jobs until SIGTERM/SIGINT.

    `backend` is any name of `generators.factory.BACKENDS` that can serve jobs.
    """
    from generators.factory import build_job_generator

    store = ArtifactStore.from_settings(artifacts)
    gen = build_job_generator(
        backend, generator, queue, store, options={"noop_delay_s": noop_delay_s, "worker": True}
    )
    if isinstance(gen, Warmable):
        log.info(
            "loading %s (device %s, dtype %s)", generator.model, generator.device, generator.dtype
        )
        t0 = time.perf_counter()
        await gen.warm(wait=True)
        log.info("model ready in %.1fs", time.perf_counter() - t0)
    worker = Worker(
        gen,
        queue,
        consumer=consumer,
        batch_size=generator.max_batch_size if isinstance(gen, BatchGenerator) else 1,
        default_steps=generator.steps,
    )
    worker.install_signal_handlers()
    try:
        await worker.run()
    finally:
        await worker.aclose()
        await gen.aclose()
