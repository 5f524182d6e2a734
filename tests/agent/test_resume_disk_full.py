"""Issue 21.6: a checkpoint database that fills between checkpoints ends the run with one line
and a resume hint; resuming once there is room finishes the run."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from graphs.runner import Runner
from tests.agent.conftest import Recorder, make_settings
from tests.support.scripted_llm import ScriptedLLM


@pytest.mark.parametrize("fail_at", [2, 3, 4])
async def test_resume_after_a_full_checkpoint_database_finishes(
    tmp_path: Path,
    scripted_llm: ScriptedLLM,
    recording: Recorder,
    services_factory: Any,
    monkeypatch: pytest.MonkeyPatch,
    fail_at: int,
) -> None:
    settings = make_settings(tmp_path, scripted_llm, None)
    scripted_llm.add("GapReport", {"gaps": []})
    real = AsyncSqliteSaver.aput
    calls = {"n": 0}

    async def full(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise sqlite3.OperationalError("database or disk is full")
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(AsyncSqliteSaver, "aput", full)
    services = services_factory(settings)
    async with Runner(settings, services) as runner:
        with pytest.raises(Exception) as failed:
            await runner.run("a red apple on a table", thread_id="disk")
    message = str(failed.value)
    assert "\n" not in message and "resume" in message and "--thread disk" in message
    monkeypatch.setattr(AsyncSqliteSaver, "aput", real)
    async with Runner(settings, services) as runner:
        outcome = await runner.run(None, thread_id="disk")
    assert outcome.status == "done", outcome.error
    assert outcome.run_dir is not None and (outcome.run_dir / "image.png").exists()


async def test_a_full_artifact_store_is_one_line_and_resumes(
    tmp_path: Path,
    scripted_llm: ScriptedLLM,
    recording: Recorder,
    services_factory: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import errno

    from core.artifacts import ArtifactStore

    settings = make_settings(tmp_path, scripted_llm, None)
    scripted_llm.add("GapReport", {"gaps": []})
    real = ArtifactStore.put_bytes

    def full(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device", str(self.root))

    monkeypatch.setattr(ArtifactStore, "put_bytes", full)
    services = services_factory(settings)
    async with Runner(settings, services) as runner:
        with pytest.raises(Exception) as failed:
            await runner.run("a red apple on a table", thread_id="store")
    message = str(failed.value)
    assert type(failed.value).__name__ == "DiskFull"
    assert "\n" not in message and "--thread store" in message
    monkeypatch.setattr(ArtifactStore, "put_bytes", real)
    async with Runner(settings, services) as runner:
        outcome = await runner.run(None, thread_id="store")
    assert outcome.status == "done", outcome.error
