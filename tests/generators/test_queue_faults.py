"""Who pays for a failure (issue 9): a worker's death is not the job's fault, a killed batch is
split, a job that keeps killing workers is dead-lettered as a poison job, errors that cannot
succeed on retry are dead-lettered at once, and a dead worker's job is reclaimed after a time
that fits the job (a heartbeat extends it while the worker lives).

Victim workers run in subprocesses (so SIGKILL is real) with a small scripted generator; the
workers that take over run in-process. Real redis-server throughout."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from core.artifacts import ArtifactNotFound, ArtifactStore
from generators.base import (
    GenerationRequest,
    GenerationResult,
    GeneratorError,
    ModelNotFoundError,
    ProgressCallback,
)
from generators.noop import NoopGenerator
from generators.queue.client import QueueGenerator
from generators.queue.worker import StepClock, Worker, retryable
from generators.settings import QueueSettings
from tests.support.worker_process import REPO

pytestmark = [pytest.mark.redis]


def qsettings(redis_url: str, prefix: str, **kw: object) -> QueueSettings:
    return QueueSettings.model_validate(
        {
            "redis_url": redis_url,
            "key_prefix": prefix,
            "stream": f"{prefix}:jobs",
            "group": f"{prefix}-workers",
            "dead_letter_stream": f"{prefix}:dead",
            "job_timeout_s": 60,
            "claim_interval_s": 0.2,
            "block_ms": 100,
            **kw,
        }
    )


def req(prompt: str, **kw: object) -> GenerationRequest:
    base: dict[str, object] = {"prompt": prompt, "width": 64, "height": 64, "steps": 2}
    base.update(kw)
    return GenerationRequest.model_validate(base)


class ScriptedGenerator(NoopGenerator):
    """Noop images; prompts with 'poison' kill the process (when `lethal`, i.e. in a victim
    subprocess; in-process they only raise), 'unknown model' / 'missing image' / 'flaky' raise."""

    lethal = False

    async def generate(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback | None = None,
        *,
        should_cancel: Any = None,
    ) -> GenerationResult:
        if "poison" in request.prompt:
            if self.lethal:
                os.kill(os.getpid(), signal.SIGKILL)
            raise GeneratorError("the poison job ran on a worker that survives it")
        if "unknown model" in request.prompt:
            raise ModelNotFoundError(f"model {request.model!r} not found (scripted)")
        if "missing image" in request.prompt:
            try:
                raise ArtifactNotFound("artifact 00 not in store (scripted)")
            except ArtifactNotFound as e:
                raise GeneratorError("init_image 00 is not in the artifact store") from e
        if "flaky" in request.prompt:
            raise GeneratorError("scripted transient failure")
        return await super().generate(request, on_progress, should_cancel=should_cancel)

    async def generate_batch(
        self,
        requests: list[GenerationRequest],
        callbacks: list[ProgressCallback | None],
        *,
        should_cancel: Any = None,
    ) -> list[GenerationResult]:
        self.batches = [*getattr(self, "batches", []), len(requests)]
        return list(
            await asyncio.gather(
                *(
                    self.generate(r, cb, should_cancel=should_cancel)
                    for r, cb in zip(requests, callbacks, strict=True)
                )
            )
        )


# The victim: a worker process running ScriptedGenerator, exactly as run_worker would.
VICTIM = """
import asyncio, sys
from core.artifacts import ArtifactStore
from generators.settings import QueueSettings
from generators.queue.worker import Worker
from tests.generators.test_queue_faults import ScriptedGenerator

