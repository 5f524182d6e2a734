"""Runs off the request path: accepted durably, executed by bounded background tasks, resumed
after a restart.

A run is a LangGraph thread (its id is the thread id), so a chat message continues the same
run and `Runner.run(None, thread_id=id)` resumes it from its last checkpoint. The order of
writes is what keeps the promise "nothing a client was told is accepted is lost":
1. the run row is committed (status queued) before the HTTP answer;
2. it is marked running before the runner starts writing checkpoints;
3. at startup, queued rows start from their request, running rows resume from the checkpoint
   (or are failed with the reason when the checkpoint has nothing left to run).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from agent.services import Services
from agent.settings import RunContext, Settings
from core.errors import GroundworkError
from service.events import EventLog
from service.limits import Limiter, LimiterUnavailable
from service.settings import ServiceSettings
from service.store import ACTIVE, RunRow, RunStore

log = logging.getLogger(__name__)

DOSSIER_MAX_CHARS = 200_000
CONTEXT_KEYS = ("seed", "width", "height", "steps", "max_rounds", "max_tool_calls")


class OutcomeLike(Protocol):
    """What the service reads of `graphs.runner.RunOutcome`."""

    @property
    def thread_id(self) -> str: ...

    @property
    def status(self) -> str: ...

    @property
    def run_dir(self) -> Path | None: ...

    @property
    def output(self) -> dict[str, Any]: ...

    @property
    def error(self) -> str | None: ...

    @property
    def question(self) -> str | None: ...


class RunnerLike(Protocol):
    """What the service uses of `graphs.runner.Runner` (tests inject a fake)."""

    async def __aenter__(self) -> Any: ...

    async def __aexit__(self, *exc: object) -> Any: ...

    async def run(
        self,
        request: str | None,
        *,
        thread_id: str | None = None,
        policy: Any = "planned",
        context: RunContext | None = None,
        on_event: Callable[[Any], None] | None = None,
        write_folder: bool = True,
    ) -> OutcomeLike: ...

    async def pending(self, thread_id: str, policy: Any = "planned") -> tuple[str, ...]: ...

    async def values(self, thread_id: str, policy: Any = "planned") -> dict[str, Any]: ...


RunnerFactory = Callable[[Settings, Services], RunnerLike]


def default_runner_factory(settings: Settings, services: Services) -> RunnerLike:
    from graphs.runner import Runner

    runner: RunnerLike = Runner(settings, services)
    return runner


class ServiceBusy(GroundworkError):
    pass


class RunConflict(GroundworkError):
    pass


def artifact_shas(output: dict[str, Any]) -> set[str]:
    """Every artifact a run's output points at: its images (all rounds) and references."""
    shas: set[str] = set()

    def image_sha(result: Any) -> None:
        if isinstance(result, dict):
            sha = (result.get("image") or {}).get("sha256")
            if isinstance(sha, str):
                shas.add(sha)

    image_sha(output.get("image"))
    for rnd in output.get("rounds") or []:
        if isinstance(rnd, dict):
            image_sha(rnd.get("image"))
    for sha in (output.get("image_ids") or {}).values():
        if isinstance(sha, str):
            shas.add(sha)
    return shas


def outcome_result(outcome: OutcomeLike) -> dict[str, Any]:
    """What is kept of an outcome: the output, plus the dossier text from the run folder."""
    dossier = None
    if outcome.run_dir is not None:
        path = Path(outcome.run_dir) / "dossier.md"
        if path.is_file():
            dossier = path.read_text(errors="replace")[:DOSSIER_MAX_CHARS]
    return {"output": outcome.output, "dossier": dossier}


