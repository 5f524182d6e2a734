"""Checkpoints and thread locks (issue 23): PostgreSQL checkpoints through the maintained saver,
advisory locks that die with their holder, a SQLite lock that cannot wedge, and a cancel storm
that leaves no lock behind. The PostgreSQL tests use a throwaway database on 127.0.0.1:5432 and
are skipped, with the reason, where none runs."""

from __future__ import annotations

import asyncio
import contextlib
import operator
import os
import random
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langgraph.graph import END, START, StateGraph

from agent.settings import Settings
from graphs import locks
from graphs.build import open_checkpointer
from graphs.locks import LockStoreError, PostgresThreadLock, ThreadBusy, ThreadLock, thread_lock
from graphs.store import StoreError, describe_url
from tests.support import postgres
from tests.support.scripted_llm import ScriptedLLM
from tests.support.web import WebServer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    reason = postgres.unavailable()
    if reason is not None:
        pytest.skip(reason)
    with postgres.throwaway_database() as url:
        yield url


def _settings(tmp_path: Path, url: str | None = None, **store: Any) -> Settings:
    return Settings().merged(
        {
            "checkpoint_db": str(tmp_path / "ck.sqlite"),
            "store": {"url": url, "connect_timeout_s": 3, **store},
        }
    )


class Count(TypedDict):
    n: Annotated[int, operator.add]


def _counter_graph(saver: Any) -> Any:
    builder: StateGraph[Count, None, Count, Count] = StateGraph(Count)
    builder.add_node("inc", lambda state: {"n": 1})
    builder.add_edge(START, "inc")
    builder.add_edge("inc", END)
    return builder.compile(checkpointer=saver)


# -- PostgreSQL checkpoints ------------------------------------------------------------------
@pytest.mark.postgres
def test_checkpoints_persist_in_postgres_across_processes_pools(
    pg_url: str, tmp_path: Path
) -> None:
    settings = _settings(tmp_path, pg_url, pool_min_size=1, pool_max_size=3)
    config = {"configurable": {"thread_id": f"t-{uuid.uuid4().hex}"}}

    async def one_turn() -> int:
        async with open_checkpointer(settings) as saver:  # a fresh pool, as a new replica
            graph = _counter_graph(saver)
            result = await graph.ainvoke({"n": 1}, config)
            return int(result["n"])

    assert asyncio.run(one_turn()) == 2
    assert asyncio.run(one_turn()) == 4  # the second "replica" continued the same thread
    assert not (tmp_path / "ck.sqlite").exists()  # nothing went to SQLite


@pytest.mark.postgres
def test_schema_setup_is_idempotent_and_concurrent(pg_url: str, tmp_path: Path) -> None:
    settings = _settings(tmp_path, pg_url)

    async def open_many() -> None:
        async def one() -> None:
            async with open_checkpointer(settings):
                pass

        await asyncio.gather(*(one() for _ in range(4)))

    asyncio.run(open_many())


_OPEN_ONCE = """
import asyncio, sys
from agent.settings import Settings
from graphs.build import open_checkpointer

settings = Settings().merged(
    {"checkpoint_db": sys.argv[2], "store": {"url": sys.argv[1], "connect_timeout_s": 5}}
)

async def main() -> None:
    async with open_checkpointer(settings):
        pass

asyncio.run(main())
print("ready")
"""


