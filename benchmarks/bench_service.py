"""Load on the HTTP service: many concurrent runs through the real API layer and Runner.

The server (`groundwork serve`'s app, a subprocess on loopback) runs the real Runner with the
scripted OpenAI-compatible LLM and a no-op generator, so what is measured is the service: auth,
limits, durable acceptance, SQLite event logs, SSE fan-out, the LangGraph run loop. Per round,
N clients each POST /v1/runs at once, follow their run's events to the end, then GET it.
Prints completed runs, errors, p50/p99 of accept (POST), read (GET) and run-to-done latency,
and the server's RSS after each round (a leak shows as growth from round to round).

  python -m benchmarks.run service            # 200 concurrent runs x 3 rounds
  python -m benchmarks.run service --quick    # 40 x 3
  python -m benchmarks.run service --replicas 1,2   # SQLite x1, PostgreSQL x1 and x2

With PostgreSQL (a throwaway database on 127.0.0.1:5432) the replicas share run records, event
logs, leases and checkpoints; the closing table gives runs/s and server-side p50/p99 per store
and replica count, and the ratio to the first configuration.

Needs redis-server on PATH (a private one is started on a free port).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path
from typing import Any

import httpx

from tests.support.redis_server import RedisServer, free_port

TOKEN = "bench-token-0123456789abcdef"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the server side (a subprocess: `python -m benchmarks.bench_service --serve ...`) -----------
def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from agent.services import Services
    from agent.settings import Settings
    from generators.base import Generator
    from generators.noop import NoopGenerator
    from service.app import create_app
    from service.logs import configure_json_logging
    from service.runs import RunnerLike, default_runner_factory
    from service.settings import ServiceSettings

    class NoopServices(Services):
        """Services whose generator is the no-op one (flat 8x8 images, no model)."""

        def generator(self) -> Generator:
            if self._generator is None:
                self._generator = NoopGenerator(self.store)
            return self._generator

    def factory(settings: Settings, services: Services) -> RunnerLike:
        if args.runner == "instant":
            from tests.service.fakes import FakeRunner

            instant: RunnerLike = FakeRunner(services, delay_s=0.0)
            return instant
        return default_runner_factory(settings, NoopServices(settings))

    work = Path(args.work)
    store = {"url": args.pg_url} if args.pg_url else {}
    settings = Settings.model_validate(
        {
            "store": store,
            "llm": {"base_url": args.llm, "model": "scripted-llm", "max_retries": 0},
            "generator": {"width": 64, "height": 64, "steps": 2},
            "artifacts": {"root": str(work / "artifacts")},
            "runs_dir": str(work / "runs"),
            "checkpoint_db": str(work / "checkpoints.sqlite"),
            "traces_dir": str(work / "traces"),
            "tools": {"text_provider": "none", "image_provider": "none", "cache_enabled": False},
            "retrieval": {"kb_dir": str(work / "kb")},
        }
    )
    cfg = ServiceSettings.model_validate(
        {
            "tokens": {"bench": TOKEN},
            "db": str(work / "service.sqlite"),
            "redis_url": args.redis,
            "key_prefix": f"gw-bench-{args.prefix}",
            "rate_limit_per_minute": 1_000_000,
            "max_concurrent_runs": 100_000,
            "max_running": args.max_running,
            "max_queued": 100_000,
            "shutdown_grace_s": 0,
        }
    )
    app = create_app(settings, cfg, runner_factory=factory)
    configure_json_logging("info")  # the access log gives the server-side latencies
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_config=None,
        access_log=False,
        timeout_keep_alive=30,  # as `groundwork serve`
    )


# -- the client side --------------------------------------------------------------------------
async def one_run(client: httpx.AsyncClient, i: int, stats: dict[str, Any]) -> None:
    t0 = time.perf_counter()
    try:
        r = await client.post("/v1/runs", json={"prompt": f"a red apple on a table, take {i}"})
        stats["accept"].append(time.perf_counter() - t0)
        if r.status_code != 202:
            stats["errors"].append(f"POST {r.status_code}")
            return
        run_id = r.json()["id"]
        last = 0
        for _ in range(5):  # reconnect with Last-Event-ID if a stream drops
            headers = {"Last-Event-ID": str(last)}
            async with client.stream("GET", f"/v1/runs/{run_id}/events", headers=headers) as s:
                if s.status_code == 204:
                    break
                async for line in s.aiter_lines():
                    if line.startswith("id:"):
                        last = int(line[3:])
            status = (await client.get(f"/v1/runs/{run_id}")).json()["status"]
            if status not in ("queued", "running"):
                break
        stats["run"].append(time.perf_counter() - t0)
        t1 = time.perf_counter()
        r = await client.get(f"/v1/runs/{run_id}")
        stats["read"].append(time.perf_counter() - t1)
        if r.json()["status"] == "done":
            stats["completed"] += 1
        else:
            stats["errors"].append(f"run {r.json()['status']}: {r.json()['error']}")
    except httpx.HTTPError as e:
        stats["errors"].append(f"{type(e).__name__} on {e.request.method} {e.request.url.path}")


async def round_(urls: list[str], n: int, timeout: float) -> dict[str, Any]:
    """n runs at once, spread round-robin over the replicas' URLs."""
    stats: dict[str, Any] = {"accept": [], "read": [], "run": [], "errors": [], "completed": 0}
    limits = httpx.Limits(max_connections=n * 2 + 10, max_keepalive_connections=n * 2 + 10)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=timeout)
            )
            for url in urls
        ]
        t0 = time.perf_counter()
        tasks = [
            asyncio.create_task(one_run(clients[i % len(clients)], i, stats)) for i in range(n)
        ]
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        stats["errors"] += [f"timed out after {timeout:.0f} s"] * len(pending)
        stats["wall"] = time.perf_counter() - t0
    return stats


def ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1000:7.1f}"


def server_latencies(log: Path, offset: int) -> tuple[dict[str, list[float]], int]:
    """Seconds per request from the server's JSON access log, by route, after `offset`."""
    by_route: dict[str, list[float]] = {"POST /v1/runs": [], "GET /v1/runs/{id}": []}
    with log.open("rb") as f:
        f.seek(offset)
        data = f.read()
    for raw in data.splitlines():
        if b'"service.access"' not in raw:
            continue
        entry = json.loads(raw)
        path = str(entry["path"])
        if entry["method"] == "POST" and path == "/v1/runs":
            by_route["POST /v1/runs"].append(entry["ms"] / 1000)
        elif entry["method"] == "GET" and path.startswith("/v1/runs/") and path.count("/") == 3:
            by_route["GET /v1/runs/{id}"].append(entry["ms"] / 1000)
    return by_route, offset + len(data)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 runs per round")
    parser.add_argument("--runs", type=int, default=200, help="concurrent runs per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-running", type=int, default=200, help="server's run slots")
    parser.add_argument("--timeout", type=float, default=300.0, help="cap per round, seconds")
    parser.add_argument(
        "--runner",
        choices=["real", "instant"],
        default="real",
        help="real: graphs.runner.Runner (scripted LLM, no-op generator); instant: a stand-in "
        "that emits the same events at once (the API layer alone)",
    )
    parser.add_argument("--keep", help="work folder to keep (server.log, databases)")
    parser.add_argument(
        "--replicas", default="1", help="comma-separated replica counts, e.g. 1,2 (API processes)"
    )
    parser.add_argument(
        "--stores",
        default="sqlite,postgres",
        help="run stores to compare: sqlite (one process) and/or postgres (a throwaway database "
        "on 127.0.0.1:5432, GROUNDWORK_TEST_POSTGRES)",
    )
    parser.add_argument("--pg-url", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--llm", help=argparse.SUPPRESS)
    parser.add_argument("--redis", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args)
        return
    n = 40 if args.quick else args.runs
    replicas = [int(r) for r in args.replicas.split(",")]
    stores = [s.strip() for s in args.stores.split(",")]
    from tests.support import postgres
    from tests.support.scripted_llm import ScriptedLLM

    configs = [(store, k) for store in stores for k in replicas]
    llm = ScriptedLLM().start()
    runs_needed = n * (args.rounds + 1) + 10
    llm.add("GapReport", *([{"gaps": []}] * (runs_needed * len(configs))))
    results: list[tuple[str, int, dict[str, Any]]] = []
    try:
        with RedisServer() as redis:
            for store, k in configs:
                if store == "sqlite" and k > 1:
                    print(f"\n--- sqlite x{k}: skipped (a SQLite store serves one process) ---")
                    continue
                if store == "postgres" and (reason := postgres.unavailable()) is not None:
                    print(f"\n--- postgres x{k}: skipped ({reason}) ---")
                    continue
                print(f"\n--- {store} store, {k} replica(s) ---", flush=True)
                with ExitStack() as stack:
                    pg_url = (
                        stack.enter_context(postgres.throwaway_database())
                        if store == "postgres"
                        else None
                    )
                    tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="gw-bench-svc-"))
                    work = Path(args.keep or tmp) / f"{store}-{k}"
                    work.mkdir(parents=True, exist_ok=True)
                    summary = bench(args, n, k, llm.base_url, redis.url, work, pg_url)
                    results.append((store, k, summary))
    finally:
        llm.stop()
    if len(results) > 1:
        print("\nstore     replicas | runs/s | POST server p50   p99 | GET server p50   p99")
        base = results[0][2]["rate"]
        for store, k, summary in results:
            post, get = summary["post"], summary["get"]
            print(
                f"{store:9s} {k:8d} | {summary['rate']:6.1f} |      {ms(post, 50)} "
                f"{ms(post, 99)} |     {ms(get, 50)} {ms(get, 99)}   "
                f"({summary['rate'] / base:.2f}x {results[0][0]} x{results[0][1]})"
            )


