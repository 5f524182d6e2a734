"""The job queue's own cost: per-job overhead against a direct call and against Celery.

1. Overhead: the same no-op generator (it stores a small PNG, like a real job stores its image)
   called three ways, interleaved in rounds so a busy machine slows all three alike:
   directly in-process; through Redis Streams and one `groundwork worker` process; through
   Celery (Redis broker and result backend, one solo worker, acks_late: the usual peer).
   Prints p50/p99 of each, the queue's overhead over the direct call, and the ratio of the
   queue's overhead to Celery's.
2. Throughput: jobs/s with 1 and 4 worker processes, with no-op jobs (pure queue cost) and
   with jobs that take --job-seconds (a stand-in for GPU time, where workers add up).

  python -m benchmarks.bench_queue [--quick] [--no-throughput] [--no-celery]

Needs redis-server on PATH (a private one is started on a free port) and, for the peer line,
the `bench` extra (`pip install -e '.[bench]'`: celery, packaging).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.artifacts import ArtifactStore
from generators.base import GenerationRequest, GenerationResult
from generators.noop import NoopGenerator
from generators.queue.client import QueueGenerator
from generators.settings import QueueSettings
from tests.support.redis_server import RedisServer
from tests.support.worker_process import REPO, WorkerProcess

CELERY_TASK = "groundwork_bench.noop"


def qsettings(url: str, prefix: str) -> QueueSettings:
    return QueueSettings(
        redis_url=url,
        key_prefix=prefix,
        stream=f"{prefix}:jobs",
        group=f"{prefix}-workers",
        dead_letter_stream=f"{prefix}:dead",
        job_timeout_s=120,
    )


def request(i: int, tag: str) -> GenerationRequest:
    return GenerationRequest(
        prompt=f"bench {tag} {i}", width=64, height=64, steps=2, seed=i, model="noop"
    )


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def start_workers(
    url: str, prefix: str, artifacts: Path, logdir: Path, count: int, delay: float
) -> list[WorkerProcess]:
    workers = [
        WorkerProcess(
            name=f"{prefix}-w{i}",
            redis_url=url,
            prefix=prefix,
            artifacts=artifacts,
            logdir=logdir,
            backend="noop",
            extra=["--noop-delay", str(delay), "--log-level", "WARNING"],
        )
        for i in range(count)
    ]
    for w in workers:
        w.wait_ready()
    return workers


# -- the Celery peer -------------------------------------------------------------------------


def celery_app(url: str, artifacts: Path | None = None) -> Any:
    """The peer's app; with `artifacts` (worker side) it registers the no-op task."""
    from celery import Celery

    app = Celery("groundwork_bench", broker=url, backend=url)
    app.conf.update(
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        result_expires=3600,
    )
    if artifacts is not None:
        gen = NoopGenerator(ArtifactStore(artifacts))
        loop = asyncio.new_event_loop()

        @app.task(name=CELERY_TASK)
        def noop(raw: str) -> str:
            req = GenerationRequest.model_validate_json(raw)
            return loop.run_until_complete(gen.generate(req)).model_dump_json()

    return app


def celery_worker_main(url: str, artifacts: str) -> None:
    celery_app(url, Path(artifacts)).worker_main(
        [
            "worker",
            "--pool=solo",
            "--concurrency=1",
            "--loglevel=WARNING",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
        ]
    )


class CeleryPeer:
    def __init__(self, url: str, artifacts: Path, logdir: Path) -> None:
        logdir.mkdir(parents=True, exist_ok=True)
        self._log = open(logdir / "celery-worker.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.bench_queue",
                "--celery-worker",
                url,
                str(artifacts),
            ],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.app = celery_app(url)

    def call(self, req: GenerationRequest, timeout: float = 60.0) -> GenerationResult:
        raw = self.app.send_task(CELERY_TASK, args=[req.model_dump_json()]).get(timeout=timeout)
        return GenerationResult.model_validate_json(raw)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


# -- measurements ----------------------------------------------------------------------------


