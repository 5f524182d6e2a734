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
import os
import re
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from agent.services import Services
from agent.settings import RunContext, Settings, override_fields
from core.errors import GroundworkError
from graphs.locks import ThreadBusy
from service.events import EventLog
from service.limits import Limiter, LimiterUnavailable
from service.pgstore import AnyStore
from service.settings import ServiceSettings
from service.store import ACTIVE, TERMINAL, RunRow

log = logging.getLogger(__name__)

DOSSIER_MAX_CHARS = 200_000
CONTEXT_KEYS = frozenset(spec.name for spec in override_fields() if spec.http)
"""RunContext fields a request may set (the override table's `http` rows)."""
_CLI_RESUME = re.compile(r"groundwork run --thread (\S+)")


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

    async def discard(self, thread_id: str, policy: Any = "planned") -> None:
        """Drop the thread's unfinished work (a cancelled turn) so a new message starts the
        next turn; earlier turns (their images, research and history) stay."""

    async def seed_edit(
        self, thread_id: str, policy: Any, prompt: str, image: dict[str, Any]
    ) -> None:
        """Start a new thread as if its first turn had asked to change `image` (a
        GenerationResult as a dict): the run then refines the prompt and edits that image."""


RunnerFactory = Callable[[Settings, Services], RunnerLike]


def default_runner_factory(settings: Settings, services: Services) -> RunnerLike:
    from langgraph.constants import END

    from graphs.runner import Runner

    class ServiceRunner(Runner):
        """The shared Runner plus what only the service needs: dropping a cancelled turn."""

        async def discard(self, thread_id: str, policy: Any = "planned") -> None:
            # LangGraph's documented way to clear a thread's pending tasks: an empty update
            # "as END". The checkpoint keeps every value; only `next` becomes empty.
            graph = self.graph(policy)
            await graph.aupdate_state(self.config(thread_id), None, as_node=END)

        async def seed_edit(
            self, thread_id: str, policy: Any, prompt: str, image: dict[str, Any]
        ) -> None:
            # What intake writes for a refine of the image on screen; written "as intake", so
            # the thread's next step is the graph's own refine edge (refine -> generate img2img
            # -> critique), exactly the path of a chat refine.
            values = {
                "request": prompt,
                "prompt": prompt,
                "turn": 1,
                "intent": "refine",
                "edit_instruction": prompt,
                "image": image,
                "last_image": image,
                "grounded": {"gen_prompt": prompt, "reference_images": [], "facts": []},
                "image_ids": {},
                "gaps": None,
                "observations": [],
                "rounds": [],
                "round": 0,
                "tool_calls": 0,
            }
            graph = self.graph(policy)
            await graph.aupdate_state(self.config(thread_id), values, as_node="intake")

    runner: RunnerLike = ServiceRunner(settings, services)
    return runner