def bench(
    args: argparse.Namespace,
    n: int,
    replicas: int,
    llm_url: str,
    redis_url: str,
    work: Path,
    pg_url: str | None,
) -> dict[str, Any]:
    """Start `replicas` server processes on one store, run the rounds, print them; returns
    runs/s and the server-side POST/GET latencies over all rounds."""
    prefix = os.urandom(4).hex()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    procs: list[tuple[subprocess.Popen[bytes], str, Path]] = []
    try:
        for r in range(replicas):
            port = free_port()
            log = work / f"server-{r}.log"
            cmd = [sys.executable, "-m", "benchmarks.bench_service", "--serve", "--port", str(port)]
            cmd += ["--work", str(work), "--llm", llm_url, "--redis", redis_url]
            cmd += ["--max-running", str(args.max_running), "--prefix", prefix]
            cmd += ["--runner", args.runner]
            cmd += ["--pg-url", pg_url] if pg_url else []
            with log.open("wb") as out:
                proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
            procs.append((proc, f"http://127.0.0.1:{port}", log))
            # one at a time: replicas that set up the PostgreSQL schema at the same moment can
            # wait on each other (graphs/store.py's set-up lock, see the closing note)
            url = procs[-1][1]
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"server did not start:\n{log.read_text()[-2000:]}")
                time.sleep(0.2)
        urls = [url for _, url, _ in procs]
        warm = asyncio.run(round_(urls, 5 * replicas, args.timeout))  # imports, compile, caches
        offsets = [server_latencies(log, 0)[1] for _, _, log in procs]
        rss = ", ".join(f"{rss_mib(p.pid):.0f}" for p, _, _ in procs)
        print(
            f"servers {[p.pid for p, _, _ in procs]}: warm-up {warm['completed']}/{5 * replicas} "
            f"done, RSS {rss} MiB; {n} concurrent runs x {args.rounds} rounds; "
            f"runner={args.runner} max_running={args.max_running}",
            flush=True,
        )
        print(
            "latencies in ms; server = the servers' own time per request (access logs), "
            "client = as the load generator saw it (includes its own queueing)"
        )
        print(
            "round done err wall_s runs/s | POST server p50   p99 | POST client p50   p99 "
            "| GET server p50   p99 | run-to-done p50     p99 | server CPU s | RSS MiB"
        )
        all_post: list[float] = []
        all_get: list[float] = []
        done = 0
        wall = 0.0
        errors = 0
        for k in range(1, args.rounds + 1):
            cpu0 = sum(cpu_s(p.pid) for p, _, _ in procs)
            s = asyncio.run(round_(urls, n, args.timeout))
            s["cpu"] = sum(cpu_s(p.pid) for p, _, _ in procs) - cpu0
            time.sleep(0.5)  # let the last access lines reach the logs
            post: list[float] = []
            get: list[float] = []
            for i, (_, _, log) in enumerate(procs):
                server, offsets[i] = server_latencies(log, offsets[i])
                post += server["POST /v1/runs"]
                get += server["GET /v1/runs/{id}"]
            all_post += post
            all_get += get
            done += s["completed"]
            wall += s["wall"]
            errors += len(s["errors"])
            rss_now = max(rss_mib(p.pid) for p, _, _ in procs)
            print(
                f"{k:5d} {s['completed']:4d} {len(s['errors']):3d} {s['wall']:6.1f} "
                f"{s['completed'] / s['wall']:6.1f} |      {ms(post, 50)} {ms(post, 99)} "
                f"|      {ms(s['accept'], 50)} {ms(s['accept'], 99)} "
                f"|     {ms(get, 50)} {ms(get, 99)} "
                f"|       {ms(s['run'], 50)} {ms(s['run'], 99)} | {s['cpu']:12.1f} "
                f"| {rss_now:7.0f}",
                flush=True,
            )
            for err in sorted(set(s["errors"]))[:5]:
                print(f"      error: {err}")
        print(f"completed {done}/{n * args.rounds}, errors {errors}")
        return {"rate": done / wall if wall else 0.0, "post": all_post, "get": all_get}
    finally:
        for proc, _, _ in procs:
            proc.terminate()
        for proc, _, _ in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    main(sys.argv[1:])
