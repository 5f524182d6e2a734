"""The run loop the CLI, the eval harness and the HTTP service share: stream a turn, resume a
thread, write the run folder.

    async with Runner(settings) as runner:
        outcome = await runner.run("the 2026 Zephyr X1 drone over Lake Bled", on_event=print)
        outcome.run_dir, outcome.status, outcome.image_sha256

The graph checkpoints after every stage (`durability="sync"`), so a run killed at any point
resumes from its last finished stage with `run(None, thread_id=...)`. One process at a time may
run a thread (a lock in the checkpoint database).
"""

from __future__ import annotations

import asyncio
import errno
import sqlite3
import sys
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.types import Command
from typing_extensions import TypedDict

from agent.services import Services
from agent.settings import RunContext, Settings
from agent.stages.intake import validate_prompt
from agent.state import RunOutput
from core.errors import GroundworkError, InputError
from graphs.build import CheckpointError, Graph, Policy, build_graph, open_checkpointer
from graphs.locks import thread_lock
from graphs.run_folder import check_writable, write_turn
from graphs.store import StoreError, describe_url

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class DiskFull(GroundworkError):
    """A write during the run found the disk full; the thread resumes once there is room."""


def checkpoint_errors() -> tuple[type[BaseException], ...]:
    """What a checkpoint database raises when it fails under a run: SQLite's errors, the
    PostgreSQL store's own, and psycopg's once psycopg is loaded (only the PostgreSQL
    checkpointer loads it, so a SQLite-only process never imports it here)."""
    errors: list[type[BaseException]] = [sqlite3.Error, StoreError]
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None:
        errors.append(psycopg.Error)
    return tuple(errors)


def _checkpoint_failed(settings: Settings, thread_id: str, exc: BaseException) -> str:
    resume = f"resume with groundwork run --thread {thread_id}"
    if isinstance(exc, StoreError):
        return f"{exc}; then {resume}"
    text = str(exc).strip()
    reason = text.splitlines()[0] if text else type(exc).__name__
    if isinstance(exc, sqlite3.Error):
        return (
            f"the checkpoint database {settings.checkpoint_db} failed: {reason}; free disk space "
            f"(or move a damaged file aside), then {resume}"
        )
    where = describe_url(settings.store.url) if settings.store.url else "PostgreSQL"
    return (
        f"the checkpoint database {where} failed: {reason}; check that PostgreSQL is up and "
        f"reachable (GROUNDWORK_STORE__URL), then {resume} (finished stages are kept)"
    )


class RunEvent(TypedDict):
    kind: Literal["stage", "tool", "progress", "notice", "llm", "interrupt"]
    data: dict[str, Any]


EventHandler = Callable[[RunEvent], Any]


@dataclass
class RunOutcome:
    thread_id: str
    status: Literal["done", "failed", "interrupted"]
    run_dir: Path | None
    output: dict[str, Any]
    error: str | None = None
    question: str | None = None

    @property
    def image_sha256(self) -> str | None:
        image = self.output.get("image") or {}
        sha = (image.get("image") or {}).get("sha256")
        return str(sha) if sha else None


OUTPUT_KEYS = tuple(RunOutput.__annotations__)


def to_events(mode: str, chunk: Any) -> list[RunEvent]:
    """LangGraph stream chunks as the runner's events."""
    events: list[RunEvent] = []
    if mode == "updates":
        for node, update in cast(dict[str, Any], chunk).items():
            if node == "__interrupt__":
                for intr in update or ():
                    value = getattr(intr, "value", intr)
                    question = value.get("question") if isinstance(value, dict) else str(value)
                    events.append(RunEvent(kind="interrupt", data={"question": question}))
                continue
            for event in (update or {}).get("stages", []):
                events.append(RunEvent(kind="stage", data=dict(event)))
            for notice in (update or {}).get("notices", []):
                events.append(RunEvent(kind="notice", data={"text": notice}))
        return events
    data = cast(dict[str, Any], chunk)
    if "progress" in data:
        events.append(
            RunEvent(kind="progress", data={"step": data["progress"], "total": data["total"]})
        )
    elif "tool" in data:
        events.append(RunEvent(kind="tool", data=data))
    elif "llm" in data:
        events.append(
            RunEvent(
                kind="llm",
                data={"role": data["llm"], **{k: v for k, v in data.items() if k != "llm"}},
            )
        )
    return events