def for_service(text: str | None, run_id: str) -> str | None:
    """An error text as a service client can act on it: the CLI's resume command becomes the
    resume route (a service user has no `groundwork run --thread`)."""
    if text is None:
        return None
    return _CLI_RESUME.sub(f"POST /v1/runs/{run_id}/resume", text)


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
        store: AnyStore,
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
        self.replica = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        """This process among the replicas sharing a PostgreSQL store (lease holder name)."""
        self._heartbeat: asyncio.Task[None] | None = None

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
        edit: dict[str, Any] | None = None,
    ) -> RunRow:
        """Record the run durably, then start it; the caller answers only after this returns.

        `edit` (a GenerationResult as a dict) makes it an edit of that image: the thread is
        seeded before the run is recorded, so a restart resumes the edit, never a new image."""
        self._check_capacity()
        run_id = "run_" + uuid.uuid4().hex
        ctx = {k: v for k, v in (context or {}).items() if k in CONTEXT_KEYS and v is not None}
        await self.limiter.acquire(owner, run_id)
        if edit is not None:
            try:
                await self.runner.seed_edit(run_id, policy, request, edit)
            except BaseException:
                await self.limiter.release(owner, run_id)
                raise
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
            await self.store.create(
                row,
                ("status", {"status": "queued", "turn": 1}),
                lease=(self.replica, self.cfg.lease_ttl_s),
            )
        except BaseException:
            await self.limiter.release(owner, run_id)
            raise
        log.info("run accepted", extra={"run_id": run_id, "tenant": owner, "kind": kind})
        # an edit resumes its seeded thread (None); anything else starts from its request
        self._launch(row, None if edit is not None else request, resumed=None)
        return row

    async def message(self, row: RunRow, text: str) -> RunRow:
        """The next turn of a finished, waiting, failed or cancelled run's thread.

        A cancelled or failed turn may have left unfinished work on the thread (the stages
        after the cancel or the failure); it is dropped first, so the message starts a new
        turn instead of being refused as a different prompt for the unfinished one.
        (`resume` is how to continue the unfinished work instead.)"""
        self._check_idle(row)
        if row.status in ("cancelled", "failed"):
            pending = tuple(p for p in await self.runner.pending(row.id, row.policy) if p)
            if pending:
                await self.runner.discard(row.id, row.policy)
        return await self._next_turn(row, text, turn=row.turn + 1)

    async def resume(self, row: RunRow) -> RunRow:
        """Continue a failed or cancelled turn from its checkpoint, without repeating the
        stages it finished."""
        self._check_idle(row)
        if row.status not in ("failed", "cancelled"):
            raise RunConflict(
                f"run {row.id} is {row.status}; only a failed or cancelled run can be resumed "
                f"(send a message with POST /v1/runs/{row.id}/messages to continue its thread)"
            )
        pending = tuple(p for p in await self.runner.pending(row.id, row.policy) if p)
        if not pending:
            raise RunConflict(
                f"run {row.id} has nothing left to resume (it stopped before its first "
                f"checkpoint, or after its last stage); send its prompt again with POST "
                f"/v1/runs/{row.id}/messages"
            )
        return await self._next_turn(row, None, turn=row.turn)

    def _check_idle(self, row: RunRow) -> None:
        if row.status in ACTIVE or row.id in self._tasks:
            raise RunConflict(
                f"run {row.id} is still {row.status}; wait for it to finish (GET /v1/runs/"
                f"{row.id}/events) or cancel it before sending a message"
            )
        self._check_capacity()

    async def _next_turn(self, row: RunRow, text: str | None, *, turn: int) -> RunRow:
        """Queue `text` as turn `turn` of the thread (None: resume the current turn)."""
        await self.limiter.acquire(row.owner, row.id)
        try:
            await self.events.attach(row.id)
            fields: dict[str, Any] = {"turn": turn, "error": None, "question": None}
            if text is not None:
                fields["request"] = text
            await self.events.transition(row.id, "queued", fields, {"turn": turn})
        except BaseException:
            await self.limiter.release(row.owner, row.id)
            self.events.detach(row.id)
            raise
        log.info("run message accepted", extra={"run_id": row.id, "tenant": row.owner})
        row.status, row.turn = "queued", turn
        if text is not None:
            row.request = text
        self._launch(row, text, resumed="resumed from its checkpoint" if text is None else None)
        return row

    async def cancel(self, row: RunRow) -> bool:
        """Stop an unfinished run; False when it had already finished. A run another replica
        drives gets a cancel request that replica acts on at its next heartbeat."""
        task = self._tasks.get(row.id)
        if task is None and self.store.shared and await self.store.status(row.id) in ACTIVE:
            return await self._cancel_remote(row.id)
        if task is None or row.id in self._recording:
            return False  # finished, or its outcome is being stored: too late to cancel
        self._cancelled.add(row.id)
        task.cancel()
        await asyncio.wait({task})
        return True

    async def _cancel_remote(self, run_id: str) -> bool:
        await self.store.request_cancel(run_id)
        deadline = time.monotonic() + self.cfg.lease_ttl_s * 2
        while time.monotonic() < deadline:
            status = await self.store.status(run_id)
            if status in TERMINAL:
                return status == "cancelled"
            await asyncio.sleep(min(0.2, self.cfg.lease_ttl_s / 10))
        return True  # requested; its driver (or the replica that takes it over) cancels it

    async def wait(self, run_id: str) -> None:
        """Until the run ends; never cancels it (a client disconnect leaves it running). With
        a shared store the run may end on another replica (a takeover): its record says when."""
        task = self._tasks.get(run_id)
        if task is not None:
            await asyncio.wait({task})
        if self.store.shared:
            while await self.store.status(run_id) in ACTIVE:
                await asyncio.sleep(self.cfg.sse_poll_s)

    # -- executing ----------------------------------------------------------------------------
    def _launch(self, row: RunRow, request: str | None, *, resumed: str | None) -> None:
        """Start the run's task; `resumed` is the notice its stream gets when it goes on from
        a checkpoint."""
        task = asyncio.create_task(
            self._execute(row, request, resumed=resumed), name=f"run-{row.id}"
        )
        self._tasks[row.id] = task

    async def _execute(self, row: RunRow, request: str | None, *, resumed: str | None) -> None:
        run_id = row.id
        extra = {"run_id": run_id, "tenant": row.owner}
        finished = False
        try:
            if not await self.store.claim(run_id, self.replica, self.cfg.lease_ttl_s):
                log.info("run is driven by another replica", extra=extra)
                return
            await self.events.attach(run_id)
            async with self._slots:
                await self.events.transition(run_id, "running", {}, {"turn": row.turn})
                if resumed:
                    self.events.emit(run_id, "notice", {"text": resumed})
                log.info("run started", extra={**extra, "resumed": bool(resumed)})

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
                log.info(
                    "run interrupted (shutdown or lease lost); it resumes from its checkpoint",
                    extra=extra,
                )
            raise
        except TimeoutError:
            await self._end(
                row,
                "failed",
                f"the run took longer than {self.cfg.run_timeout_s:.0f} s "
                "(GROUNDWORK_SERVICE__RUN_TIMEOUT_S)",
            )
            finished = True
        except ThreadBusy as e:
            if self.store.shared:
                # the replica that drove it is still running the graph (its lease lapsed, its
                # thread lock did not): leave the run to it; the lease is dropped below, and
                # whoever holds the thread at the next heartbeat finishes it
                log.warning("run still driven elsewhere: %s", e, extra=extra)
            else:
                await self._end(row, "failed", str(e))
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
            # finished: nobody needs it; interrupted: another replica may take it over now
            await asyncio.shield(self._drop_lease(run_id))

    async def _drop_lease(self, run_id: str) -> None:
        from service.store import StoreError

        try:
            await self.store.release_lease(run_id, self.replica)
        except StoreError as e:
            log.warning("lease not released (it expires): %s", e, extra={"run_id": run_id})

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
        error = for_service(outcome.error, row.id)
        fields = {"result": result, "error": error, "question": outcome.question}
        data = {"turn": row.turn, "error": error, "question": outcome.question}
        await self.events.transition(row.id, status, fields, data)  # type: ignore[arg-type]
        log.info(
            "run finished",
            extra={"run_id": row.id, "tenant": row.owner, "status": status, "error": error},
        )

    async def _end(self, row: RunRow, status: Any, reason: str) -> None:
        reason = for_service(reason, row.id) or reason
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
        checkpoint; fail (with the reason) only what the checkpoint database cannot answer.
        With a shared store, only runs whose lease lapsed (no live replica drives them)."""
        counts = {"started": 0, "resumed": 0, "failed": 0}
        for row in await self.store.unfinished():
            if row.id in self._tasks:
                continue
            if not await self.store.claim(row.id, self.replica, self.cfg.lease_ttl_s):
                continue  # another replica took it first
            counts[await self._recover_row(row)] += 1
        if any(counts.values()):
            log.info("recovered unfinished runs", extra={**counts, "replica": self.replica})
        return counts

    async def _recover_row(self, row: RunRow) -> str:
        try:
            await self.limiter.hold(row.owner, row.id)
        except LimiterUnavailable as e:
            log.warning("run slot not restored: %s", e, extra={"run_id": row.id})
        if row.status == "queued":
            self._launch(row, row.request, resumed=None)
            return "started"
        try:
            pending = tuple(p for p in await self.runner.pending(row.id, row.policy) if p)
            values = {} if pending else await self.runner.values(row.id, row.policy)
        except GroundworkError as e:
            await self.events.attach(row.id)
            await self._end(row, "failed", f"the server restarted and cannot resume: {e}")
            self.events.detach(row.id)
            await self._release(row)
            await self._drop_lease(row.id)
            return "failed"
        reached = values.get("request") == row.request and int(values.get("turn") or 0) >= (
            row.turn
        )
        if pending or reached:
            # unfinished: go on from the last stage; finished but unrecorded: the runner
            # returns the stored outcome without running anything again
            self._launch(row, None, resumed="resumed from its checkpoint after a restart")
            return "resumed"
        # stopped before this turn's first checkpoint: nothing ran yet, start it
        self._launch(row, row.request, resumed=None)
        return "started"

    def start(self) -> None:
        """Begin the heartbeat: renew this replica's leases, act on cancel requests from other
        replicas, and take over runs whose replica died (shared store only)."""
        if self.store.shared and self._heartbeat is None:
            self._heartbeat = asyncio.create_task(self._beat(), name="service-heartbeat")

    async def _beat(self) -> None:
        from service.store import StoreError

        interval = self.cfg.lease_ttl_s / 3
        while not self._closing:
            await asyncio.sleep(interval)
            try:
                await self._beat_once()
            except (StoreError, LimiterUnavailable) as e:
                # leases lapse if this goes on; another replica then takes the runs over
                log.warning("heartbeat failed: %s", e, extra={"replica": self.replica})

    async def _beat_once(self) -> None:
        local = set(self._tasks)
        held = await self.store.renew(local, self.replica, self.cfg.lease_ttl_s)
        for run_id in local - held:
            task = self._tasks.get(run_id)
            if task is not None and run_id not in self._recording:
                # another replica took it over (this one stalled past its lease): stop
                # driving it; it is not cancelled, it goes on there
                log.warning("lease lost; stopping the run here", extra={"run_id": run_id})
                task.cancel()
        for run_id in await self.store.cancel_requested(held):
            task = self._tasks.get(run_id)
            await self.store.clear_cancel(run_id)
            if task is not None and run_id not in self._recording:
                self._cancelled.add(run_id)
                task.cancel()
        if not self._closing:
            await self.recover()

    async def shutdown(self, grace_s: float) -> None:
        """Let runs finish for `grace_s`, then stop the rest (they stay resumable)."""
        self._closing = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
        tasks = set(self._tasks.values())
        if tasks and grace_s > 0:
            await asyncio.wait(tasks, timeout=grace_s)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
