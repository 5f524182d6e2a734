"""A client waiting on a busy or empty worker pool is idle, not cut off (issue 21.1).

The event reader's XREAD blocks 5 s; with redis-py's default 5 s socket timeout every idle
read timed out, counted as an outage that was never cleared, and every waiter failed with
"Redis unreachable" at outage_timeout_s while Redis was up. Here outage_timeout_s is 1 s:
a waiter with no worker for over 2x that (and past the 5 s socket timeout) must still get its
result when a worker appears, and a waiter nobody serves fails only at job_timeout_s, saying
there is no worker.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from core.artifacts import ArtifactStore
from generators.base import GenerationRequest, GeneratorError
from generators.noop import NoopGenerator
from generators.queue.client import QueueGenerator
from generators.queue.protocol import (
    EVENT_BLOCK_MS,
    connect,
    connect_blocking_reader,
    read_timeout_s,
)
from generators.queue.worker import Worker
from generators.settings import QueueSettings

pytestmark = [pytest.mark.redis]

OUTAGE_S = 1.0
IDLE_S = 6.5  # > 2 x OUTAGE_S, and > redis-py's 5 s default socket timeout


def qsettings(redis_url: str, **kw: object) -> QueueSettings:
    prefix = f"idle{uuid.uuid4().hex[:6]}"
    return QueueSettings.model_validate(
        {
            "redis_url": redis_url,
            "key_prefix": prefix,
            "stream": f"{prefix}:jobs",
            "group": f"{prefix}-workers",
            "dead_letter_stream": f"{prefix}:dead",
            "outage_timeout_s": OUTAGE_S,
            "block_ms": 100,
            **kw,
        }
    )


def req(prompt: str) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, width=64, height=64, steps=2, model="m")


def test_blocking_reads_outlast_their_block() -> None:
    """Every connection that blocks in a read has a socket timeout longer than the block."""
    for block_ms in (100, 1000, 5000, 30_000):
        s = QueueSettings(block_ms=block_ms)
        pool_timeout = connect(s).connection_pool.connection_kwargs["socket_timeout"]
        assert pool_timeout > block_ms / 1000
        reader = connect_blocking_reader(s, EVENT_BLOCK_MS)
        assert reader.connection_pool.connection_kwargs["socket_timeout"] > EVENT_BLOCK_MS / 1000
        assert read_timeout_s(block_ms) > block_ms / 1000


@pytest.mark.slow
async def test_waiters_outlast_an_empty_pool(redis_url: str, store: ArtifactStore) -> None:
    served = qsettings(redis_url, job_timeout_s=60)
    unserved = qsettings(redis_url, job_timeout_s=IDLE_S + 1)
    client = QueueGenerator(served, store)
    lonely = QueueGenerator(unserved, store)
    try:
        handle = await client.submit(req("wait for a worker"))
        waiting = asyncio.create_task(client.wait(handle.job_id or "", key=handle.key))
        t0 = time.monotonic()
        nobody = asyncio.create_task(lonely.generate(req("nobody serves this")))
        await asyncio.sleep(IDLE_S)
        assert not waiting.done(), waiting.exception()
        assert client._events is not None and client._events.outage.since is None

        worker = Worker(NoopGenerator(store), served, consumer="late")
        task = asyncio.create_task(worker.run())
        try:
            result = await asyncio.wait_for(waiting, 30)
            assert result.job_id == handle.job_id and store.exists(result.image.sha256)
        finally:
            worker.request_stop()
            await asyncio.wait_for(task, 30)
            await worker.aclose()

        with pytest.raises(GeneratorError) as ei:
            await asyncio.wait_for(nobody, 30)
        assert "not finished within" in str(ei.value) and "groundwork worker" in str(ei.value)
        assert "unreachable" not in str(ei.value)
        assert time.monotonic() - t0 >= unserved.job_timeout_s
    finally:
        await client.aclose()
        await lonely.aclose()