class Runner:
    """Shared by the CLI, the eval harness and the HTTP service: streaming, resume, run folder."""

    def __init__(
        self,
        settings: Settings,
        services: Services | None = None,
        *,
        checkpointer: BaseCheckpointSaver | None = None,
    ) -> None:
        self.settings = settings
        self._own_services = services is None
        self.services = services or Services(settings)
        self._checkpointer = checkpointer
        self._stack = AsyncExitStack()
        self._graphs: dict[str, Graph] = {}
        self.notices: list[str] = []

    async def __aenter__(self) -> Runner:
        if self._checkpointer is None:
            self._checkpointer = await self._stack.enter_async_context(
                open_checkpointer(self.settings, on_notice=self.notices.append)
            )
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self._stack.aclose()
        finally:
            if self._own_services:
                await self.services.aclose()

    def graph(self, policy: Policy = "planned") -> Graph:
        if policy not in self._graphs:
            self._graphs[policy] = build_graph(
                self.settings,
                checkpointer=self._checkpointer,
                policy=policy,
                services=self.services,
            )
        return self._graphs[policy]

    @staticmethod
    def config(thread_id: str) -> RunnableConfig:
        # Loops are bounded by counters in state; this limit only stops a bug from spinning.
        return {"configurable": {"thread_id": thread_id}, "recursion_limit": 200}

    async def pending(self, thread_id: str, policy: Policy = "planned") -> tuple[str, ...]:
        snapshot = await self.graph(policy).aget_state(self.config(thread_id))
        return tuple(snapshot.next) or tuple(t.name for t in snapshot.tasks)

    async def values(self, thread_id: str, policy: Policy = "planned") -> dict[str, Any]:
        snapshot = await self.graph(policy).aget_state(self.config(thread_id))
        return dict(snapshot.values)

    async def run(
        self,
        request: str | None,
        *,
        thread_id: str | None = None,
        policy: Policy = "planned",
        context: RunContext | None = None,
        on_event: EventHandler | None = None,
        write_folder: bool = True,
    ) -> RunOutcome:
        """Run one turn on a thread (new, continued, or resumed when `request` is None)."""
        if self._checkpointer is None:
            raise GroundworkError("use the Runner as `async with Runner(settings) as runner:`")
        settings = context.apply(self.settings) if context is not None else self.settings
        thread_id = thread_id or uuid.uuid4().hex
        emit = on_event or (lambda event: None)
        for notice in self.notices:
            emit(RunEvent(kind="notice", data={"text": notice}))
        self.notices.clear()
        if write_folder:
            check_writable(settings.runs_dir)
        graph = self.graph(policy)
        config = self.config(thread_id)
        lock = thread_lock(settings, thread_id)
        # Off the event loop and cancel-safe: a cancelled start still releases the lock.
        await lock.acquire_async()
        db_errors = checkpoint_errors()
        try:
            snapshot = await graph.aget_state(config)
            # A task whose writes were saved but whose checkpoint was not (the disk filled
            # between the two) is not in `next`, yet the thread is unfinished: resuming applies
            # those writes and goes on.
            pending = tuple(snapshot.next) or tuple(t.name for t in snapshot.tasks)
            stored = dict(snapshot.values)
            graph_input: Any  # RunInput, a Command answering an interrupt, or None to resume
            waiting = any(task.interrupts for task in snapshot.tasks)
            if request is not None and waiting:
                # The thread asked a question (an interrupt): this message is the answer.
                message = validate_prompt(request, settings.agent.prompt_max_chars)
                graph_input = Command(resume=message)
            elif request is None:
                if not pending:
                    if not stored:
                        raise InputError(f"thread {thread_id} has no run to resume")
                    # Nothing left to run: write the last turn's folder again (e.g. after a
                    # full disk made the first write fail).
                    return await self._finish(thread_id, stored, settings, write_folder, None)
                graph_input = None
            else:
                message = validate_prompt(request, settings.agent.prompt_max_chars)
                if pending and message != stored.get("request"):
                    raise InputError(
                        f"thread {thread_id} has an unfinished run for {stored.get('request')!r}; "
                        "run it without a prompt (or with the same one) to resume it, or use "
                        "another thread"
                    )
                graph_input = None if pending else {"request": message}
            self.services.warm_up(settings)
            error: str | None = None
            try:
                # subgraphs=True: a loop compiled as a subgraph (react) streams its stages,
                # tool calls and LLM calls as they happen; its node's closing update in the
                # parent repeats those stages and is skipped.
                live: set[str] = set()
                async for namespace, mode, chunk in graph.astream(
                    graph_input,
                    config,
                    context=context,
                    stream_mode=["updates", "custom"],
                    durability="sync",
                    subgraphs=True,
                ):
                    if namespace:
                        live.add(namespace[0].split(":", 1)[0])
                    elif mode == "updates":
                        chunk = {
                            k: v for k, v in cast(dict[str, Any], chunk).items() if k not in live
                        }
                    for event in to_events(mode, chunk):
                        emit(event)
            except InputError:
                raise
            except OSError as exc:
                if exc.errno not in _NO_SPACE:
                    raise
                # The artifact store or a cache could not grow: one line, and how to go on.
                raise DiskFull(
                    f"no space left on the device ({exc.filename or exc.strerror}); free disk "
                    f"space, then resume with groundwork run --thread {thread_id} (finished "
                    "stages are not repeated)"
                ) from exc
            except db_errors:
                raise  # the checkpoint database: one line below, not a stage failure
            except GroundworkError as exc:
                after = (await graph.aget_state(config)).next
                where = f" at {', '.join(after)}" if after else ""
                error = (
                    f"{exc} (progress is saved: groundwork run --thread {thread_id} resumes"
                    f"{where} without repeating the finished stages)"
                )
            snapshot = await graph.aget_state(config)
            values = dict(snapshot.values)
            question = None
            for task in snapshot.tasks:
                for intr in task.interrupts:
                    value = intr.value
                    question = value.get("question") if isinstance(value, dict) else str(value)
            if question is not None:
                return RunOutcome(
                    thread_id, "interrupted", None, self._output(values), question=question
                )
            return await self._finish(thread_id, values, settings, write_folder, error)
        except db_errors as exc:
            # The checkpoint database failed mid-run (disk full, file damaged, PostgreSQL gone):
            # one line and how to go on, whichever database it is.
            raise CheckpointError(_checkpoint_failed(settings, thread_id, exc)) from exc
        finally:
            await lock.release_async()

    def _output(self, values: dict[str, Any]) -> dict[str, Any]:
        return {key: values.get(key) for key in OUTPUT_KEYS}

    async def _finish(
        self,
        thread_id: str,
        values: dict[str, Any],
        settings: Settings,
        write_folder: bool,
        error: str | None,
    ) -> RunOutcome:
        output = self._output(values)
        if error:
            output["error"] = error
        run_dir: Path | None = None
        if write_folder:
            run_dir = await asyncio.to_thread(
                write_turn, self.services, thread_id, values, output, settings
            )
        ok = not output.get("error") and output.get("image") is not None
        status: Literal["done", "failed"] = "done" if ok else "failed"
        err = output.get("error") or (None if ok else "no image was generated")
        return RunOutcome(thread_id, status, run_dir, output, error=err)
