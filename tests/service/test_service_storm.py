"""The cancel storm of issue 23, against the real Runner and SQLite checkpoints: while one run
is going, four runs are started and cancelled within milliseconds, 100 times over. It used to
leave the checkpoint database "locked": one cancel took 10 s and every later run failed until
a restart. Afterwards no thread lock may be left, every storm run must be cancelled (not failed),
the long run must finish, and the next run must start and finish normally.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from agent.settings import Settings
from graphs.locks import ThreadLock
from tests.service.conftest import auth, wait_status
from tests.service.fakes import LiveServer
from tests.support.scripted_llm import ScriptedLLM

pytestmark = pytest.mark.slow

ROUNDS = 100
NO_GAPS: dict[str, list[object]] = {"gaps": []}


def test_cancel_storm_leaves_no_lock_and_the_next_run_starts(
    start_server: Callable[..., LiveServer],
    gw_settings: Settings,
    tiny_pipeline: Path,
    scripted_llm: ScriptedLLM,
) -> None:
    # SQLite, the store of the reported failure. (The same storm on PostgreSQL passes 100
    # rounds when run alone, but a cancel hung past 60 s when it ran after this one in one
    # process: not understood yet, so not in the suite; see the service closing note.)
    settings = gw_settings.merged(
        {
            "llm": {"base_url": scripted_llm.base_url, "model": "scripted-llm"},
            "generator": {"model": str(tiny_pipeline)},
        }
    )
    scripted_llm.add("GapReport", *([NO_GAPS] * (4 * ROUNDS + 4)))
    hold = scripted_llm.block("GapReport")  # the long run (and any storm run) waits in analyze
    server = start_server(
        settings=settings, real=True, max_concurrent_runs=10, rate_limit_per_minute=100_000
    )
    with httpx.Client(base_url=server.url, headers=auth(), timeout=60) as c:
        long_run = c.post("/v1/runs", json={"prompt": "a red apple on a table"}).json()["id"]
        assert scripted_llm.arrived["GapReport"].wait(60)

        def start_and_cancel(i: int) -> tuple[str, int, str]:
            with httpx.Client(base_url=server.url, headers=auth(), timeout=60) as own:
                r = own.post("/v1/runs", json={"prompt": f"storm run {i}"})
                assert r.status_code == 202, r.text
                run_id = r.json()["id"]
                gone = own.delete(f"/v1/runs/{run_id}")
                return run_id, gone.status_code, gone.json().get("status", "")

        storm: list[tuple[str, int, str]] = []
        with ThreadPoolExecutor(4) as pool:
            for round_ in range(ROUNDS):
                storm += pool.map(start_and_cancel, range(round_ * 4, round_ * 4 + 4))
        # every cancel answered: cancelled, or 409 when the run had already finished
        assert all(code in (200, 409) for _, code, _ in storm), storm
        hold.set()
        assert wait_status(c, long_run, ("done", "failed"), timeout=120)["status"] == "done"
        for run_id, _, _ in storm:
            run = wait_status(c, run_id, ("done", "failed", "cancelled"), timeout=60)
            assert run["status"] != "failed", run["error"]

        assert ThreadLock(settings.checkpoint_db, "probe").holders() == []
        after = c.post("/v1/runs", json={"prompt": "a green pear"}).json()["id"]
        run = wait_status(c, after, ("done", "failed"), timeout=120)
        assert run["status"] == "done", run["error"]
        ready = httpx.get(server.url + "/readyz").json()
        assert ready["checks"]["checkpoints"]["ok"], ready
