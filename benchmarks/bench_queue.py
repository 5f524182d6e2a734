"""The job queue's own cost: per-job overhead against a direct call, and throughput.

1. Overhead: the same no-op generator called directly in-process vs through Redis Streams and
   a worker process (sequential round trips). Prints both latencies, the difference (the
   queue's overhead per job) and the ratio.
2. Throughput: jobs/s with 1 and 4 worker processes, with no-op jobs (pure queue cost) and
   with jobs that take --job-seconds (a stand-in for GPU time, where workers add up).

  python -m benchmarks.bench_queue [--quick]

Needs redis-server on PATH (a private one is started on a free port).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from generators.artifacts import ArtifactStore
from generators.base import GenerationRequest
from generators.noop import NoopGenerator
from generators.queue import QueueGenerator
from generators.redis_server import RedisServer
from generators.settings import QueueSettings
from generators.worker_process import WorkerProcess


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
    return GenerationRequest(prompt=f"bench {tag} {i}", width=64, height=64, steps=2, seed=i)


async def direct_latency(store: ArtifactStore, n: int) -> float:
    gen = NoopGenerator(store)
    for i in range(5):
        await gen.generate(request(i, "warm-direct"))
    t0 = time.perf_counter()
    for i in range(n):
        await gen.generate(request(i, "direct"))
    return (time.perf_counter() - t0) / n


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


async def queue_latency(url: str, artifacts: Path, logdir: Path, n: int) -> list[float]:
    prefix = f"lat{uuid.uuid4().hex[:6]}"
    workers = start_workers(url, prefix, artifacts, logdir, 1, 0.0)
    q = QueueGenerator(qsettings(url, prefix), ArtifactStore(artifacts), default_model="noop")
    try:
        for i in range(5):
            await q.generate(request(i, f"warm-{prefix}"))
        out = []
        for i in range(n):
            t0 = time.perf_counter()
            await q.generate(request(i, prefix))
            out.append(time.perf_counter() - t0)
        return out
    finally:
        await q.aclose()
        for w in workers:
            w.stop()


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


async def run(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="gw-bench-queue-"))
    artifacts, logdir = tmp / "artifacts", tmp / "logs"
    store = ArtifactStore(artifacts)
    with RedisServer() as server:
        direct = await direct_latency(store, args.n)
        lat = await queue_latency(server.url, artifacts, logdir, args.n)
        queued = statistics.fmean(lat)
        print(f"queue overhead ({args.n} sequential no-op jobs, 1 worker process):")
        print(f"  direct in-process call   {direct * 1e3:8.2f} ms/job")
        print(
            f"  through Redis + worker   {queued * 1e3:8.2f} ms/job   "
            f"(p50 {statistics.median(lat) * 1e3:.2f} ms, "
            f"p99 {sorted(lat)[int(0.99 * (len(lat) - 1))] * 1e3:.2f} ms)"
        )
        print(
            f"  overhead                 {(queued - direct) * 1e3:8.2f} ms/job   "
            f"ratio {queued / direct:.1f}x"
        )
        for delay in (0.0, args.job_seconds):
            what = "no-op jobs" if delay == 0 else f"{delay * 1e3:.0f} ms jobs"
            rates = {}
            for w in (1, 4):
                rates[w] = await throughput(server.url, artifacts, logdir, w, args.jobs, delay)
            print(
                f"throughput, {args.jobs} {what}: 1 worker {rates[1]:7.1f} jobs/s, "
                f"4 workers {rates[4]:7.1f} jobs/s  (x{rates[4] / rates[1]:.2f})"
            )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bench_queue", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="Smoke run (< 60 s).")
    p.add_argument("--n", type=int, default=300, help="Sequential jobs for the overhead figure.")
    p.add_argument("--jobs", type=int, default=400, help="Jobs per throughput run.")
    p.add_argument("--job-seconds", type=float, default=0.05, help="Simulated GPU time per job.")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.jobs = min(args.n, 60), min(args.jobs, 80)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
