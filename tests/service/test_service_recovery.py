"""What a restarted server does with runs it had accepted but not finished (fake runner; the
SIGKILL test with the real runner is in test_service_real.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from service.store import RunRow, RunStore
from tests.service.conftest import auth, read_sse, wait_status
from tests.service.fakes import FakeFactory, LiveServer

StartServer = Callable[..., LiveServer]
QUEUED, RUNNING = "run_" + "a" * 32, "run_" + "b" * 32


def seed(db: Path, run_id: str, status: str, request: str = "a red apple") -> None:
    """A run as a killed server left it: accepted (queued) or marked running."""

    async def write() -> None:
        store = await RunStore(db).open()
        now = time.time()
        row = RunRow(run_id, "alice", "run", "queued", request, "planned", {}, 1, now, now)
        await store.create(row, ("status", {"status": "queued", "turn": 1}))
        if status == "running":
            await store.transition(
                run_id, {"status": "running"}, (2, "status", {"status": "running"})
            )
        await store.close()

    asyncio.run(write())


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "service.sqlite"


def test_accepted_but_never_started_run_starts_from_its_request(
    start_server: StartServer, db: Path
) -> None:
    seed(db, QUEUED, "queued", "a blue pear")
    factory = FakeFactory()
    server = start_server(factory)
    with httpx.Client(base_url=server.url, headers=auth()) as c:
        run = wait_status(c, QUEUED, ("done",))
    assert run["revised_prompt"] == "grounded: a blue pear"
    assert factory.runner is not None and factory.runner.calls[0]["request"] == "a blue pear"


def test_running_run_with_pending_work_resumes_from_its_checkpoint(
    start_server: StartServer, db: Path
) -> None:
    seed(db, RUNNING, "running")
    factory = FakeFactory(pending_map={RUNNING: ("generate",)})
    server = start_server(factory)
    with httpx.Client(base_url=server.url, headers=auth()) as c:
        wait_status(c, RUNNING, ("done",))
        with c.stream("GET", f"/v1/runs/{RUNNING}/events") as r:
            events = read_sse(r)
    assert factory.runner is not None and factory.runner.calls[0]["request"] is None
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))  # ids continue
    assert any(e["event"] == "notice" and "resumed" in e["data"]["text"] for e in events)
    assert events[-1]["data"]["status"] == "done"


def test_finished_but_unrecorded_turn_is_collected_without_running_again(
    start_server: StartServer, db: Path
) -> None:
    seed(db, RUNNING, "running")
    factory = FakeFactory(values_map={RUNNING: {"request": "a red apple", "turn": 1}})
    server = start_server(factory)
    with httpx.Client(base_url=server.url, headers=auth()) as c:
        wait_status(c, RUNNING, ("done",))
    assert factory.runner is not None and factory.runner.calls[0]["request"] is None


def test_running_run_that_never_checkpointed_starts_from_its_request(
    start_server: StartServer, db: Path
) -> None:
    seed(db, RUNNING, "running")
    factory = FakeFactory()
    server = start_server(factory)
    with httpx.Client(base_url=server.url, headers=auth()) as c:
        wait_status(c, RUNNING, ("done",))
    assert factory.runner is not None and factory.runner.calls[0]["request"] == "a red apple"


def test_unreadable_checkpoint_fails_the_run_with_the_reason(
    start_server: StartServer, db: Path
) -> None:
    seed(db, RUNNING, "running")
    server = start_server(FakeFactory(pending_error="checkpoint database is corrupt"))
    with httpx.Client(base_url=server.url, headers=auth()) as c:
        run = wait_status(c, RUNNING, ("failed",))
    assert run["error"] == (
        "the server restarted and cannot resume: checkpoint database is corrupt"
    )


def test_graceful_shutdown_leaves_running_runs_resumable(start_server: StartServer) -> None:
    factory = FakeFactory()
    first = start_server(factory)
    with httpx.Client(base_url=first.url, headers=auth()) as c:
        run_id = c.post("/v1/runs", json={"prompt": "hold on"}).json()["id"]
        wait_status(c, run_id, ("running",))
    first.stop()
    again = FakeFactory(pending_map={run_id: ("generate",)})
    second = start_server(again)
    with httpx.Client(base_url=second.url, headers=auth()) as c:
        assert wait_status(c, run_id, ("done",))["status"] == "done"
    assert again.runner is not None and again.runner.calls[0]["request"] is None
