"""Programmatic entry points.

    settings = Settings()
    async with Runner(settings) as runner:          # graphs.runner: stream, resume, run folder
        outcome = await runner.run("the 2026 Zephyr X1 drone over Lake Bled")

or, lower down, a compiled graph:

    async with open_checkpointer(settings) as saver:
        graph = build_graph(settings, checkpointer=saver, services=Services(settings))
        await graph.ainvoke({"request": "..."}, {"configurable": {"thread_id": "t1"}})

`checkpointer=None` compiles without persistence: right for `langgraph dev` / LangGraph
Server, which bring their own, and for one-off calls.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, get_args

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph.state import CompiledStateGraph

from agent.services import Services
from agent.settings import Policy, RunContext, Settings
from agent.state import RunInput, RunOutput, RunState
from core.errors import GroundworkError, InputError
from graphs.planned import build_planned
from graphs.react import build_react

Graph = CompiledStateGraph[RunState, RunContext, RunInput, RunOutput]
POLICIES: dict[str, Callable[..., Graph]] = {
    "planned": build_planned,
    "react": build_react,
}


class CheckpointError(GroundworkError):
    """The checkpoint database cannot be used (disk full, unreadable)."""


def build_graph(
    settings: Settings | None = None,
    checkpointer: BaseCheckpointSaver | None = None,
    *,
    policy: Policy = "planned",
    services: Services | None = None,
    run_folders: bool = False,
) -> Graph:
    """Compile a policy graph. `run_folders`: the graph writes each turn's run folder itself
    (for LangGraph Server / `langgraph dev`; the Runner writes them otherwise).

    Pass `services` to control their lifetime (`await services.aclose()`); without it the graph
    makes its own, and the embedded LLM server, if one is started, stops when the process exits.
    """
    settings = settings or Settings()
    services = services or Services(settings)
    try:
        factory = POLICIES[policy]
    except KeyError:
        raise InputError(
            f"unknown policy {policy!r}; available: {', '.join(get_args(Policy))}"
        ) from None
    return factory(services, checkpointer, run_folders=run_folders)


def check_database(path: Path) -> str | None:
    """None when the SQLite file is usable; else moves a corrupt one aside and says so.

    A corrupt or truncated file is kept (renamed beside itself) and a fresh one takes its place,
    so new runs keep working; the threads saved in the old file can no longer resume.
    """
    if not path.exists():
        return None
    try:
        with sqlite3.connect(path, timeout=5) as conn:
            row = conn.execute("PRAGMA quick_check").fetchone()
        if row and row[0] == "ok":
            return None
        problem = str(row[0] if row else "no answer to quick_check")
    except sqlite3.DatabaseError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return None
        problem = str(exc)
    kept = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    path.rename(kept)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.rename(kept.with_name(kept.name + suffix))
    return (
        f"the checkpoint database {path} was corrupt ({problem}); kept it as {kept} and started "
        "a fresh one (threads saved in the old file cannot resume)"
    )


@asynccontextmanager
async def open_checkpointer(
    settings: Settings, *, on_notice: Callable[[str], Any] | None = None
) -> AsyncIterator[BaseCheckpointSaver]:
    """Checkpoints, so a killed run resumes by its thread id: the SQLite file by default,
    PostgreSQL when `GROUNDWORK_STORE__URL` names one (graphs/store.py)."""
    if settings.store.is_postgres():
        from graphs.store import open_postgres_checkpointer

        async with open_postgres_checkpointer(settings.store) as pg_saver:
            yield pg_saver
        return

    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    path = settings.checkpoint_db.expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        notice = check_database(path)
    except OSError as exc:
        raise CheckpointError(
            f"cannot open the checkpoint database {path}: {exc.strerror or exc}; free disk space "
            "or set GROUNDWORK_CHECKPOINT_DB to a writable file"
        ) from exc
    if notice and on_notice is not None:
        on_notice(notice)
    try:
        async with AsyncSqliteSaver.from_conn_string(str(path)) as saver:
            # WAL + synchronous=NORMAL: a commit survives a killed process (what resume needs)
            # without an fsync per stage; only a power cut can lose the last stages.
            await saver.conn.execute("PRAGMA journal_mode=WAL")
            await saver.conn.execute("PRAGMA synchronous=NORMAL")
            yield saver
    except sqlite3.OperationalError as exc:
        raise CheckpointError(
            f"the checkpoint database {path} failed: {exc}; free disk space or set "
            "GROUNDWORK_CHECKPOINT_DB to another file (progress up to the last stage is kept)"
        ) from exc
