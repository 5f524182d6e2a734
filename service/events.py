"""Each run's event log: numbered, persisted by the store's group-committing writer, and pushed
to live SSE readers.

The runner calls `on_event` synchronously (sometimes from a generator thread), so `emit` only
numbers the event and queues it; once the store has committed it, the readers of that run are
woken. Readers never trust the wake-up alone: they re-read the database after it, which is
what makes replay and live tail the same code.
"""

from __future__ import annotations

import asyncio
import threading
from functools import partial
from typing import Any

from service.pgstore import AnyStore
from service.store import RunStatus


class EventLog:
    def __init__(self, store: AnyStore) -> None:
        self.store = store
        self._seq: dict[str, int] = {}
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()

    async def stop(self) -> None:
        await self.flush()

    # -- numbering ----------------------------------------------------------------------------
    async def attach(self, run_id: str) -> None:
        """Load a run's last event id so new events continue after it (once per execution)."""
        if run_id not in self._seq:
            self._seq[run_id] = await self.store.max_seq(run_id)

    def detach(self, run_id: str) -> None:
        self._seq.pop(run_id, None)

    def _next(self, run_id: str) -> int:
        seq = self._seq.get(run_id, 0) + 1
        self._seq[run_id] = seq
        return seq

    def emit(self, run_id: str, kind: str, data: dict[str, Any]) -> None:
        """Queue one event; safe from any thread (the runner's generator threads included)."""
        if self._loop is None:
            raise RuntimeError("EventLog.start() was not called")
        if threading.get_ident() != self._thread:
            self._loop.call_soon_threadsafe(self.emit, run_id, kind, data)
            return
        row = (run_id, self._next(run_id), kind, data)
        self.store.append_events([row], on_commit=partial(self._wake, run_id))

    async def flush(self) -> None:
        """Return once every event emitted before this call is committed."""
        await self.store.barrier()

    async def transition(
        self, run_id: str, status: RunStatus, fields: dict[str, Any], data: dict[str, Any]
    ) -> None:
        """Change a run's status and log it as its next event. The store commits writes in
        order, so every earlier event is stored no later than this one."""
        event = (self._next(run_id), "status", {"status": status, **data})
        await self.store.transition(
            run_id, {**fields, "status": status}, event, on_commit=partial(self._wake, run_id)
        )

    # -- readers ------------------------------------------------------------------------------
    def listen(self, run_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._waiters.setdefault(run_id, set()).add(event)
        return event

    def unlisten(self, run_id: str, event: asyncio.Event) -> None:
        waiters = self._waiters.get(run_id)
        if waiters is not None:
            waiters.discard(event)
            if not waiters:
                del self._waiters[run_id]

    def _wake(self, run_id: str) -> None:
        for event in self._waiters.get(run_id, ()):
            event.set()
