"""Chaos: the job queue under worker SIGKILLs and Redis restarts, with and without persistence.

N jobs arrive at a steady rate; W noop workers serve them. Every few seconds a *busy* worker
is SIGKILLed and a replacement starts a few seconds later (slowly, as a real GPU worker
would). Mid-run Redis crashes without persistence (everything in it is lost) and comes back
with AOF (fsync on every write); later it crashes again and reloads its AOF. Prints:

  jobs done; lost (their client was told JobLostError); failed (any other error); silently
  lost (a client that got no answer: must be 0); duplicated (generated to completion twice:
  must be 0); stuck (queue state left queued/running/pending at the end: must be 0); and the
  recovery time after each fault (a kill: until the victim's jobs were done elsewhere; a
  restart: until the next job completed).

  python -m benchmarks.run chaos [--quick]

Then a slow-pool phase (issue 21.1): --pool-clients waiters submit while no worker runs, for
longer than twice the outage timeout (and redis-py's 5 s socket timeout), then one slow worker
serves them all. Redis stays up throughout, so every failure there is a false one (must be 0).

Bounded in time (--deadline). Uses the product's default visibility timeout (per job, at
least GROUNDWORK_QUEUE__MIN_VISIBILITY_S), so a killed worker's job waits about that long.
Needs redis-server on PATH (a private one is started on a free port).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from core.artifacts import ArtifactStore
from generators.base import GenerationRequest, GeneratorError, JobLostError
from generators.queue.client import QueueGenerator
from generators.settings import QueueSettings
from tests.support.redis_server import RedisServer
from tests.support.worker_process import WorkerProcess


@dataclass
class Outcome:
    status: str = "waiting"  # done | lost | failed | silent
    job_id: str | None = None
    ended: float | None = None
    error: str = ""


@dataclass
class Fault:
    at: float
    kind: str
    jobs: list[str] = field(default_factory=list)
    recovery_s: float | None = None
    note: str = ""


class Chaos:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.tmp = Path(tempfile.mkdtemp(prefix="gw-bench-chaos-"))
        self.prefix = f"chaos{uuid.uuid4().hex[:6]}"
        self.server = RedisServer()
        self.workers: dict[str, WorkerProcess] = {}
        self.next_worker = 0
        self.faults: list[Fault] = []
        self.outcomes: list[Outcome] = []
        self.t0 = 0.0
        self.settings = QueueSettings(
            redis_url=self.server.url,
            key_prefix=self.prefix,
            stream=f"{self.prefix}:jobs",
            group=f"{self.prefix}-workers",
            dead_letter_stream=f"{self.prefix}:dead",
            job_timeout_s=args.deadline,
            min_visibility_s=args.min_visibility,
            reconnect_s=5.0,
        )

    def now(self) -> float:
        return time.monotonic() - self.t0

    def spawn(self) -> None:
        name = f"w{self.next_worker}"
        self.next_worker += 1
        self.workers[name] = WorkerProcess(
            name=name,
            redis_url=self.server.url,
            prefix=self.prefix,
            artifacts=self.tmp / "artifacts",
            logdir=self.tmp / "logs",
            backend="noop",
            extra=["--noop-delay", str(self.args.job_seconds), "--log-level", "INFO"],
            env={"GROUNDWORK_QUEUE__MIN_VISIBILITY_S": str(self.args.min_visibility)},
        )

    async def kill_busy(self, q: QueueGenerator) -> None:
        r = q.client
        try:
            summary = await r.xpending(self.settings.stream, self.settings.group)
        except RedisError:  # Redis restarting: skip this kill
            return
        busy = [
            c["name"]
            for c in summary.get("consumers") or []
            if int(c["pending"]) > 0 and c["name"] in self.workers
        ]
        if not busy:
            return
        victim = self.rng.choice(busy)
        try:
            pending = await r.xpending_range(
                self.settings.stream, self.settings.group, "-", "+", 100, consumername=victim
            )
            jobs = []
            for p in pending:
                rows = await r.xrange(self.settings.stream, p["message_id"], p["message_id"])
                jobs += [fields["job_id"] for _, fields in rows]
        except RedisError:  # Redis restarting: kill anyway, jobs unknown
            jobs = []
        proc = self.workers.pop(victim)
        await asyncio.to_thread(proc.kill)
        self.faults.append(Fault(self.now(), f"SIGKILL {victim}", jobs))
        delay = self.rng.uniform(*self.args.replacement_delay)
        asyncio.get_running_loop().call_later(delay, self.spawn)

    async def restart_redis(self, appendonly: bool) -> None:
        kind = "Redis restart with AOF" if appendonly else "Redis restart, no persistence"
        self.faults.append(Fault(self.now(), kind))
        await asyncio.to_thread(self.server.restart, appendonly=True, down_s=self.args.down_s)

    async def chaos(self, q: QueueGenerator) -> None:
        restarts = [(self.args.restart_at[0], False), (self.args.restart_at[1], True)]
        next_kill = self.rng.uniform(0.5, 1.5) * self.args.kill_every
        while True:
            await asyncio.sleep(0.05)
            if restarts and self.now() >= restarts[0][0]:
                _, aof = restarts.pop(0)
                await self.restart_redis(aof)
            if self.now() >= next_kill:
                await self.kill_busy(q)
                next_kill = self.now() + self.rng.uniform(0.5, 1.5) * self.args.kill_every

    async def one(self, q: QueueGenerator, i: int, out: Outcome) -> None:
        await asyncio.sleep(i / self.args.rate)
        req = GenerationRequest(
            prompt=f"chaos {self.prefix} {i}", width=64, height=64, steps=4, seed=i
        )
        try:
            handle = await q.submit(req)
            out.job_id = handle.job_id
            assert handle.job_id is not None
            await q.wait(handle.job_id, key=handle.key)
            out.status = "done"
        except JobLostError as e:
            out.status, out.error = "lost", str(e)
        except GeneratorError as e:
            timed_out = "not finished within" in str(e)
            out.status, out.error = ("silent" if timed_out else "failed"), str(e)
        out.ended = self.now()

    async def run(self) -> dict[str, Any]:
        args = self.args
        self.server.start()
        for _ in range(args.workers):
            self.spawn()
        for w in self.workers.values():
            w.wait_ready()
        q = QueueGenerator(self.settings, ArtifactStore(self.tmp / "artifacts"), default_model="m")
        self.t0 = time.monotonic()
        self.outcomes = [Outcome() for _ in range(args.jobs)]
        clients = [asyncio.create_task(self.one(q, i, o)) for i, o in enumerate(self.outcomes)]
        chaos = asyncio.create_task(self.chaos(q))
        _, waiting = await asyncio.wait(clients, timeout=args.deadline)
        chaos.cancel()
        await asyncio.gather(chaos, return_exceptions=True)
        for t in waiting:
            t.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        for o in self.outcomes:
            if o.status == "waiting":
                o.status, o.error = "silent", "no answer by the deadline"
        wall = self.now()
        await asyncio.sleep(2.0)  # let workers settle anything in flight
        stuck = await self.stuck(q)
        dead = await q.client.xlen(self.settings.dead_letter_stream)
        await q.aclose()
        for w in list(self.workers.values()):
            await asyncio.to_thread(w.stop, 10)
        self.server.stop()
        self.recovery()
        logs = [p.read_text(errors="replace") for p in (self.tmp / "logs").glob("*.log")]
        return {
            "wall": wall,
            "stuck": stuck,
            "dead": dead,
            "duplicated": sum(x.count("result already stored by another worker") for x in logs),
        }

    async def stuck(self, q: QueueGenerator) -> int:
        r = q.client
        pending = (await r.xpending(self.settings.stream, self.settings.group))["pending"]
        lag = 0
        for g in await r.xinfo_groups(self.settings.stream):
            lag += int(g.get("lag") or 0)
        unfinished = 0
        async for key in r.scan_iter(match=f"{self.prefix}:job:*", count=1000):
            if await r.hget(key, "state") in ("queued", "running"):
                unfinished += 1
        return int(pending) + lag + unfinished

    def recovery(self) -> None:
        ended = {o.job_id: o for o in self.outcomes if o.job_id}
        done_times = sorted(o.ended for o in self.outcomes if o.status == "done" and o.ended)
        for f in self.faults:
            if f.kind.startswith("SIGKILL"):
                outs = [ended[j] for j in f.jobs if j in ended]
                if outs and all(o.status == "done" and o.ended for o in outs):
                    f.recovery_s = max(o.ended or 0 for o in outs) - f.at
                    f.note = f"until its {len(outs)} job(s) were done by another worker"
                else:
                    f.note = f"{len(f.jobs)} job(s): " + ", ".join(o.status for o in outs)
            else:
                after = [t for t in done_times if t > f.at]
                if after:
                    f.recovery_s = after[0] - f.at
                    f.note = "until the next job completed"


async def slow_pool(args: argparse.Namespace) -> dict[str, Any]:
    """Waiters outlasting an empty, then busy, pool while Redis is up: none may fail."""
    from generators.noop import NoopGenerator
    from generators.queue.worker import Worker

    prefix = f"pool{uuid.uuid4().hex[:6]}"
    tmp = Path(tempfile.mkdtemp(prefix="gw-bench-pool-"))
    server = RedisServer().start()
    settings = QueueSettings(
        redis_url=server.url,
        key_prefix=prefix,
        stream=f"{prefix}:jobs",
        group=f"{prefix}-workers",
        dead_letter_stream=f"{prefix}:dead",
        outage_timeout_s=args.pool_outage,
        job_timeout_s=args.pool_idle + args.pool_clients * args.job_seconds + 60,
        block_ms=200,
    )
    store = ArtifactStore(tmp / "artifacts")
    clients = [QueueGenerator(settings, store, default_model="m") for _ in range(4)]
    t0 = time.monotonic()
    waits: list[float] = []

    async def wait_one(i: int) -> None:
        req = GenerationRequest(prompt=f"pool {prefix} {i}", width=64, height=64, steps=2)
        await clients[i % len(clients)].generate(req)
        waits.append(time.monotonic() - t0)

    tasks = [asyncio.create_task(wait_one(i)) for i in range(args.pool_clients)]
    await asyncio.sleep(args.pool_idle)
    failed_early = sum(t.done() for t in tasks)
    worker = Worker(NoopGenerator(store, delay_s=args.job_seconds), settings, consumer="slow")
    serving = asyncio.create_task(worker.run())
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    worker.request_stop()
    await serving
    await worker.aclose()
    for c in clients:
        await c.aclose()
    server.stop()
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    return {
        "clients": args.pool_clients,
        "done": len(outcomes) - len(errors),
        "false_failures": len(errors),
        "failed_while_idle": failed_early,
        "shortest_wait": min(waits, default=0.0),
        "longest_wait": max(waits, default=0.0),
        "error": str(errors[0])[:200] if errors else "",
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bench_chaos", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="Smoke size: 60 jobs, about a minute.")
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--rate", type=float, default=4.0, help="Jobs submitted per second.")
    p.add_argument("--job-seconds", type=float, default=0.3, help="Time per (noop) job.")
    p.add_argument("--kill-every", type=float, default=4.0, help="Mean seconds between kills.")
    p.add_argument(
        "--replacement-delay", type=float, nargs=2, default=(2.0, 4.0), metavar=("MIN", "MAX")
    )
    p.add_argument(
        "--restart-at", type=float, nargs=2, default=(15.0, 35.0), metavar=("PLAIN", "AOF")
    )
    p.add_argument("--down-s", type=float, default=0.5, help="Seconds Redis stays down.")
    p.add_argument("--min-visibility", type=float, default=10.0, help="Product default: 10.")
    p.add_argument("--deadline", type=float, default=180.0, help="Hard cap on the run.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pool-clients", type=int, default=40, help="Slow-pool phase waiters.")
    p.add_argument(
        "--pool-outage", type=float, default=2.0, help="Slow-pool phase outage_timeout_s."
    )
    p.add_argument(
        "--pool-idle",
        type=float,
        default=None,
        help="Seconds without a worker (default: > 2x outage timeout and > 5 s socket timeout).",
    )
    args = p.parse_args(argv)
    if args.pool_idle is None:
        args.pool_idle = max(2.5 * args.pool_outage, 6.0 + args.pool_outage)
    if args.quick:
        args.jobs, args.rate, args.kill_every = min(args.jobs, 60), 6.0, 2.5
        args.restart_at, args.min_visibility, args.deadline = (3.0, 7.0), 3.0, 60.0
    chaos = Chaos(args)
    res = asyncio.run(chaos.run())
    counts = {s: sum(o.status == s for o in chaos.outcomes) for s in ("done", "lost", "failed")}
    silent = sum(o.status == "silent" for o in chaos.outcomes)
    kills = sum(f.kind.startswith("SIGKILL") for f in chaos.faults)
    print(
        f"chaos: {args.jobs} jobs, {args.workers} workers (noop, {args.job_seconds}s jobs), "
        f"{kills} SIGKILLs of busy workers (replacements after {args.replacement_delay[0]:g}-"
        f"{args.replacement_delay[1]:g}s), Redis restarted without persistence and with AOF"
    )
    print(f"  jobs done                        {counts['done']}")
    print(f"  lost, reported to the client     {counts['lost']}   (JobLostError)")
    print(f"  failed (other errors)            {counts['failed']}   (dead-lettered: {res['dead']})")
    print(f"  silently lost                    {silent}   (must be 0)")
    print(f"  duplicated                       {res['duplicated']}   (must be 0)")
    print(f"  stuck                            {res['stuck']}   (must be 0)")
    print("  recovery after each fault:")
    for f in chaos.faults:
        rec = f"{f.recovery_s:6.2f}s" if f.recovery_s is not None else "     - "
        print(f"    t={f.at:6.1f}s  {rec}  {f.kind:32s} {f.note}")
    for o in [o for o in chaos.outcomes if o.status in ("failed", "silent")][:3]:
        print(f"  {o.status}: {o.error[:200]}")
    print(f"  wall {res['wall']:.1f}s")
    pool = asyncio.run(slow_pool(args))
    print(
        f"slow pool: {pool['clients']} waiters, no worker for {args.pool_idle:g}s "
        f"(outage timeout {args.pool_outage:g}s, Redis up), then 1 worker "
        f"({args.job_seconds}s jobs)"
    )
    print(f"  jobs done                        {pool['done']}")
    print(f"  false failures                   {pool['false_failures']}   (must be 0)")
    print(
        f"  waits                            {pool['shortest_wait']:.1f}s to "
        f"{pool['longest_wait']:.1f}s (all > 2x outage timeout)"
    )
    if pool["error"]:
        print(f"  failed: {pool['error']}")
    if silent or res["duplicated"] or res["stuck"] or pool["false_failures"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
