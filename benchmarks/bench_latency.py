"""Time to image: `python -m benchmarks.run latency [--quick]`.

Instant fakes with set delays: a scripted LLM on loopback answering after `--llm` seconds, a
search provider (ddgs faked at its boundary) answering after `--search` seconds, and a no-op
generator with a set load time (`--load`) and per-image time (`--image`). Everything between is
the product: Runner, graph, SQLite checkpoints, run folder.

Reported, measured in one run:
- wall time of a run against its critical path, max(load, LLM + research) + image: warm-up
  overlaps the load with analysis and research (target <= 1.1x); the same run with warm-up off,
  for comparison;
- orchestration overhead per run with everything instant (graph, checkpointing, run folder):
  wall time minus the LLM's and the generator's own time, p50 and p90, offline (no network and
  HF_HUB_OFFLINE unset, as a user's machine without a connection: target p90 < 30 ms; a hub
  lookup on the run's path shows here as a 5 s tail, issue 21.4);
- peak RSS of one default `groundwork run` (the CLI in a child process: embedded SmolLM2, the
  tiny diffusers pipeline in place of the default model, default tools, no network): the CLI
  process's own peak (target < 1.1 GB) and, apart, its largest child (the llama.cpp server).
  `--no-rss` skips it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RSS_TARGET_MB = 1100


def _world(llm_delay: float, search_delay: float) -> Any:
    from tests.support.scripted_llm import ScriptedLLM
    from tests.support.web import FakeDDGS, install_fake_ddgs

    class SlowLLM(ScriptedLLM):
        def _answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            time.sleep(llm_delay)
            return super()._answer(body)

    class SlowDDGS(FakeDDGS):
        def text(self, query: str, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
            time.sleep(search_delay)
            return [{"title": "Zephyr X1", "href": "http://127.0.0.1:9/x", "body": "orange shell"}]

        def images(self, query: str, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
            time.sleep(search_delay)
            return []

    install_fake_ddgs()
    import ddgs

    ddgs.DDGS = SlowDDGS  # type: ignore[misc,assignment]
    return SlowLLM().start()


def _generator(store: Any, load_s: float, image_s: float) -> Any:
    from generators.noop import NoopGenerator

    class LoadingNoop(NoopGenerator):
        """A pipeline that takes `load_s` to load (once) and `image_s` per image."""

        def __init__(self) -> None:
            super().__init__(store, delay_s=image_s)
            self._load: asyncio.Task[None] | None = None
            self.loads = 0

        async def _do_load(self) -> None:
            self.loads += 1
            await asyncio.sleep(load_s)

        async def warm(self, model: str | None = None, *, wait: bool = False) -> None:
            if self._load is None:
                self._load = asyncio.ensure_future(self._do_load())
            if wait:
                await self._load

        async def generate(self, request: Any, on_progress: Any = None, **kw: Any) -> Any:
            await self.warm(wait=True)
            return await super().generate(request, on_progress, **kw)

        async def aclose(self) -> None:
            if self._load is not None:
                self._load.cancel()

    return LoadingNoop()


def _settings(tmp: Path, llm_url: str, research: bool) -> Any:
    from agent.settings import Settings

    return Settings.model_validate(
        {
            "llm": {"base_url": llm_url, "model": "scripted-llm"},
            "generator": {"width": 64, "height": 64, "steps": 2},
            "artifacts": {"root": str(tmp / "artifacts")},
            "tools": {
                "cache_enabled": False,
                "text_provider": "ddgs" if research else "none",
                "image_provider": "ddgs" if research else "none",
            },
            "agent": {"browse_per_gap": 0},
            "retrieval": {"kb_dir": str(tmp / "no-kb")},
            "runs_dir": str(tmp / "runs"),
            "checkpoint_db": str(tmp / "checkpoints.sqlite"),
            "traces_dir": str(tmp / "traces"),
        }
    )


GAP = {
    "kind": "entity",
    "span": "Zephyr X1",
    "text_queries": ["Zephyr X1 drone"],
    "image_queries": [],
}


async def _one_run(
    tmp: Path, llm: Any, *, load_s: float, image_s: float, warm: bool, research: bool, n: int
) -> list[dict[str, float]]:
    from agent.services import Services
    from graphs.runner import Runner

    settings = _settings(tmp, llm.base_url, research)
    out = []
    keep = Services(settings)  # instant runs share one Runner, as a server or a chat does
    shared = None if load_s else await Runner(settings, keep).__aenter__()
    for i in range(n):
        if research:
            llm.add("GapReport", {"gaps": [GAP]})
            llm.add("GroundedPrompt", {"gen_prompt": "an orange drone over a lake"})
        else:
            llm.add("GapReport", {"gaps": []})
        # runs with a load time each get a cold generator: the load is what is measured
        services = keep if shared else Services(settings)
        if services._generator is None:
            services._generator = _generator(services.store, load_s, image_s)
        if not warm:
            services.warm_up = lambda settings=None: None  # type: ignore[method-assign]
        llm_time = 0.0

        def on_event(event: Any) -> None:
            nonlocal llm_time
            if event["kind"] == "llm":
                llm_time += event["data"].get("latency_s") or 0.0

        async with (shared and _Borrowed(shared)) or Runner(settings, services) as runner:
            t0, c0 = time.perf_counter(), time.process_time()
            outcome = await runner.run(
                "the Zephyr X1 drone" if research else "a red apple",
                thread_id=f"bench-{warm}-{research}-{i}",
                on_event=on_event,
            )
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if not shared:
            await services.aclose()
        assert outcome.status == "done", outcome.error
        gen_time = float((outcome.output.get("image") or {}).get("elapsed_s") or 0.0)
        out.append({"wall": wall, "llm": llm_time, "gen": gen_time, "cpu": cpu})
    if shared is not None:
        await shared.__aexit__(None, None, None)
        await keep.aclose()
    return out


class _Borrowed:
    """An already open Runner used in an `async with` without closing it."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner

    async def __aenter__(self) -> Any:
        return self.runner

    async def __aexit__(self, *exc: object) -> None:
        return None