class RunManager:
    def __init__(
        self,
        cfg: ServiceSettings,
        store: RunStore,
        events: EventLog,
        runner: RunnerLike,
        limiter: Limiter,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.events = events
        self.runner = runner
        self.limiter = limiter
        self._slots = asyncio.Semaphore(cfg.max_running)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancelled: set[str] = set()
        self._recording: set[str] = set()
        self._closing = False

    @property
    def active(self) -> int:
        return len(self._tasks)

    def _check_capacity(self) -> None:
        if self._closing:
            raise ServiceBusy("the server is shutting down; retry in a moment")
        if len(self._tasks) >= self.cfg.max_queued:
            raise ServiceBusy(
                f"the server holds {len(self._tasks)} unfinished runs (the limit, "
                "GROUNDWORK_SERVICE__MAX_QUEUED); retry later"
            )

    # -- accepting ----------------------------------------------------------------------------
    async def submit(
        self,
        owner: str,
        request: str,
        *,
        policy: str = "planned",
        context: dict[str, Any] | None = None,
        kind: str = "run",
    ) -> RunRow:
        """Record the run durably, then start it; the caller answers only after this returns."""
        self._check_capacity()
        run_id = "run_" + uuid.uuid4().hex
        ctx = {k: v for k, v in (context or {}).items() if k in CONTEXT_KEYS and v is not None}
        await self.limiter.acquire(owner, run_id)
        now = time.time()
        row = RunRow(
            id=run_id,
            owner=owner,
            kind=kind,
            status="queued",
            request=request,
            policy=policy,
            context=ctx,
            turn=1,
            created_at=now,
            updated_at=now,
        )
        try:
            await self.store.create(row, ("status", {"status": "queued", "turn": 1}))
        except BaseException:
            await self.limiter.release(owner, run_id)
            raise
        log.info("run accepted", extra={"run_id": run_id, "tenant": owner, "kind": kind})
        self._launch(row, request, resumed=False)
        return row

    async def message(self, row: RunRow, text: str) -> RunRow:
        """The next turn of a finished (or waiting) run's thread."""
        if row.status in ACTIVE or row.id in self._tasks:
            raise RunConflict(
                f"run {row.id} is still {row.status}; wait for it to finish (GET /v1/runs/"
                f"{row.id}/events) or cancel it before sending a message"
            )
        self._check_capacity()
        await self.limiter.acquire(row.owner, row.id)
        turn = row.turn + 1
        try:
            await self.events.attach(row.id)
            fields = {"request": text, "turn": turn, "error": None, "question": None}
            await self.events.transition(row.id, "queued", fields, {"turn": turn})
        except BaseException:
            await self.limiter.release(row.owner, row.id)
            self.events.detach(row.id)
            raise
        log.info("run message accepted", extra={"run_id": row.id, "tenant": row.owner})
        row.status, row.request, row.turn = "queued", text, turn
        self._launch(row, text, resumed=False)
        return row

    async def cancel(self, row: RunRow) -> bool:
        """Stop an unfinished run; False when it had already finished."""
        task = self._tasks.get(row.id)
        if task is None or row.id in self._recording:
            return False  # finished, or its outcome is being stored: too late to cancel
        self._cancelled.add(row.id)
        task.cancel()
        await asyncio.wait({task})
        return True

    async def wait(self, run_id: str) -> None:
        """Until the run's task ends; never cancels it (a client disconnect leaves it running)."""
        task = self._tasks.get(run_id)
        if task is not None:
            await asyncio.wait({task})

    # -- executing ----------------------------------------------------------------------------
    def _launch(self, row: RunRow, request: str | None, *, resumed: bool) -> None:
        task = asyncio.create_task(
            self._execute(row, request, resumed=resumed), name=f"run-{row.id}"
        )
        self._tasks[row.id] = task

    async def _execute(self, row: RunRow, request: str | None, *, resumed: bool) -> None:
        run_id = row.id
        extra = {"run_id": run_id, "tenant": row.owner}
        finished = False
        try:
            await self.events.attach(run_id)
            async with self._slots:
                await self.events.transition(run_id, "running", {}, {"turn": row.turn})
                if resumed:
                    self.events.emit(
                        run_id, "notice", {"text": "resumed from its checkpoint after a restart"}
                    )
                log.info("run started", extra={**extra, "resumed": resumed})

                def on_event(event: Any) -> None:
                    self.events.emit(run_id, str(event["kind"]), dict(event["data"]))

                outcome = await asyncio.wait_for(
                    self.runner.run(
                        request,
                        thread_id=run_id,
                        policy=row.policy,
                        context=RunContext(**row.context) if row.context else None,
                        on_event=on_event,
                    ),
                    timeout=self.cfg.run_timeout_s,
                )
            self._recording.add(run_id)
            await self._record(row, outcome)
            finished = True
        except asyncio.CancelledError:
            if run_id in self._cancelled:
                await asyncio.shield(self._end(row, "cancelled", "cancelled by the client"))
                finished = True
            else:
                log.info("run interrupted by shutdown; it resumes at the next start", extra=extra)
            raise
        except TimeoutError:
            await self._end(
                row,
                "failed",
                f"the run took longer than {self.cfg.run_timeout_s:.0f} s "
                "(GROUNDWORK_SERVICE__RUN_TIMEOUT_S)",
            )
            finished = True
        except GroundworkError as e:
            await self._end(row, "failed", str(e))
            finished = True
        except Exception as e:  # a bug must still end the run, with its reason recorded
            log.exception("run crashed", extra=extra)
            await self._end(row, "failed", f"internal error: {type(e).__name__}: {e}")
            finished = True
        finally:
            self._tasks.pop(run_id, None)
            self._cancelled.discard(run_id)
            self._recording.discard(run_id)
            self.events.detach(run_id)
            if finished:
                await asyncio.shield(self._release(row))

    async def _release(self, row: RunRow) -> None:
        try:
            await self.limiter.release(row.owner, row.id)
        except LimiterUnavailable as e:
            # the slot expires on its own (its deadline); nothing else to do
            log.warning("run slot not released: %s", e, extra={"run_id": row.id})

    async def _record(self, row: RunRow, outcome: OutcomeLike) -> None:
        result = outcome_result(outcome)
        await self.store.grant(row.owner, artifact_shas(outcome.output))
        status = outcome.status if outcome.status in ("done", "failed", "interrupted") else "failed"
        fields = {"result": result, "error": outcome.error, "question": outcome.question}
        data = {"turn": row.turn, "error": outcome.error, "question": outcome.question}
        await self.events.transition(row.id, status, fields, data)  # type: ignore[arg-type]
        log.info(
            "run finished",
            extra={"run_id": row.id, "tenant": row.owner, "status": status, "error": outcome.error},
        )

    async def _end(self, row: RunRow, status: Any, reason: str) -> None:
        await self.events.transition(
            row.id, status, {"error": reason}, {"turn": row.turn, "error": reason}
        )
        log.info(
            "run ended",
            extra={"run_id": row.id, "tenant": row.owner, "status": status, "error": reason},
        )

    # -- restart and shutdown -----------------------------------------------------------------
    async def recover(self) -> dict[str, int]:
        """Start what was accepted but never started; resume what was running from its
        checkpoint; fail (with the reason) only what the checkpoint database cannot answer."""
        counts = {"started": 0, "resumed": 0, "failed": 0}
        for row in await self.store.unfinished():
            try:
                await self.limiter.hold(row.owner, row.id)
            except LimiterUnavailable as e:
                log.warning("run slot not restored: %s", e, extra={"run_id": row.id})
            if row.status == "queued":
                self._launch(row, row.request, resumed=False)
                counts["started"] += 1
                continue
            try:
                pending = tuple(p for p in await self.runner.pending(row.id, row.policy) if p)
                values = {} if pending else await self.runner.values(row.id, row.policy)
            except GroundworkError as e:
                await self.events.attach(row.id)
                await self._end(row, "failed", f"the server restarted and cannot resume: {e}")
                self.events.detach(row.id)
                await self._release(row)
                counts["failed"] += 1
                continue
            reached = values.get("request") == row.request and int(values.get("turn") or 0) >= (
                row.turn
            )
            if pending or reached:
                # unfinished: go on from the last stage; finished but unrecorded: the runner
                # returns the stored outcome without running anything again
                self._launch(row, None, resumed=True)
                counts["resumed"] += 1
            else:
                # stopped before this turn's first checkpoint: nothing ran yet, start it
                self._launch(row, row.request, resumed=False)
                counts["started"] += 1
        if any(counts.values()):
            log.info("recovered unfinished runs", extra=counts)
        return counts

    async def shutdown(self, grace_s: float) -> None:
        """Let runs finish for `grace_s`, then stop the rest (they stay resumable)."""
        self._closing = True
        tasks = set(self._tasks.values())
        if tasks and grace_s > 0:
            await asyncio.wait(tasks, timeout=grace_s)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