@pytest.mark.postgres
@pytest.mark.slow
def test_replicas_starting_together_on_an_empty_database_all_come_up(tmp_path: Path) -> None:
    """Three processes set the schema up at once on a fresh database. A blocking advisory-lock
    waiter holds a snapshot that the migrations' CREATE INDEX CONCURRENTLY waits on (a
    deadlock seen with two replicas); set-up must poll for the lock instead."""
    reason = postgres.unavailable()
    if reason is not None:
        pytest.skip(reason)
    with postgres.throwaway_database() as url:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _OPEN_ONCE, url, str(tmp_path / f"ck{i}.sqlite")],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(3)
        ]
        try:
            outs = [p.communicate(timeout=150) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        for p, (out, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0 and "ready" in out, err[-2000:]
        assert postgres.advisory_locks_held(url) == 0


def test_unreachable_postgres_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = _settings(tmp_path, f"postgresql://gw:secret-pw@127.0.0.1:{port}/gw")

    async def go() -> None:
        async with open_checkpointer(settings):
            pass

    with pytest.raises(StoreError) as err:
        asyncio.run(go())
    message = str(err.value)
    assert "cannot reach PostgreSQL at 127.0.0.1:" in message and "GROUNDWORK_STORE__URL" in message
    assert "secret-pw" not in message and "\n" not in message


@pytest.mark.postgres
def test_a_role_without_rights_is_one_line(pg_url: str, tmp_path: Path) -> None:
    role = f"gw_noright_{uuid.uuid4().hex[:8]}"
    dbname = pg_url.rsplit("/", 1)[1]
    postgres.admin_execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        postgres.admin_execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC", dbname=dbname)
        url = pg_url.replace("postgres@", f"{role}@", 1)
        settings = _settings(tmp_path, url)

        async def go() -> None:
            async with open_checkpointer(settings):
                pass

        with pytest.raises(StoreError, match="may not create the checkpoint tables") as err:
            asyncio.run(go())
        assert "\n" not in str(err.value) and role in str(err.value)
    finally:
        postgres.admin_execute(f'DROP ROLE IF EXISTS "{role}"')


def test_a_store_url_that_is_not_postgres_is_refused() -> None:
    with pytest.raises(ValueError, match="postgresql://"):
        Settings().merged({"store": {"url": "mysql://u@h/db"}})
    assert Settings().merged({"store": {"url": ""}}).store.is_postgres() is False


def test_store_url_is_never_shown_with_its_password() -> None:
    assert describe_url("postgresql://u:pw@db.example:6543/gw") == "db.example:6543/gw as u"


# -- PostgreSQL advisory locks -----------------------------------------------------------------
@pytest.mark.postgres
def test_advisory_lock_excludes_a_second_holder_and_dies_with_its_process(
    pg_url: str, tmp_path: Path
) -> None:
    thread = f"t-{uuid.uuid4().hex}"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from graphs.locks import PostgresThreadLock\n"
            "lock = PostgresThreadLock(sys.argv[1], sys.argv[2])\n"
            "lock.acquire()\n"
            "print('held', flush=True)\n"
            "time.sleep(600)\n",
            pg_url,
            thread,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(ThreadBusy, match="another replica"):
            PostgresThreadLock(pg_url, thread).acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        # The server notices the dropped connection; the lock is free without any clean-up.
        for _ in range(100):
            if postgres.advisory_locks_held(pg_url) == 0:
                break
            asyncio.run(asyncio.sleep(0.05))
        mine = PostgresThreadLock(pg_url, thread)
        mine.acquire()
        mine.release()
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert postgres.advisory_locks_held(pg_url) == 0


def test_thread_lock_picks_the_backend_from_the_store_url(tmp_path: Path) -> None:
    assert isinstance(thread_lock(_settings(tmp_path), "t"), ThreadLock)
    pg = thread_lock(_settings(tmp_path, "postgresql://u@127.0.0.1:1/db"), "t")
    assert isinstance(pg, PostgresThreadLock)


# -- SQLite lock --------------------------------------------------------------------------------
def test_sqlite_lock_lives_beside_the_checkpoints_not_in_them(tmp_path: Path) -> None:
    lock = thread_lock(_settings(tmp_path), "t1")
    lock.acquire()
    try:
        assert isinstance(lock, ThreadLock)
        assert lock.db == tmp_path / "ck.sqlite.locks"
        assert lock.holders() == [("t1", socket.gethostname(), os.getpid())]
        with pytest.raises(ThreadBusy, match="already running in this process"):
            thread_lock(_settings(tmp_path), "t1").acquire()
    finally:
        lock.release()
    assert lock.holders() == []


def test_sqlite_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    lock = ThreadLock(tmp_path / "ck.sqlite", "t")
    conn = lock._conn()
    conn.execute(
        "INSERT INTO groundwork_thread_locks VALUES (?, ?, ?, 0)",
        ("t", socket.gethostname(), int(dead.stdout)),
    )
    conn.close()
    lock.acquire()
    lock.release()


def test_a_busy_sqlite_lock_file_is_a_bounded_wait_and_a_clear_error(tmp_path: Path) -> None:
    lock = ThreadLock(tmp_path / "ck.sqlite", "t", wait_s=0.2)
    blocker = lock._conn()
    blocker.execute("BEGIN EXCLUSIVE")  # another writer that never lets go
    try:
        with pytest.raises(LockStoreError, match="stayed busy.*LOCK_WAIT_S"):
            lock.acquire()
        assert not lock.held and "t" not in locks._HELD  # nothing half-taken
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    lock.acquire()
    lock.release()


def test_release_never_leaves_the_thread_claimed_in_this_process(tmp_path: Path) -> None:
    lock = ThreadLock(tmp_path / "ck.sqlite", "t", wait_s=0.2)
    lock.acquire()
    blocker = lock._conn()
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(LockStoreError):
            lock.release()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert "t" not in locks._HELD
    again = ThreadLock(tmp_path / "ck.sqlite", "t")
    again.acquire()  # our own stale row is ours to take over
    again.release()


# -- the cancel storm -----------------------------------------------------------------------
async def _storm(settings: Settings, thread: str, cycles: int) -> dict[str, int]:
    """Start a run (take the lock, work, release) and cancel it at a random moment, `cycles`
    times, with another run holding a different thread throughout."""
    outcomes = {"cancelled": 0, "busy": 0, "done": 0}
    other = thread_lock(settings, thread + "-other")
    await other.acquire_async()

    async def run() -> None:
        lock = thread_lock(settings, thread)
        await lock.acquire_async()
        try:
            await asyncio.sleep(random.uniform(0, 0.003))
        finally:
            await lock.release_async()

    rng = random.Random(23)
    try:
        for _ in range(cycles):
            task = asyncio.create_task(run())
            await asyncio.sleep(rng.uniform(0, 0.004))
            task.cancel()
            try:
                await task
                outcomes["done"] += 1
            except asyncio.CancelledError:
                outcomes["cancelled"] += 1
            except ThreadBusy:
                outcomes["busy"] += 1  # a previous cycle's release still on its way: fine
    finally:
        await other.release_async()
    # Releases of starts cancelled mid-acquire run in the background; give them a moment.
    for _ in range(200):
        if thread not in locks._HELD:
            break
        await asyncio.sleep(0.01)
    return outcomes


def _next_run_starts_at_once(settings: Settings, thread: str) -> None:
    lock = thread_lock(settings, thread)
    lock.acquire()  # first try: no wait, no ThreadBusy
    lock.release()


def test_sqlite_cancel_storm_leaves_no_lock_behind(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    outcomes = asyncio.run(_storm(settings, "storm", 100))
    assert outcomes["cancelled"] > 0, outcomes
    assert not locks._HELD
    sqlite_lock = thread_lock(settings, "storm")
    assert isinstance(sqlite_lock, ThreadLock) and sqlite_lock.holders() == []
    _next_run_starts_at_once(settings, "storm")


@pytest.mark.postgres
def test_postgres_cancel_storm_leaves_no_lock_behind(pg_url: str, tmp_path: Path) -> None:
    settings = _settings(tmp_path, pg_url)
    thread = f"storm-{uuid.uuid4().hex}"
    outcomes = asyncio.run(_storm(settings, thread, 100))
    assert outcomes["cancelled"] > 0, outcomes
    assert not locks._HELD
    assert postgres.advisory_locks_held(pg_url) == 0
    _next_run_starts_at_once(settings, thread)


# -- a run killed on one process resumes on another, from PostgreSQL -------------------------
@pytest.mark.slow
@pytest.mark.postgres
def test_a_run_killed_mid_way_resumes_in_another_process_from_postgres(
    pg_url: str,
    tmp_path: Path,
    gw_env: dict[str, str],
    scripted_llm: ScriptedLLM,
    web: WebServer,
) -> None:
    """The replica-death case end to end: the killed process held the thread's advisory lock
    and had checkpointed research in PostgreSQL; a new process takes the thread at once and
    finishes it without researching again. No SQLite file is written."""
    from tests.conftest import groundwork
    from tests.e2e.test_cli_run import PROMPT, script_research

    script = script_research(tmp_path, web, scripted_llm)
    scripted_llm.add("GroundedPrompt", {"gen_prompt": "a matte orange quadcopter over a lake"})
    thread = f"t-{uuid.uuid4().hex[:8]}"
    env = {
        **gw_env,
        "GROUNDWORK_TEST_DDGS_SCRIPT": str(script),
        "GROUNDWORK_LLM__BASE_URL": scripted_llm.base_url,
        "GROUNDWORK_LLM__MODEL": "scripted-llm",
        "GROUNDWORK_STORE__URL": pg_url,
    }
    hold = scripted_llm.block("GroundedPrompt")  # synthesize waits: research is finished
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.cli_entry", "run", PROMPT, "--thread", thread],
        env={**env, "PYTHONPATH": str(REPO)},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert scripted_llm.arrived["GroundedPrompt"].wait(timeout=180), "synthesize never began"
        assert postgres.advisory_locks_held(pg_url) == 1  # the running process holds the thread
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    hold.set()
    del scripted_llm.hold["GroundedPrompt"]
    research = (tmp_path / "ddgs-calls.log").read_text().splitlines()

    resumed = groundwork(["run", PROMPT, "--thread", thread], env, tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming" in resumed.stdout
    assert (tmp_path / "ddgs-calls.log").read_text().splitlines() == research
    assert len(scripted_llm.calls("GapReport")) == 1
    assert not (tmp_path / "checkpoints.sqlite").exists()
    assert postgres.advisory_locks_held(pg_url) == 0


# -- the cancel storm through the real Runner and SQLite checkpointer -------------------------
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_runner_cancel_storm_leaves_no_lock_and_no_locked_database(
    tmp_path: Path, scripted_llm: ScriptedLLM, backend: str, request: pytest.FixtureRequest
) -> None:
    """Issue 23's failure: runs started and cancelled within milliseconds while another ran
    left the checkpoint database locked and every later run failed. Here: one run waits in
    analysis while 100 runs on four threads are started and cancelled at random moments; then
    the waiting run finishes, a cancelled thread runs again at once, and no lock is left."""
    from graphs.runner import Runner

    scripted_llm.add("GapReport", *({"gaps": []} for _ in range(300)))
    scripted_llm.add("GroundedPrompt", *({"gen_prompt": "a red apple"} for _ in range(300)))
    settings = Settings.model_validate(
        {
            "llm": {"base_url": scripted_llm.base_url, "model": "scripted-llm"},
            "generator": {"backend": "noop", "width": 64, "height": 64},
            "artifacts": {"root": str(tmp_path / "artifacts")},
            "tools": {"text_provider": "none", "image_provider": "none"},
            "retrieval": {"kb_dir": str(tmp_path / "kb")},
            "runs_dir": str(tmp_path / "runs"),
            "traces_dir": str(tmp_path / "traces"),
            "checkpoint_db": str(tmp_path / "ck.sqlite"),
            "store": {"url": request.getfixturevalue("pg_url") if backend == "postgres" else None},
        }
    )
    hold = scripted_llm.block("GapReport")

    async def storm() -> tuple[str, str]:
        rng = random.Random(7)
        async with Runner(settings) as runner:
            long = asyncio.create_task(runner.run("a red apple", thread_id="long"))
            await asyncio.sleep(0.2)
            for i in range(100):
                task = asyncio.create_task(runner.run("a red apple", thread_id=f"s{i % 4}"))
                await asyncio.sleep(rng.choice((0, rng.uniform(0, 0.003), rng.uniform(0, 0.03))))
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, ThreadBusy):
                    await task
            hold.set()
            finished = await asyncio.wait_for(long, timeout=120)
            for _ in range(200):  # releases of starts cancelled mid-acquire
                if not locks._HELD:
                    break
                await asyncio.sleep(0.01)
            again = await asyncio.wait_for(
                runner.run("a red apple", thread_id="s0", write_folder=False), timeout=120
            )
            return finished.status, again.status

    try:
        assert asyncio.run(storm()) == ("done", "done")
    finally:
        hold.set()
    assert not locks._HELD
    if backend == "postgres":
        assert postgres.advisory_locks_held(str(settings.store.url)) == 0
    else:
        lock = thread_lock(settings, "s0")
        assert isinstance(lock, ThreadLock) and lock.holders() == []