_NET: list[dict[str, int]] = []
"""While the runs go, host name -> lookups of any host other than loopback: a network
call on a run's path (issue 21.4) shows here even when it fails fast."""


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "socket.getaddrinfo" and _NET:
        host = str(args[0])
        if host not in ("127.0.0.1", "localhost", "::1", "None"):
            _NET[-1][host] = _NET[-1].get(host, 0) + 1


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--llm", type=float, default=0.3, help="seconds per LLM answer")
    p.add_argument("--search", type=float, default=0.3, help="seconds per search call")
    p.add_argument("--load", type=float, default=1.5, help="generator load seconds")
    p.add_argument("--image", type=float, default=0.3, help="seconds per image")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--overhead-runs", type=int, default=30)
    p.add_argument("--no-rss", action="store_true", help="skip the CLI peak-RSS run")
    args = p.parse_args(argv)
    sys.addaudithook(_audit)
    lookups: dict[str, int] = {}
    _NET[:] = [lookups]  # every run below, warm, cold and instant
    runs = 2 if args.quick else args.runs
    overhead_runs = 8 if args.quick else args.overhead_runs
    llm = _world(args.llm, args.search)
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            kw = {"load_s": args.load, "image_s": args.image, "research": True, "n": runs}
            warm = asyncio.run(_one_run(tmp / "w", llm, warm=True, **kw))
            cold = asyncio.run(_one_run(tmp / "c", llm, warm=False, **kw))
            instant = _world(0.0, 0.0)
            try:
                inst = asyncio.run(
                    _one_run(
                        tmp / "i",
                        instant,
                        load_s=0.0,
                        image_s=0.0,
                        warm=True,
                        research=False,
                        n=overhead_runs,
                    )
                )
            finally:
                instant.stop()
    finally:
        llm.stop()
    # critical path: analyze + search (one wave) + synthesize vs the load, then the image
    llm_research = 2 * args.llm + args.search
    critical = max(args.load, llm_research) + args.image
    w = statistics.median(r["wall"] for r in warm)
    c = statistics.median(r["wall"] for r in cold)
    print(
        f"delays: llm {args.llm}s/call, search {args.search}s, load {args.load}s, "
        f"image {args.image}s"
    )
    print(f"critical path max(load, LLM+research) + image = {critical:.3f} s")
    print(
        f"run wall, warm-up on : p50 {w:.3f} s  -> {w / critical:.2f}x critical path "
        "(target <= 1.1x)"
    )
    print(f"run wall, warm-up off: p50 {c:.3f} s  -> {c / critical:.2f}x critical path")
    over = sorted((r["wall"] - r["llm"] - r["gen"]) * 1000 for r in inst)
    walls = sorted(r["wall"] * 1000 for r in inst)
    print(
        f"orchestration overhead per run (graph, checkpoints, run folder; {len(inst)} runs): "
        f"p50 {statistics.median(over):.1f} ms, p90 {over[int(0.9 * (len(over) - 1))]:.1f} ms "
        f"(wall p50 {statistics.median(walls):.1f} ms; target p90 < 30 ms)"
    )
    cpus = sorted(r["cpu"] * 1000 for r in inst)
    print(
        f"  CPU per run (all threads): p50 {statistics.median(cpus):.1f} ms, "
        f"p90 {cpus[int(0.9 * (len(cpus) - 1))]:.1f} ms; first run wall "
        f"{inst[0]['wall'] * 1000:.0f} ms; machine load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} CPUs (wall figures above include waiting for a CPU)"
    )
    outside = ", ".join(f"{h} x{n}" for h, n in sorted(lookups.items())) or "none"
    print(f"  non-loopback name lookups in all runs above (one process): {outside}")
    if not args.no_rss:
        _report_cli_rss()


