"""The Redis Streams queue end to end: a real redis-server, real worker processes, the tiny
pipeline. Each group of tests uses its own key prefix and stream so they cannot see each
other's jobs."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from core.artifacts import ArtifactStore
from generators.base import GenerationCancelled, GenerationRequest, GeneratorError
from generators.queue.client import QueueGenerator
from generators.settings import GeneratorSettings, QueueSettings
from tests.support.worker_process import WorkerProcess as WorkerProc

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def qsettings(redis_url: str, prefix: str, **kw: object) -> QueueSettings:
    return QueueSettings.model_validate(
        {
            "redis_url": redis_url,
            "key_prefix": prefix,
            "stream": f"{prefix}:jobs",
            "group": f"{prefix}-workers",
            "dead_letter_stream": f"{prefix}:dead",
            "job_timeout_s": 120,
            **kw,
        }
    )


def req(prompt: str = "a red kangaroo", **kw: object) -> GenerationRequest:
    base: dict[str, object] = {"prompt": prompt, "width": 64, "height": 64, "steps": 2}
    base.update(kw)
    return GenerationRequest.model_validate(base)


def sync_redis(url: str) -> Any:
    """Any: redis-py types replies as bytes | str even with decode_responses=True."""
    return redis.Redis.from_url(url, decode_responses=True)


async def first_progress(q: QueueGenerator, job_id: str, timeout: float = 60) -> None:
    """Block until the job reports a denoising step (so it is really running)."""
    seen = asyncio.Event()
    task = asyncio.create_task(q.wait(job_id, lambda i, n: seen.set()))
    try:
        await asyncio.wait_for(seen.wait(), timeout)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# -- one resident tiny-pipeline worker for the simple cases --------------------------------


@pytest.fixture(scope="module")
def solo(
    redis_url: str, tiny_pipeline_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    prefix = f"solo{uuid.uuid4().hex[:6]}"
    artifacts = tmp_path_factory.mktemp("solo-artifacts")
    w = WorkerProc(
        name="solo",
        redis_url=redis_url,
        prefix=prefix,
        artifacts=artifacts,
        logdir=tmp_path_factory.mktemp("solo-logs"),
        model=str(tiny_pipeline_dir),
        extra=["--max-attempts", "2", "--visibility-timeout", "5"],
    )
    try:
        w.wait_ready()
        yield prefix, artifacts
    finally:
        w.stop()


@pytest.fixture
async def solo_client(
    redis_url: str, solo: tuple[str, Path], tiny_pipeline_dir: Path
) -> AsyncIterator[QueueGenerator]:
    prefix, artifacts = solo
    q = QueueGenerator(
        qsettings(redis_url, prefix), ArtifactStore(artifacts), default_model=str(tiny_pipeline_dir)
    )
    yield q
    await q.aclose()


async def test_round_trip(solo_client: QueueGenerator) -> None:
    progress: list[tuple[int, int]] = []
    res = await solo_client.generate(req(seed=1), lambda i, n: progress.append((i, n)))
    assert not res.cached and res.job_id and res.device == "cpu"
    assert progress == [(1, 2), (2, 2)]
    store = solo_client.store
    assert store is not None and store.exists(res.image.sha256)
    assert store.open_image(res.image.sha256).size == (64, 64)
    assert store.meta(res.image.sha256)["seed"] == 1
    status = await solo_client.status(res.job_id)
    assert status["state"] == "done" and status["attempts"] == "1"


async def test_duplicate_returns_stored_result(solo_client: QueueGenerator) -> None:
    before = await solo_client.stats()
    a = await solo_client.generate(req("dup", seed=3))
    b = await solo_client.generate(req("dup", seed=3))
    c, d = await asyncio.gather(
        solo_client.generate(req("dup2", seed=3)), solo_client.generate(req("dup2", seed=3))
    )
    after = await solo_client.stats()
    assert b.cached and b.image.sha256 == a.image.sha256 and b.job_id == a.job_id
    assert c.image.sha256 == d.image.sha256 and c.job_id == d.job_id
    # two distinct requests -> two jobs, two generations, whatever the number of submissions
    assert after["submitted"] - before.get("submitted", 0) == 2
    assert after["completed"] - before.get("completed", 0) == 2


async def test_failing_job_dead_lettered(solo_client: QueueGenerator, redis_url: str) -> None:
    missing = "0" * 64  # an init image nobody stored: every attempt fails
    with pytest.raises(GeneratorError, match="dead-letter") as ei:
        await solo_client.generate(req("edit", mode="img2img", init_image=missing))
    assert "not in the artifact store" in str(ei.value)
    r = sync_redis(redis_url)
    dead = r.xrange(solo_client.keys.dead)
    assert len(dead) == 1
    fields = dead[0][1]
    # A missing input image cannot appear by retrying: dead-lettered on the first attempt
    # (issue 9), not after max_attempts (2 here) as before.
    assert fields["attempts"] == "1" and "not in the artifact store" in fields["error"]
    assert GenerationRequest.model_validate_json(fields["request"]).init_image == missing
    status = await solo_client.status(fields["job_id"])
    assert status["state"] == "dead"


async def test_cancel_running_job(solo_client: QueueGenerator) -> None:
    handle = await solo_client.submit(req("long", steps=600, seed=11))
    assert handle.job_id is not None
    await first_progress(solo_client, handle.job_id)
    assert await solo_client.cancel(handle.job_id) == "cancelling"
    t0 = time.monotonic()
    with pytest.raises(GenerationCancelled):
        await solo_client.wait(handle.job_id)
    assert time.monotonic() - t0 < 8  # stopped at a step, not after 600 of them
    assert (await solo_client.status(handle.job_id))["state"] == "cancelled"
    assert await solo_client.client.get(solo_client.keys.result(handle.key)) is None
    # the worker is still serving, and the same request can be submitted again
    res = await solo_client.generate(req("after cancel"))
    assert res.image.sha256


async def test_cancel_queued_job(redis_url: str, store: ArtifactStore) -> None:
    q = QueueGenerator(qsettings(redis_url, f"noworker{uuid.uuid4().hex[:6]}"), store)
    try:
        handle = await q.submit(req("nobody listens"))
        assert handle.job_id is not None
        assert await q.cancel(handle.job_id) == "cancelled"
        with pytest.raises(GenerationCancelled, match="queued"):
            await q.wait(handle.job_id, timeout_s=5)
        assert await q.cancel(handle.job_id) == "cancelled"
        assert (await q.submit(req("nobody listens"))).job_id != handle.job_id
    finally:
        await q.aclose()


async def test_timeout_says_no_worker(redis_url: str, store: ArtifactStore) -> None:
    q = QueueGenerator(qsettings(redis_url, f"noworker{uuid.uuid4().hex[:6]}"), store)
    try:
        with pytest.raises(GeneratorError, match="groundwork worker"):
            await asyncio.wait_for(q.wait((await q.submit(req())).job_id or "", timeout_s=1), 10)
    finally:
        await q.aclose()


async def test_unreachable_redis_message(store: ArtifactStore) -> None:
    from tests.support.redis_server import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    q = QueueGenerator(QueueSettings(redis_url=url), store)
    try:
        with pytest.raises(GeneratorError, match="GROUNDWORK_QUEUE__REDIS_URL"):
            await q.generate(req())
    finally:
        await q.aclose()


# -- workers that die ----------------------------------------------------------------------


async def test_sigkill_mid_job_finished_once_by_another(
    redis_url: str,
    tiny_pipeline_dir: Path,
    tmp_path: Path,
    spawn_worker: Callable[..., WorkerProc],
) -> None:
    prefix = f"kill{uuid.uuid4().hex[:6]}"
    artifacts = tmp_path / "artifacts"
    common = {
        "redis_url": redis_url,
        "prefix": prefix,
        "artifacts": artifacts,
        "model": str(tiny_pipeline_dir),
        "extra": ["--visibility-timeout", "2"],
    }
    workers = {n: spawn_worker(name=n, **common) for n in ("a", "b")}
    for w in workers.values():
        w.wait_ready()
    q = QueueGenerator(
        qsettings(redis_url, prefix), ArtifactStore(artifacts), default_model=str(tiny_pipeline_dir)
    )
    try:
        handle = await q.submit(req("survive", steps=400, seed=5))
        assert handle.job_id is not None
        await first_progress(q, handle.job_id)
        victim = (await q.status(handle.job_id))["worker"]
        os.kill(workers[victim].proc.pid, signal.SIGKILL)
        workers[victim].proc.wait()
        res = await q.wait(handle.job_id, key=handle.key)
        survivor = ({"a", "b"} - {victim}).pop()
        status = await q.status(handle.job_id)
        assert status["worker"] == survivor and status["state"] == "done"
        assert status["attempts"] == "2"
        stats = await q.stats()
        assert stats["completed"] == 1 and stats.get("duplicates", 0) == 0
        assert stats["reclaimed"] >= 1
        r = sync_redis(redis_url)
        events = r.xrange(q.keys.events(handle.job_id))
        assert [f["type"] for _, f in events].count("done") == 1
        assert r.xlen(q.keys.dead) == 0
        assert r.xpending(q.keys.stream, q.keys.group)["pending"] == 0
        assert q.store is not None and q.store.exists(res.image.sha256)
    finally:
        await q.aclose()


async def test_sigterm_releases_or_finishes(
    redis_url: str, tmp_path: Path, spawn_worker: Callable[..., WorkerProc]
) -> None:
    """noop backend: this is about the worker's shutdown, not the pipeline."""
    prefix = f"term{uuid.uuid4().hex[:6]}"
    artifacts = tmp_path / "artifacts"
    q = QueueGenerator(qsettings(redis_url, prefix), ArtifactStore(artifacts), default_model="m")
    try:
        # grace long enough: the running job finishes, then the worker exits 0
        w1 = spawn_worker(
            name="graceful",
            redis_url=redis_url,
            prefix=prefix,
            artifacts=artifacts,
            backend="noop",
            extra=["--noop-delay", "2", "--shutdown-grace", "30"],
        )
        w1.wait_ready()
        h1 = await q.submit(req("finish me", steps=10))
        assert h1.job_id is not None
        await first_progress(q, h1.job_id)
        w1.proc.send_signal(signal.SIGTERM)
        res = await q.wait(h1.job_id)
        assert res.job_id == h1.job_id
        assert await asyncio.to_thread(w1.proc.wait, 30) == 0, w1.log()

        # no grace: the job is handed back and another worker does it
        w2 = spawn_worker(
            name="hasty",
            redis_url=redis_url,
            prefix=prefix,
            artifacts=artifacts,
            backend="noop",
            extra=["--noop-delay", "20", "--shutdown-grace", "0"],
        )
        w2.wait_ready()
        h2 = await q.submit(req("release me", steps=40))
        assert h2.job_id is not None
        await first_progress(q, h2.job_id)
        w2.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(w2.proc.wait, 30) == 0, w2.log()
        assert (await q.status(h2.job_id))["state"] == "queued"
        w3 = spawn_worker(
            name="taker",
            redis_url=redis_url,
            prefix=prefix,
            artifacts=artifacts,
            backend="noop",
            extra=["--noop-delay", "0.2"],
        )
        res2 = await q.wait(h2.job_id, key=h2.key)
        assert res2.job_id == h2.job_id
        status = await q.status(h2.job_id)
        assert status["worker"] == "taker" and status["attempts"] == "1"
        assert (await q.stats())["released"] == 1
        w3.stop()
    finally:
        await q.aclose()


