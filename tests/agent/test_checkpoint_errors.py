"""A PostgreSQL checkpointer that fails mid-run ends the run with the same one-line
CheckpointError as SQLite's (what failed, how to go on), never "unexpected ... a bug"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from langgraph.checkpoint.memory import InMemorySaver

import graphs.runner as runner_module
from graphs.build import CheckpointError
from graphs.locks import thread_lock
from graphs.runner import Runner, checkpoint_errors
from graphs.store import StoreError
from tests.agent.conftest import Recorder, make_settings
from tests.support.scripted_llm import ScriptedLLM


class FailingSaver(InMemorySaver):
    """Saves like InMemorySaver until its `fail_at`-th checkpoint, which raises `error`."""

    def __init__(self, fail_at: int, error: BaseException) -> None:
        super().__init__()
        self.fail_at = fail_at
        self.error = error
        self.puts = 0

    async def aput(self, *args: Any, **kwargs: Any) -> Any:
        self.puts += 1
        if self.puts == self.fail_at:
            raise self.error
        return await super().aput(*args, **kwargs)


def test_psycopg_errors_count_once_psycopg_is_loaded() -> None:
    errors = checkpoint_errors()
    assert psycopg.Error in errors and StoreError in errors


@pytest.mark.parametrize(
    "error",
    [
        psycopg.OperationalError("server closed the connection unexpectedly\n\tThis probably"),
        StoreError("PostgreSQL at db:5432/gw as gw refused the connection; check the server"),
    ],
    ids=["psycopg", "store"],
)
async def test_postgres_failing_mid_run_is_one_checkpoint_line(
    tmp_path: Path,
    scripted_llm: ScriptedLLM,
    recording: Recorder,
    services_factory: Any,
    monkeypatch: pytest.MonkeyPatch,
    error: BaseException,
) -> None:
    local = make_settings(tmp_path, scripted_llm, None)
    settings = local.merged({"store": {"url": "postgresql://gw:secret@db:5432/gw"}})
    # no server at db:5432: the thread lock stays the local one; the checkpointer is the stub
    monkeypatch.setattr(runner_module, "thread_lock", lambda _s, tid: thread_lock(local, tid))
    scripted_llm.add("GapReport", {"gaps": []})
    saver = FailingSaver(fail_at=3, error=error)
    async with Runner(settings, services_factory(settings), checkpointer=saver) as runner:
        with pytest.raises(CheckpointError) as failed:
            await runner.run("a red apple on a table", thread_id="pg")
    assert saver.puts == 3  # it failed mid-run, after stages had finished
    message = str(failed.value)
    assert "\n" not in message, message
    assert "--thread pg" in message and "secret" not in message
    if isinstance(error, psycopg.Error):
        assert "db:5432/gw as gw failed: server closed the connection unexpectedly" in message
    else:
        assert message.startswith(str(error))