_RSS_CHILD = """
import atexit, os, resource, sys

def _report():
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with open(os.environ["GW_BENCH_RSS_OUT"], "w") as f:
        f.write(f"{me} {kids} {' '.join(sorted(m for m in sys.modules if '.' not in m))}")

atexit.register(_report)
sys.argv = ["groundwork", *sys.argv[1:]]
from cli.main import main
main()
"""
"""`groundwork run` with its own peak RSS (ru_maxrss, KiB on Linux) written at exit: the CLI
process alone, and separately the largest of its reaped children (the embedded LLM server),
plus the top-level modules it had imported (what a memory regression loaded)."""

HEAVY = ("torch", "transformers", "diffusers", "open_clip", "sentence_transformers", "faiss")


def _report_cli_rss() -> None:
    """Peak RSS of one default CLI run (issue 21.10: 1.38 GB, target < 1.1 GB)."""
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        pipeline = tmp / "tiny-sd"
        subprocess.run(
            [sys.executable, "-m", "tests.support.tiny_pipeline", str(pipeline)],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        out = tmp / "rss.txt"
        env = {k: v for k, v in os.environ.items() if not k.startswith("GROUNDWORK_")}
        env.update(
            {
                "PYTHONPATH": str(REPO),
                "GW_BENCH_RSS_OUT": str(out),
                "GROUNDWORK_GENERATOR__MODEL": str(pipeline),
                "GROUNDWORK_GENERATOR__WIDTH": "64",
                "GROUNDWORK_GENERATOR__HEIGHT": "64",
                "GROUNDWORK_ARTIFACTS__ROOT": str(tmp / "artifacts"),
                "GROUNDWORK_CHECKPOINT_DB": str(tmp / "checkpoints.sqlite"),
                "GROUNDWORK_RUNS_DIR": str(tmp / "runs"),
                "GROUNDWORK_RETRIEVAL__KB_DIR": str(tmp / "kb"),
                "GROUNDWORK_TOOLS__CACHE_DIR": str(tmp / "tool-cache"),
                "GROUNDWORK_TRACES_DIR": str(tmp / "traces"),
            }
        )
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", _RSS_CHILD, "run", "the Zephyr X1 drone over a lake"],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        wall = time.perf_counter() - t0
        if not out.exists():
            print(f"peak RSS of a default CLI run: no figure (exit {proc.returncode})")
            print(proc.stderr[-2000:])
            return
        me_kb, kids_kb, *modules = out.read_text().split()
        me_mb, kids_mb = int(me_kb) / 1024, int(kids_kb) / 1024
        heavy = [m for m in HEAVY if m in modules] or ["none"]
        print(
            f"peak RSS of a default CLI run (`groundwork run`, embedded LLM, tiny pipeline, "
            f"offline; exit {proc.returncode}, {wall:.0f} s): CLI {me_mb:,.0f} MB "
            f"(target < {RSS_TARGET_MB:,} MB), largest child {kids_mb:,.0f} MB; "
            f"heavy packages imported: {', '.join(heavy)}"
        )
        if proc.returncode:
            print("  stderr tail: " + " | ".join(proc.stderr.strip().splitlines()[-3:]))
