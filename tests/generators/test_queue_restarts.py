"""Redis restarts, with and without persistence (issue 9): each test owns a private
redis-server that it crashes and starts again on the same port.

Classes covered: the consumer group re-created when Redis lost it (NOGROUP); pooled
connections retried after a restart; a waiting client that reconnects and still gets a result
stored meanwhile; jobs lost with a non-persistent Redis reported as lost at once; a worker that
logs an outage once and its recovery once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from core.artifacts import ArtifactStore
from generators.base import GenerationRequest, JobLostError
from generators.noop import NoopGenerator
from generators.queue.client import QueueGenerator
from generators.queue.worker import Worker
from generators.settings import QueueSettings
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.redis]


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as s:
        yield s


def qsettings(url: str, **kw: object) -> QueueSettings:
    prefix = f"rs{uuid.uuid4().hex[:6]}"
    return QueueSettings.model_validate(
        {
            "redis_url": url,
            "key_prefix": prefix,
            "stream": f"{prefix}:jobs",
            "group": f"{prefix}-workers",
            "dead_letter_stream": f"{prefix}:dead",
            "job_timeout_s": 60,
            "block_ms": 100,
            "claim_interval_s": 0.2,
            **kw,
        }
    )


def req(prompt: str, **kw: object) -> GenerationRequest:
    return GenerationRequest.model_validate(
        {"prompt": prompt, "width": 64, "height": 64, "steps": 2, "model": "m", **kw}
    )


@contextlib.asynccontextmanager
async def serving(worker: Worker) -> AsyncIterator[Worker]:
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, 30)
        await worker.aclose()


async def restart(server: RedisServer, **kw: Any) -> None:
    await asyncio.to_thread(server.restart, **kw)


async def test_pooled_connections_survive_a_restart(
    server: RedisServer, store: ArtifactStore
) -> None:
    """Connections in the pool die with the server; the next calls reconnect, not fail."""
    q = QueueGenerator(qsettings(server.url), store)
    try:
        await asyncio.gather(*(q.live_workers() for _ in range(4)))  # several pooled links
        await restart(server)
        assert await asyncio.gather(*(q.live_workers() for _ in range(4))) == [0, 0, 0, 0]
        assert (await q.submit(req("after restart"))).job_id
    finally:
        await q.aclose()


async def test_group_recreated_after_restart_without_persistence(
    server: RedisServer, store: ArtifactStore
) -> None:
    """Stream and group vanish: the client's next submit and the running worker make them
    again (NOGROUP), and jobs flow as before."""
    s = qsettings(server.url)
    q = QueueGenerator(s, store)
    worker = Worker(NoopGenerator(store), s, consumer="w")
    try:
        async with serving(worker):
            await q.generate(req("before"))
            await restart(server)
            res = await asyncio.wait_for(q.generate(req("after")), 15)
            assert res.image.sha256
            groups = await q.client.xinfo_groups(s.stream)
            assert [g["name"] for g in groups] == [s.group]
    finally:
        await q.aclose()


async def test_waiting_client_gets_result_stored_during_a_restart(store: ArtifactStore) -> None:
    """AOF Redis crashes while a job runs; the worker stores the result once Redis is back and
    the client, which lost its link meanwhile, still receives it."""
    with RedisServer(appendonly=True) as server:
        s = qsettings(server.url)
        q = QueueGenerator(s, store)
        worker = Worker(NoopGenerator(store, delay_s=1.5), s, consumer="w")
        try:
            async with serving(worker):
                h = await q.submit(req("survives", steps=15))
                assert h.job_id is not None
                progress: list[int] = []
                waiting = asyncio.create_task(
                    q.wait(h.job_id, lambda i, n: progress.append(i), key=h.key, timeout_s=30)
                )
                while not progress:
                    await asyncio.sleep(0.02)
                await restart(server, down_s=0.3)
                res = await asyncio.wait_for(waiting, 20)
            assert res.job_id == h.job_id
            status = await q.status(h.job_id)
            assert status["state"] == "done" and status["attempts"] == "1"
        finally:
            await q.aclose()


@pytest.mark.slow
async def test_jobs_lost_with_redis_are_reported_lost_at_once(
    server: RedisServer, store: ArtifactStore
) -> None:
    """A non-persistent restart wipes a running and a queued job: both waiting clients get
    JobLostError within seconds, not after the 60 s job timeout."""
    s = qsettings(server.url)
    q = QueueGenerator(s, store)
    worker = Worker(NoopGenerator(store, delay_s=30), s, consumer="w")
    try:
        async with serving(worker):
            running = await q.submit(req("running", steps=300))
            queued = await q.submit(req("queued"))
            waits = [
                asyncio.create_task(q.wait(h.job_id or "", key=h.key)) for h in (running, queued)
            ]
            while (await q.status(running.job_id or "")).get("state") != "running":
                await asyncio.sleep(0.05)
            t0 = time.monotonic()
            await restart(server)
            for w in waits:
                with pytest.raises(JobLostError, match="submit it again"):
                    await asyncio.wait_for(w, 15)
            assert time.monotonic() - t0 < 10
    finally:
        await q.aclose()


@pytest.mark.slow
async def test_worker_logs_an_outage_once_and_its_end_once(
    server: RedisServer, store: ArtifactStore, caplog: pytest.LogCaptureFixture
) -> None:
    s = qsettings(server.url, heartbeat_s=0.2, reconnect_s=0.3)
    q = QueueGenerator(s, store)
    worker = Worker(NoopGenerator(store), s, consumer="w")
    try:
        with caplog.at_level(logging.INFO, logger="groundwork.worker"):
            async with serving(worker):
                await q.generate(req("before"))
                await asyncio.to_thread(server.crash)
                await asyncio.sleep(3.0)  # loops, heartbeat and cancel watch all fail, often
                await asyncio.to_thread(server.start)
                res = await asyncio.wait_for(q.generate(req("after")), 15)
                assert res.image.sha256
        messages = [r.getMessage() for r in caplog.records if r.name == "groundwork.worker"]
        down = [m for m in messages if "unreachable" in m]
        back = [m for m in messages if "back after" in m]
        assert len(down) == 1 and len(back) == 1, messages
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors == down
    finally:
        await q.aclose()