async def test_worker_batches_compatible_jobs(
    redis_url: str, tiny_settings: GeneratorSettings, store: ArtifactStore
) -> None:
    """Jobs sharing model/size/steps run as one pipeline call, each with its own seed."""
    from generators.diffusers_backend import DiffusersGenerator
    from generators.queue.worker import Worker

    prefix = f"batch{uuid.uuid4().hex[:6]}"
    qs = qsettings(redis_url, prefix, block_ms=100)
    gen = DiffusersGenerator(tiny_settings, store)
    calls: list[int] = []
    original = gen.generate_batch

    async def counting(requests: Any, *a: Any, **kw: Any) -> Any:
        calls.append(len(requests))
        return await original(requests, *a, **kw)

    gen.generate_batch = counting  # type: ignore[method-assign]
    q = QueueGenerator(qs, store, default_model=tiny_settings.model)
    handles = [await q.submit(req(f"batched {i}", seed=i)) for i in range(3)]
    worker = Worker(gen, qs, consumer="batcher", batch_size=4)
    run = asyncio.create_task(worker.run())
    try:
        results = [await q.wait(h.job_id or "", key=h.key) for h in handles]
        assert calls == [3]
        assert len({r.image.sha256 for r in results}) == 3
        solo = await gen.generate(req("batched 1", seed=1, model=tiny_settings.model))
        assert solo.image.sha256 == results[1].image.sha256
    finally:
        worker.request_stop()
        await run
        await worker.aclose()
        await q.aclose()
        await gen.aclose()