settings = QueueSettings.model_validate_json(sys.argv[1])
gen = ScriptedGenerator(ArtifactStore(sys.argv[3]), delay_s=float(sys.argv[4]))
gen.lethal = True
asyncio.run(Worker(gen, settings, consumer=sys.argv[2], batch_size=int(sys.argv[5])).run())
"""


@contextlib.contextmanager
def victim(
    settings: QueueSettings, name: str, artifacts: Path, *, delay: float = 60.0, batch: int = 1
) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", VICTIM, settings.model_dump_json(), name, str(artifacts)]
        + [str(delay), str(batch)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        r: Any = redis.Redis.from_url(settings.redis_url, decode_responses=True)
        deadline = time.monotonic() + 60
        while r.zscore(f"{settings.key_prefix}:workers", name) is None:
            assert proc.poll() is None, "victim worker exited on start"
            assert time.monotonic() < deadline, "victim worker not ready"
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


async def until(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def serving(worker: Worker) -> AsyncIterator[Worker]:
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, 30)
        await worker.aclose()


async def running(q: QueueGenerator, *job_ids: str) -> bool:
    states = [(await q.status(j)).get("state") for j in job_ids]
    return all(s == "running" for s in states)


# -- a worker's death is not the job's fault -----------------------------------------------


@pytest.mark.slow
async def test_dead_worker_does_not_spend_the_error_budget(redis_url: str, tmp_path: Path) -> None:
    """max_attempts=1: a job whose worker was SIGKILLed still runs again, and completes."""
    prefix = f"death{uuid.uuid4().hex[:6]}"
    s = qsettings(redis_url, prefix, max_attempts=1, visibility_timeout_s=1.0)
    artifacts = tmp_path / "artifacts"
    q = QueueGenerator(s, ArtifactStore(artifacts), default_model="m")
    try:
        h = await q.submit(req("killed under me", steps=600))
        assert h.job_id is not None
        with victim(s, "victim", artifacts) as proc:
            await until(lambda: running(q, h.job_id or ""))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        worker = Worker(ScriptedGenerator(ArtifactStore(artifacts)), s, consumer="heir")
        async with serving(worker):
            res = await q.wait(h.job_id, key=h.key, timeout_s=30)
        status = await q.status(h.job_id)
        assert res.job_id == h.job_id and status["state"] == "done"
        assert status["worker"] == "heir" and status["attempts"] == "2"
        assert status["deaths"] == "1" and "failures" not in status
        assert await q.client.xlen(q.keys.dead) == 0
    finally:
        await q.aclose()


@pytest.mark.slow
async def test_killed_batch_is_split_and_not_charged(redis_url: str, tmp_path: Path) -> None:
    """A batch of 3 whose worker dies: each job reruns alone and none is charged a death, so
    even max_worker_deaths=1 dead-letters nothing."""
    prefix = f"split{uuid.uuid4().hex[:6]}"
    s = qsettings(redis_url, prefix, max_attempts=1, max_worker_deaths=1, visibility_timeout_s=1)
    artifacts = tmp_path / "artifacts"
    q = QueueGenerator(s, ArtifactStore(artifacts), default_model="m")
    try:
        handles = [await q.submit(req(f"batched {i}", steps=600, seed=i)) for i in range(3)]
        ids = [h.job_id or "" for h in handles]
        with victim(s, "victim", artifacts, batch=4) as proc:
            await until(lambda: running(q, *ids))
            assert {(await q.status(j))["batch"] for j in ids} == {"3"}
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        gen = ScriptedGenerator(ArtifactStore(artifacts))
        worker = Worker(gen, s, consumer="heir", batch_size=4)
        async with serving(worker):
            for h in handles:
                await q.wait(h.job_id or "", key=h.key, timeout_s=30)
        assert getattr(gen, "batches", []) == []  # every rerun went alone
        for j in ids:
            status = await q.status(j)
            assert status["state"] == "done" and status["splits"] == "1"
            assert "deaths" not in status and status["batch"] == "1"
        assert await q.client.xlen(q.keys.dead) == 0
    finally:
        await q.aclose()


@pytest.mark.slow
async def test_poison_job_dead_lettered_after_max_worker_deaths(
    redis_url: str, tmp_path: Path
) -> None:
    """A job that kills every worker running it stops after max_worker_deaths, with why; the
    job submitted next to it is done."""
    prefix = f"poison{uuid.uuid4().hex[:6]}"
    s = qsettings(redis_url, prefix, max_worker_deaths=2, visibility_timeout_s=0.6)
    artifacts = tmp_path / "artifacts"
    q = QueueGenerator(s, ArtifactStore(artifacts), default_model="m")
    try:
        poison = await q.submit(req("poison pill"))
        assert poison.job_id is not None
        for n in (1, 2):
            with victim(s, f"victim{n}", artifacts) as proc:
                await asyncio.to_thread(proc.wait, 30)  # it dies on the poison job
        worker = Worker(ScriptedGenerator(ArtifactStore(artifacts)), s, consumer="heir")
        async with serving(worker):
            with pytest.raises(GeneratorError, match="poison job: 2 worker") as ei:
                await q.wait(poison.job_id, key=poison.key, timeout_s=30)
            assert "dead-letter" in str(ei.value)
            fine = await q.generate(req("innocent"))
        assert fine.image.sha256
        dead = await q.client.xrange(q.keys.dead)
        assert [f["job_id"] for _, f in dead] == [poison.job_id]
        assert (await q.status(poison.job_id))["deaths"] == "2"
    finally:
        await q.aclose()


# -- errors that cannot succeed on retry --------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "why"),
    [("unknown model", "not found"), ("missing image", "not in the artifact store")],
)
async def test_non_retryable_error_dead_lettered_at_once(
    redis_url: str, store: ArtifactStore, prompt: str, why: str
) -> None:
    prefix = f"fatal{uuid.uuid4().hex[:6]}"
    s = qsettings(redis_url, prefix, max_attempts=3)
    q = QueueGenerator(s, store, default_model="m")
    worker = Worker(ScriptedGenerator(store), s, consumer="w")
    try:
        async with serving(worker):
            with pytest.raises(GeneratorError, match="not retryable") as ei:
                await q.generate(req(prompt))
        assert why in str(ei.value) and "after 1 attempt" in str(ei.value)
        (_, fields), *_ = await q.client.xrange(q.keys.dead)
        assert fields["attempts"] == "1" and why in fields["error"]
        assert fields["retryable"] == "0"
    finally:
        await q.aclose()


async def test_retryable_error_uses_the_whole_budget(redis_url: str, store: ArtifactStore) -> None:
    prefix = f"flaky{uuid.uuid4().hex[:6]}"
    s = qsettings(redis_url, prefix, max_attempts=3)
    q = QueueGenerator(s, store, default_model="m")
    worker = Worker(ScriptedGenerator(store), s, consumer="w")
    try:
        async with serving(worker):
            with pytest.raises(GeneratorError, match="after 3 attempt"):
                await q.generate(req("flaky"))
        (_, fields), *_ = await q.client.xrange(q.keys.dead)
        assert fields["attempts"] == "3" and fields["retryable"] == "1"
        assert (await q.stats())["retries"] == 2
    finally:
        await q.aclose()


def test_retryable_classification() -> None:
    assert retryable(GeneratorError("CUDA out of memory"))
    assert retryable(RuntimeError("anything unexpected"))
    assert not retryable(ModelNotFoundError("no such model"))
    try:
        try:
            raise ArtifactNotFound("gone")
        except ArtifactNotFound as e:
            raise GeneratorError("init_image missing") from e
    except GeneratorError as wrapped:
        assert not retryable(wrapped)


# -- a visibility timeout that fits the job -----------------------------------------------


def test_visibility_derived_from_steps_size_and_measured_step_time() -> None:
    s = QueueSettings(min_visibility_s=10, step_time_s=1.0)
    w = Worker(NoopGenerator(ArtifactStore(Path("/nonexistent"))), s, default_steps=4)
    small = req("small", steps=2, width=64, height=64)
    big = req("big", steps=50, width=1024, height=1024)
    assert w.visibility_s([small]) == pytest.approx(10 + 2 * 2 * (64 * 64) / (512 * 512))
    assert w.visibility_s([big]) == pytest.approx(10 + 2 * 50 * 4.0)  # 4x the pixels of 512²
    assert w.visibility_s([big, big]) > w.visibility_s([big])  # a batch takes longer
    w.clock.observe(5.0, [req("measured", steps=50, width=512, height=512)])  # 0.1 s/step
    assert w.visibility_s([big]) == pytest.approx(10 + 2 * 50 * 0.4)
    assert Worker(w.generator, QueueSettings(visibility_timeout_s=7)).visibility_s([big]) == 7
    clock = StepClock(1.0, 4)
    clock.observe(1.0, [req("x", steps=None, width=512, height=512)])  # default steps count
    assert clock.rate == pytest.approx(1.0 / 4 / (512 * 512 / 1e6))


@pytest.mark.slow
async def test_dead_workers_job_reclaimed_after_its_own_timeout(
    redis_url: str, tmp_path: Path
) -> None:
    """No fixed visibility timeout: a small job whose worker died is taken over within a few
    seconds (min_visibility_s + its tiny expected time), not after a fixed 120 s."""
    prefix = f"vis{uuid.uuid4().hex[:6]}"
    s = qsettings(redis_url, prefix, min_visibility_s=1.0)
    assert s.visibility_timeout_s is None
    artifacts = tmp_path / "artifacts"
    q = QueueGenerator(s, ArtifactStore(artifacts), default_model="m")
    try:
        h = await q.submit(req("small job", steps=2))
        assert h.job_id is not None
        with victim(s, "victim", artifacts) as proc:
            await until(lambda: running(q, h.job_id or ""))
            vis_ms = int((await q.status(h.job_id))["visibility_ms"])
            assert 1000 <= vis_ms < 3000  # 2 steps of 64x64 at the default 1 s/step@512²
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        killed = time.monotonic()
        worker = Worker(ScriptedGenerator(ArtifactStore(artifacts)), s, consumer="heir")
        async with serving(worker):
            await q.wait(h.job_id, key=h.key, timeout_s=15)
        assert time.monotonic() - killed < 10
        assert (await q.status(h.job_id))["worker"] == "heir"
    finally:
        await q.aclose()


@pytest.mark.slow
async def test_heartbeat_extends_a_short_visibility(redis_url: str, store: ArtifactStore) -> None:
    """A job that runs far longer than its visibility timeout is never taken from a live
    worker: the heartbeat renews it, and an idle second worker keeps its hands off."""
    prefix = f"beat{uuid.uuid4().hex[:6]}"
    s = qsettings(redis_url, prefix, min_visibility_s=0.6, step_time_s=0.0001)
    q = QueueGenerator(s, store, default_model="m")
    busy = Worker(NoopGenerator(store, delay_s=3.0), s, consumer="busy")
    idle = Worker(NoopGenerator(store), s, consumer="idle")
    try:
        async with serving(busy):
            h = await q.submit(req("long job", steps=30))
            await until(lambda: running(q, h.job_id or ""), 10)
            async with serving(idle):
                await q.wait(h.job_id or "", key=h.key, timeout_s=20)
        status = await q.status(h.job_id or "")
        assert status["worker"] == "busy" and status["attempts"] == "1"
        stats = await q.stats()
        assert stats.get("reclaimed", 0) == 0 and stats.get("duplicates", 0) == 0
    finally:
        await q.aclose()