async def overhead(
    url: str, artifacts: Path, logdir: Path, n: int, rounds: int, with_celery: bool
) -> dict[str, list[float]]:
    prefix = f"lat{uuid.uuid4().hex[:6]}"
    store = ArtifactStore(artifacts)
    direct = NoopGenerator(store)
    workers = start_workers(url, prefix, artifacts, logdir, 1, 0.0)
    q = QueueGenerator(qsettings(url, prefix), store, default_model="noop")
    peer: CeleryPeer | None = None
    if with_celery:
        try:
            peer = CeleryPeer(url, artifacts, logdir)
        except ImportError:
            print("  (celery not installed: pip install -e '.[bench]' for the peer line)")
    out: dict[str, list[float]] = {"direct": [], "queue": [], "celery": []}
    try:
        for i in range(10):  # warm every path: imports, connections, scripts, caches
            await direct.generate(request(i, "warm-direct"))
            await q.generate(request(i, "warm-queue"))
            if peer is not None:
                await asyncio.to_thread(peer.call, request(i, "warm-celery"), 120.0)
        per_round = max(1, n // rounds)

        async def measure(kind: str, call: Callable[[GenerationRequest], Any], r: int) -> None:
            for i in range(per_round):
                req = request(r * per_round + i, f"{kind}-{prefix}")
                t0 = time.perf_counter()
                await call(req)
                out[kind].append(time.perf_counter() - t0)

        async def via_celery(req: GenerationRequest) -> GenerationResult:
            assert peer is not None
            return peer.call(req)  # blocking on purpose: a sequential round trip, no thread hop

        for r in range(rounds):
            await measure("direct", direct.generate, r)
            await measure("queue", q.generate, r)
            if peer is not None:
                await measure("celery", via_celery, r)
    finally:
        await q.aclose()
        for w in workers:
            w.stop()
        if peer is not None:
            peer.stop()
    return out


async def throughput(
    url: str, artifacts: Path, logdir: Path, workers: int, jobs: int, delay: float
) -> float:
    prefix = f"tp{uuid.uuid4().hex[:6]}"
    procs = start_workers(url, prefix, artifacts, logdir, workers, delay)
    q = QueueGenerator(qsettings(url, prefix), ArtifactStore(artifacts), default_model="noop")
    try:
        await q.generate(request(0, f"warm-{prefix}"))
        t0 = time.perf_counter()
        await asyncio.gather(*(q.generate(request(i, prefix)) for i in range(jobs)))
        return jobs / (time.perf_counter() - t0)
    finally:
        await q.aclose()
        for w in procs:
            w.stop()


def report_overhead(lat: dict[str, list[float]], n: int) -> None:
    d50, d99 = pct(lat["direct"], 50), pct(lat["direct"], 99)
    print(f"queue overhead ({n} sequential no-op jobs each, interleaved, 1 worker process):")
    rows = [("direct in-process call", "direct"), ("through Redis + worker", "queue")]
    if lat["celery"]:
        rows.append(("through Celery (peer)", "celery"))
    for label, kind in rows:
        xs = lat[kind]
        print(
            f"  {label:24s} p50 {pct(xs, 50) * 1e3:6.2f} ms   p99 {pct(xs, 99) * 1e3:6.2f} ms"
            f"   mean {statistics.fmean(xs) * 1e3:6.2f} ms"
        )
    q50, q99 = pct(lat["queue"], 50) - d50, pct(lat["queue"], 99) - d50
    print(
        f"  queue overhead vs direct  p50 {q50 * 1e3:6.2f} ms   p99 {q99 * 1e3:6.2f} ms"
        f"   (target <= 2 ms p50, <= 10 ms p99)"
    )
    if lat["celery"]:
        c50, c99 = pct(lat["celery"], 50) - d50, pct(lat["celery"], 99) - d50
        print(f"  Celery overhead vs direct p50 {c50 * 1e3:6.2f} ms   p99 {c99 * 1e3:6.2f} ms")
        print(
            f"  queue vs Celery           p50 {q50 / c50:6.2f}x     p99 {q99 / c99:6.2f}x"
            "   (overhead ratio; < 1 = cheaper than Celery)"
        )
    print(
        f"  (overheads: latency minus the direct call's p50 {d50 * 1e3:.2f} ms; "
        f"direct p99 {d99 * 1e3:.2f} ms)"
    )


async def measure(args: argparse.Namespace, url: str, artifacts: Path, logdir: Path) -> None:
    """The overhead figures, then (unless --no-throughput) jobs/s with 1 and 4 workers."""
    lat = await overhead(url, artifacts, logdir, args.n, args.rounds, args.celery)
    report_overhead(lat, args.n)
    if not args.throughput:
        return
    for delay in (0.0, args.job_seconds):
        what = "no-op jobs" if delay == 0 else f"{delay * 1e3:.0f} ms jobs"
        rates = {}
        for w in (1, 4):
            rates[w] = await throughput(url, artifacts, logdir, w, args.jobs, delay)
        print(
            f"throughput, {args.jobs} {what}: 1 worker {rates[1]:7.1f} jobs/s, "
            f"4 workers {rates[4]:7.1f} jobs/s  (x{rates[4] / rates[1]:.2f})"
        )


async def run(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="gw-bench-queue-"))
    # The store on tmpfs when there is one: the no-op's fsyncs would otherwise add the disk's
    # noise (shared with whatever else runs) to every path alike and blur the queue's cost.
    shm = Path("/dev/shm")
    store_dir = Path(tempfile.mkdtemp(prefix="gw-bench-queue-", dir=shm if shm.is_dir() else tmp))
    print(
        f"  (artifact store {store_dir}; load average {os.getloadavg()[0]:.2f} on "
        f"{os.cpu_count()} cores)"
    )
    try:
        with RedisServer() as server:
            await measure(args, server.url, store_dir / "artifacts", tmp / "logs")
    finally:
        shutil.rmtree(store_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--celery-worker"]:
        celery_worker_main(argv[1], argv[2])
        return
    p = argparse.ArgumentParser(prog="bench_queue", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="Smoke run (< 60 s).")
    p.add_argument("--n", type=int, default=400, help="Sequential jobs per path (overhead).")
    p.add_argument("--rounds", type=int, default=8, help="Interleaved rounds (overhead).")
    p.add_argument("--jobs", type=int, default=400, help="Jobs per throughput run.")
    p.add_argument("--job-seconds", type=float, default=0.05, help="Simulated GPU time per job.")
    p.add_argument("--no-throughput", dest="throughput", action="store_false")
    p.add_argument("--no-celery", dest="celery", action="store_false", help="Skip the peer.")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.jobs, args.rounds = min(args.n, 80), min(args.jobs, 80), min(args.rounds, 4)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
