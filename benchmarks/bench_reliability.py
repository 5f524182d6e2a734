"""Reliability of the Redis Streams job queue under worker crashes.

N jobs, W workers, one worker SIGKILLed at random every few seconds (and restarted, so W stay
up). Prints jobs submitted, completed, duplicated (generated again after a kill but stored once),
lost (must be 0) and the p50/p99 submit-to-result latency.

  python -m benchmarks.bench_reliability            # 200 jobs, 3 workers, noop backend
  python -m benchmarks.bench_reliability --quick    # smoke run (< 60 s)
  python -m benchmarks.bench_reliability --backend diffusers   # the tiny real pipeline

Needs redis-server on PATH (a private one is started on a free port).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from core.artifacts import ArtifactStore
from generators.base import GenerationRequest, GeneratorError
from generators.queue.client import QueueGenerator
from generators.settings import QueueSettings
from tests.support.redis_server import RedisServer
from tests.support.worker_process import WorkerProcess


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[idx]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="gw-bench-rel-"))
    artifacts = tmp / "artifacts"
    model: str | None = None
    if args.backend == "diffusers":
        from tests.support.tiny_pipeline import build_tiny_pipeline

        model = str(build_tiny_pipeline(tmp / "tiny"))
    prefix = f"rel{uuid.uuid4().hex[:6]}"
    with RedisServer() as server:
        extra = [
            "--visibility-timeout",
            str(args.visibility_timeout),
            "--max-attempts",
            str(args.max_attempts),
            "--shutdown-grace",
            "5",
        ]
        if args.backend == "noop":
            extra += ["--noop-delay", str(args.job_seconds)]

        def spawn(i: int) -> WorkerProcess:
            return WorkerProcess(
                name=f"w{i}",
                redis_url=server.url,
                prefix=prefix,
                artifacts=artifacts,
                logdir=tmp / "logs",
                model=model,
                backend=args.backend,
                extra=extra,
            )

        workers = {i: spawn(i) for i in range(args.workers)}
        for w in workers.values():
            w.wait_ready()
        settings = QueueSettings(
            redis_url=server.url,
            key_prefix=prefix,
            stream=f"{prefix}:jobs",
            group=f"{prefix}-workers",
            dead_letter_stream=f"{prefix}:dead",
            visibility_timeout_s=args.visibility_timeout,
            job_timeout_s=args.job_timeout,
        )
        client = QueueGenerator(settings, ArtifactStore(artifacts), default_model=model or "noop")
        latencies: list[float] = []
        failures: list[str] = []
        kills = 0
        next_id = args.workers

        async def one(i: int) -> None:
            await asyncio.sleep(i / args.rate)  # a steady arrival rate, not one burst
            req = GenerationRequest(
                prompt=f"job {i} {prefix}", width=64, height=64, steps=args.steps, seed=i
            )
            t0 = time.perf_counter()
            try:
                await client.generate(req)
                latencies.append(time.perf_counter() - t0)
            except GeneratorError as e:
                failures.append(str(e))

        async def chaos() -> None:
            nonlocal kills, next_id
            while True:
                await asyncio.sleep(rng.uniform(0.5, 1.5) * args.kill_every)
                victim = rng.choice(list(workers))
                await asyncio.to_thread(workers[victim].kill)
                kills += 1
                del workers[victim]
                workers[next_id] = spawn(next_id)  # keep the pool at W workers
                next_id += 1

        t_start = time.perf_counter()
        chaos_task = asyncio.create_task(chaos())
        await asyncio.gather(*(one(i) for i in range(args.jobs)))
        wall = time.perf_counter() - t_start
        chaos_task.cancel()
        await asyncio.gather(chaos_task, return_exceptions=True)
        stats = await client.stats()
        r = client.client
        stored = 0
        async for _ in r.scan_iter(match=f"{prefix}:result:*", count=1000):
            stored += 1
        dead = await r.xlen(settings.dead_letter_stream)
        await client.aclose()
        for w in workers.values():
            w.stop(10)
    return {
        "jobs": args.jobs,
        "workers": args.workers,
        "backend": args.backend,
        "kills": kills,
        "submitted": stats.get("submitted", 0),
        "completed": len(latencies),
        "results_stored": stored,
        "duplicated": stats.get("duplicates", 0),
        "reclaimed": stats.get("reclaimed", 0),
        "dead_lettered": dead,
        "lost": args.jobs - len(latencies),
        "failures": failures[:3],
        "p50_s": percentile(latencies, 50),
        "p99_s": percentile(latencies, 99),
        "mean_s": statistics.fmean(latencies) if latencies else float("nan"),
        "max_s": max(latencies, default=float("nan")),
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bench_reliability", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="Smoke run: 60 jobs, kills every 1 s.")
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--backend", choices=["noop", "diffusers"], default="noop")
    p.add_argument("--job-seconds", type=float, default=0.1, help="noop: time per job.")
    p.add_argument("--steps", type=int, default=4, help="Denoising steps per job.")
    p.add_argument("--rate", type=float, default=20.0, help="Jobs submitted per second.")
    p.add_argument("--kill-every", type=float, default=3.0, help="Mean seconds between kills.")
    p.add_argument("--visibility-timeout", type=float, default=2.0)
    p.add_argument("--max-attempts", type=int, default=5)
    p.add_argument("--job-timeout", type=float, default=300.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick:
        args.jobs, args.kill_every = min(args.jobs, 60), 1.0
    res = asyncio.run(run(args))
    print(
        f"reliability: {res['jobs']} jobs, {res['workers']} workers ({res['backend']}), "
        f"{res['kills']} SIGKILLs, visibility timeout {args.visibility_timeout}s"
    )
    print(f"  submitted      {res['submitted']}")
    print(f"  completed      {res['completed']}   (results stored: {res['results_stored']})")
    print(f"  duplicated     {res['duplicated']}   (re-generated after a kill; stored once)")
    print(f"  reclaimed      {res['reclaimed']}   (taken over after a worker died)")
    print(f"  dead-lettered  {res['dead_lettered']}")
    print(f"  lost           {res['lost']}   (must be 0)")
    print(
        f"  latency p50 {res['p50_s']:.3f}s  p99 {res['p99_s']:.3f}s  "
        f"mean {res['mean_s']:.3f}s  max {res['max_s']:.3f}s  wall {res['wall_s']:.1f}s"
    )
    for f in res["failures"]:
        print(f"  failure: {f}")
    if res["lost"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
