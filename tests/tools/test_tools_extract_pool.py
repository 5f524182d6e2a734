"""Issue 22.2: page reading is bounded, a timeout really stops it (the worker is killed), the
process exits promptly after one, and one run's hostile pages cannot take another run's slots.
Pathological pages are generated per class (tests/support/hostile.PAGES) with several seeds."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.artifacts import ArtifactStore
from tests.support.hostile import PAGES, hostile_page
from tests.tools.conftest import LoopServer, tool_settings
from tools.extract import PageLimits, _cut_tree, read_page
from tools.extract_pool import ExtractError, ExtractPool, run_scope
from tools.observations import Passage
from tools.toolkit import Toolkit

REPO = Path(__file__).resolve().parents[2]
GOOD = (
    "<html><head><title>Harbour cranes</title></head><body><article>"
    "<p>The old harbour cranes were painted bright red in 1990 by the port authority.</p>"
    "<p>They stand on the northern quay and are lit at night by blue floodlights.</p>"
    "</article></body></html>"
)


@pytest.fixture
def pool() -> Iterator[ExtractPool]:
    p = ExtractPool(2)
    yield p
    p.close()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", sorted(PAGES))
def test_pathological_pages_are_read_within_their_caps(kind: str, seed: int) -> None:
    limits = PageLimits(max_chars=150_000, max_elements=2_000, max_text_chars=20_000)
    page = hostile_page(kind, 200_000 + seed * 7_919, seed)
    reading = read_page(page, True, "word text", 300, 3, limits)
    assert len(reading.passages) <= 3
    assert sum(len(t) for t, _ in reading.passages) <= limits.max_text_chars
    assert any("150,000 characters" in n for n in reading.notes)


@pytest.mark.parametrize("size", [10, 999, 5_000])
def test_the_tree_cut_keeps_exactly_the_first_elements(size: int) -> None:
    from trafilatura.utils import load_html

    body = "".join(f"<div><p>a{i}</p><span>b{i}</span></div>" for i in range(3_000))
    tree = load_html(f"<html><body>{body}")
    assert tree is not None
    total = len(list(tree.iter()))
    first = [(el.tag, el.text) for el in list(tree.iter())[:size]]
    dropped = _cut_tree(tree, size)
    assert dropped == total - size
    assert [(el.tag, el.text) for el in tree.iter()] == first


async def test_a_page_over_its_time_limit_has_its_worker_killed(pool: ExtractPool) -> None:
    big = hostile_page("table-storm", 2_000_000)
    unbounded = PageLimits(max_elements=10**7)
    await pool.read(
        GOOD,
        is_html=True,
        query="q",
        passage_chars=300,
        k=1,
        limits=unbounded,
        timeout_s=60,
        tenant="t",
    )
    (pid,) = pool.worker_pids()
    with pytest.raises(ExtractError, match="longer than"):
        await pool.read(
            big,
            is_html=True,
            query="q",
            passage_chars=300,
            k=1,
            limits=unbounded,
            timeout_s=0.05,
            tenant="t",
        )
    assert pid not in pool.worker_pids()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped: its work stopped with the timeout
    reading = await pool.read(
        GOOD,
        is_html=True,
        query="red cranes",
        passage_chars=300,
        k=1,
        limits=unbounded,
        timeout_s=60,
        tenant="t",
    )
    assert "painted bright red" in reading.passages[0][0]  # a fresh worker took over
    assert pool.stats.killed == 1


async def test_cancelling_the_caller_stops_the_page_work(pool: ExtractPool) -> None:
    big = hostile_page("paragraph-storm", 2_000_000)
    task = asyncio.ensure_future(
        pool.read(
            big,
            is_html=True,
            query="q",
            passage_chars=300,
            k=1,
            limits=PageLimits(max_elements=10**7),
            timeout_s=60,
            tenant="t",
        )
    )
    while not pool.worker_pids():
        await asyncio.sleep(0.01)
    (pid,) = pool.worker_pids()
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(500):
        if pid not in pool.worker_pids():
            break
        await asyncio.sleep(0.01)
    assert pid not in pool.worker_pids()


def test_the_process_exits_after_a_timed_out_page_and_leaves_no_worker(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import asyncio
        from tests.support.hostile import hostile_page
        from tools.extract import PageLimits
        from tools.extract_pool import ExtractError, shared_pool

        async def main():
            pool = shared_pool(2)
            page = hostile_page("paragraph-storm", 2_000_000)
            tasks = [pool.read(page, is_html=True, query="q", passage_chars=300, k=1,
                               limits=PageLimits(max_elements=10**7), timeout_s=0.2,
                               tenant=f"t{i}") for i in range(4)]
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(r, ExtractError) for r in results), results
            print("PIDS", *pool.worker_pids(), flush=True)

        asyncio.run(main())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    pids = [int(p) for p in out.stdout.split("PIDS", 1)[1].split()]
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_one_runs_hostile_pages_do_not_take_another_runs_slots(
    tmp_path: Path, server: LoopServer, other_server: LoopServer
) -> None:
    """Two toolkits (two CLI-like runs) share one pool of 2 workers; run A browses six hostile
    pages that each run into their time limit, run B reads three good pages meanwhile."""
    for i in range(6):
        page = hostile_page(sorted(PAGES)[i % len(PAGES)], 1_500_000, i)
        server.add(f"/bad{i}", "text/html", page.encode())
    for i in range(3):
        other_server.add(f"/good{i}", "text/html", GOOD.encode())
    shared = ExtractPool(2)
    hostile_kit = Toolkit(
        tool_settings(
            tmp_path / "a",
            [server.host_port],
            cache_enabled=False,
            extract_timeout_s=0.5,
            extract_max_elements=10**7,
            max_page_bytes=2_000_000,
        ),
        ArtifactStore(tmp_path / "a" / "store"),
        extract_pool=shared,
    )
    calm_kit = Toolkit(
        tool_settings(
            tmp_path / "b",
            [other_server.host_port],
            cache_enabled=False,
            timeout_s=30,
            extract_timeout_s=20,
        ),
        ArtifactStore(tmp_path / "b" / "store"),
        extract_pool=shared,
    )
    try:
        bad = [hostile_kit.browse(f"{server.url}/bad{i}", "word") for i in range(6)]
        good = [calm_kit.browse(f"{other_server.url}/good{i}", "red cranes") for i in range(3)]
        results = await asyncio.gather(*bad, *good)
    finally:
        await hostile_kit.aclose()
        await calm_kit.aclose()
        shared.close()
    calm = results[6:]
    assert all(o.ok for o in calm), [o.error for o in calm]
    assert all(
        isinstance(o.items[0], Passage) and "painted bright red" in o.items[0].text for o in calm
    )
    assert max(shared.stats.peak_by_tenant.values()) <= 1  # A never held both workers
    assert len(shared.stats.peak_by_tenant) == 2
    assert any(not o.ok for o in results[:6])


async def test_run_scope_names_the_tenant_of_a_shared_toolkit(
    tmp_path: Path, server: LoopServer
) -> None:
    server.add("/p", "text/html", GOOD.encode())
    shared = ExtractPool(2)
    kit = Toolkit(
        tool_settings(tmp_path, [server.host_port], cache_enabled=False),
        ArtifactStore(tmp_path / "store"),
        extract_pool=shared,
    )

    async def run(name: str) -> None:
        with run_scope(name):
            obs = await kit.browse(f"{server.url}/p", "cranes")
        assert obs.ok, obs.error

    try:
        await asyncio.gather(run("run-1"), run("run-2"))
    finally:
        await kit.aclose()
        shared.close()
    assert set(shared.stats.peak_by_tenant) == {"run-1", "run-2"}


def test_inside_a_graph_node_the_thread_names_the_tenant() -> None:
    """A service shares one toolkit between runs: LangChain's running config (a contextvar
    LangGraph sets in every node) tells the runs apart without any wiring."""
    from langchain_core.runnables.config import var_child_runnable_config

    from tools.extract_pool import current_tenant

    assert current_tenant("kit") == "kit"
    token = var_child_runnable_config.set({"configurable": {"thread_id": "t-42"}})
    try:
        assert current_tenant("kit") == "thread:t-42"
        with run_scope("named"):
            assert current_tenant("kit") == "named"
    finally:
        var_child_runnable_config.reset(token)
