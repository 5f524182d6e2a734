"""Run records, event logs and artifact grants in PostgreSQL, for several API replicas.

Chosen when `GROUNDWORK_STORE__URL=postgresql://...` (the same database as the LangGraph
checkpoints and the advisory thread locks, H4's `graphs/store.py`). Same interface as the
SQLite `RunStore`, plus what replicas need to share runs:

- a lease per run (`driver`, `lease_until`): a replica drives a run only while it holds the
  lease, renews it by heartbeat, and a run whose lease expired (its replica died) is claimed by
  another one with one atomic UPDATE, so at most one replica drives a run;
- a cancel request flag: `DELETE` on any replica reaches the replica that drives the run.

Events live beside the run rows, not in Redis: a status change and its event commit in one
transaction (a reader that sees "done" sees every event before it), and a replica taking a run
over continues its event ids after the last committed one, so an SSE stream resumed on another
replica has no gap and no duplicate. Writes go through one writer task per process, in order.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from service.store import (
    _COLUMNS,
    ACTIVE,
    EventRow,
    RunRow,
    RunStatus,
    RunStore,
    StoredEvent,
    StoreError,
)

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS service_runs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    request TEXT NOT NULL,
    policy TEXT NOT NULL,
    context TEXT NOT NULL,
    turn INTEGER NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    result TEXT,
    error TEXT,
    question TEXT,
    driver TEXT,
    lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX IF NOT EXISTS service_runs_status ON service_runs (status, lease_until);
CREATE INDEX IF NOT EXISTS service_runs_owner ON service_runs (owner, created_at);
CREATE TABLE IF NOT EXISTS service_events (
    run_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    ts DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE IF NOT EXISTS service_artifacts (
    sha256 TEXT NOT NULL,
    owner TEXT NOT NULL,
    PRIMARY KEY (sha256, owner)
);
"""

Statement = tuple[str, Sequence[Any]]
MAX_BATCH = 1000


def _db_errors() -> tuple[type[Exception], ...]:
    import psycopg

    return (psycopg.Error, OSError)


_EVENT_SQL = (
    "INSERT INTO service_events (run_id, seq, kind, data, ts) VALUES (%s, %s, %s, %s, %s) "
    "ON CONFLICT DO NOTHING"
)


@dataclass
class _Write:
    statements: list[Statement] = field(default_factory=list)
    done: asyncio.Future[None] | None = None
    on_commit: Callable[[], None] | None = None


class PgRunStore:
    """The service's records on PostgreSQL (psycopg 3 async pool)."""

    shared = True
    """Other replicas read and drive these runs: leases, cancel requests and polling apply."""

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 8) -> None:
        self.url = url
        self.path = "postgresql"  # what logs show instead of a file path (never the URL)
        self._min_size = min_size
        self._max_size = max_size
        self._pool: Any = None
        self._queue: asyncio.Queue[_Write] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None

    async def open(self) -> PgRunStore:
        import psycopg
        from psycopg_pool import AsyncConnectionPool

        pool = AsyncConnectionPool(
            self.url,
            min_size=self._min_size,
            max_size=self._max_size,
            open=False,
            kwargs={"autocommit": True},
        )
        try:
            await pool.open(wait=True, timeout=10)
            async with pool.connection() as conn:
                await conn.execute("SELECT pg_advisory_lock(hashtext('groundwork-service-schema'))")
                try:
                    await conn.execute(SCHEMA)
                finally:
                    await conn.execute(
                        "SELECT pg_advisory_unlock(hashtext('groundwork-service-schema'))"
                    )
        except (psycopg.Error, OSError) as e:
            await pool.close()
            raise StoreError(
                f"cannot open the service tables in PostgreSQL: {type(e).__name__}: {e}; check "
                "GROUNDWORK_STORE__URL and that the role may create tables"
            ) from e
        self._pool = pool
        self._writer = asyncio.create_task(self._write_loop(), name="service-pg-writer")
        return self

    async def close(self) -> None:
        if self._writer is not None:
            await self.barrier()
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    # -- plumbing -----------------------------------------------------------------------------
    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        import psycopg

        if self._pool is None:
            raise StoreError("the service database is not open (PgRunStore.open() first)")
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(sql, params)
                rows: list[tuple[Any, ...]] = await cur.fetchall() if cur.description else []
                return rows
        except psycopg.Error as e:
            raise StoreError(f"service database query failed: {type(e).__name__}: {e}") from e

    async def _execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        import psycopg

        if self._pool is None:
            raise StoreError("the service database is not open (PgRunStore.open() first)")
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(sql, params)
                return int(cur.rowcount)
        except psycopg.Error as e:
            raise StoreError(f"service database write failed: {type(e).__name__}: {e}") from e

    def enqueue(self, write: _Write) -> None:
        if self._writer is None:
            raise StoreError("the service database is not open (PgRunStore.open() first)")
        self._queue.put_nowait(write)

    async def submit(self, write: _Write) -> None:
        write.done = asyncio.get_running_loop().create_future()
        self.enqueue(write)
        await write.done

    async def barrier(self) -> None:
        await self.submit(_Write())

    async def _write_loop(self) -> None:
        """Group commit: every write queued while the previous transaction ran goes into the
        next one (200 clients starting runs cost a few round trips, not 200). A batch that
        fails is retried write by write, so one bad write fails alone."""
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < MAX_BATCH:
                batch.append(self._queue.get_nowait())
            errors: dict[int, Exception] = {}
            if any(w.statements for w in batch):
                try:
                    await self._commit(batch)
                except Exception as e:  # noqa: BLE001 - reported to every waiter below
                    # whatever the driver raises, the writer must live on: a dead writer
                    # would leave every later write (and a cancel waiting on one) hanging
                    if len(batch) == 1 or not isinstance(e, _db_errors()):
                        log.exception("service database batch failed (%d writes)", len(batch))
                        errors = dict.fromkeys(range(len(batch)), e)
                    else:
                        for k, write in enumerate(batch):
                            try:
                                await self._commit([write])
                            except _db_errors() as one:
                                errors[k] = one
            for k, write in enumerate(batch):
                error = errors.get(k)
                if error is not None:
                    log.error("service database write failed: %s", error)
                if error is None and write.on_commit is not None:
                    write.on_commit()
                if write.done is not None and not write.done.done():
                    if error is None:
                        write.done.set_result(None)
                    else:
                        write.done.set_exception(
                            StoreError(f"service database write failed: {error}")
                        )

    async def _commit(self, batch: list[_Write]) -> None:
        async with (
            self._pool.connection() as conn,
            conn.transaction(),
            conn.cursor() as cur,
        ):
            for write in batch:
                for sql, params in write.statements:
                    await cur.execute(sql, params)

    async def ping(self) -> None:
        await self._fetch("SELECT 1")

    # -- runs ---------------------------------------------------------------------------------
    async def create(
        self,
        row: RunRow,
        event: tuple[str, dict[str, Any]],
        lease: tuple[str, float] | None = None,
    ) -> None:
        """Insert a run and its first event; with `lease` (replica, ttl) the accepting replica
        holds it from the start, so no other replica's sweep can take a run just accepted."""
        driver, until = (lease[0], time.time() + lease[1]) if lease else (None, 0.0)
        values = (
            row.id,
            row.owner,
            row.kind,
            row.status,
            row.request,
            row.policy,
            json.dumps(row.context),
            row.turn,
            row.created_at,
            row.updated_at,
            None,
            None,
            None,
            driver,
            until,
        )
        marks = ",".join(["%s"] * len(values))
        columns = f"{_COLUMNS}, driver, lease_until"
        statements: list[Statement] = [
            (f"INSERT INTO service_runs ({columns}) VALUES ({marks})", values),
            (_EVENT_SQL, (row.id, 1, event[0], json.dumps(event[1], default=str), time.time())),
        ]
        await self.submit(_Write(statements=statements))

    async def transition(
        self,
        run_id: str,
        fields: dict[str, Any],
        event: tuple[int, str, dict[str, Any]] | None = None,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        values = dict(fields)
        if "result" in values and values["result"] is not None:
            values["result"] = json.dumps(values["result"])
        if "context" in values:
            values["context"] = json.dumps(values["context"])
        values["updated_at"] = time.time()
        assignments = ", ".join(f"{k} = %s" for k in values)
        statements: list[Statement] = [
            (f"UPDATE service_runs SET {assignments} WHERE id = %s", (*values.values(), run_id))
        ]
        if event is not None:
            seq, kind, data = event
            statements.append(
                (_EVENT_SQL, (run_id, seq, kind, json.dumps(data, default=str), time.time()))
            )
        await self.submit(_Write(statements=statements, on_commit=on_commit))

    async def get(self, run_id: str) -> RunRow | None:
        rows = await self._fetch(f"SELECT {_COLUMNS} FROM service_runs WHERE id = %s", (run_id,))
        return RunRow.from_db(rows[0]) if rows else None

    async def status(self, run_id: str) -> RunStatus | None:
        rows = await self._fetch("SELECT status FROM service_runs WHERE id = %s", (run_id,))
        return rows[0][0] if rows else None

    async def unfinished(self) -> list[RunRow]:
        sql = (
            f"SELECT {_COLUMNS} FROM service_runs WHERE status = ANY(%s) AND lease_until < %s "
            "ORDER BY created_at"
        )
        rows = await self._fetch(sql, (list(ACTIVE), time.time()))
        return [RunRow.from_db(r) for r in rows]

    async def list_runs(self, owner: str, limit: int) -> list[RunRow]:
        sql = (
            f"SELECT {_COLUMNS} FROM service_runs WHERE owner = %s "
            "ORDER BY created_at DESC LIMIT %s"
        )
        return [RunRow.from_db(r) for r in await self._fetch(sql, (owner, limit))]

    # -- leases -------------------------------------------------------------------------------
    async def claim(self, run_id: str, replica: str, ttl_s: float) -> bool:
        """Take (or keep) the run's lease; False when another live replica holds it."""
        now = time.time()
        sql = (
            "UPDATE service_runs SET driver = %s, lease_until = %s WHERE id = %s AND "
            "(driver IS NULL OR driver = %s OR lease_until < %s)"
        )
        return await self._execute(sql, (replica, now + ttl_s, run_id, replica, now)) == 1

    async def renew(self, run_ids: Iterable[str], replica: str, ttl_s: float) -> set[str]:
        """Extend this replica's leases; returns the ids it still holds."""
        ids = list(run_ids)
        if not ids:
            return set()
        sql = (
            "UPDATE service_runs SET lease_until = %s WHERE id = ANY(%s) AND driver = %s "
            "RETURNING id"
        )
        rows = await self._fetch(sql, (time.time() + ttl_s, ids, replica))
        return {r[0] for r in rows}

    async def release_lease(self, run_id: str, replica: str) -> None:
        sql = "UPDATE service_runs SET driver = NULL, lease_until = 0 WHERE id = %s AND driver = %s"
        await self._execute(sql, (run_id, replica))

    async def request_cancel(self, run_id: str) -> None:
        await self._execute(
            "UPDATE service_runs SET cancel_requested = TRUE WHERE id = %s", (run_id,)
        )

    async def cancel_requested(self, run_ids: Iterable[str]) -> set[str]:
        ids = list(run_ids)
        if not ids:
            return set()
        sql = "SELECT id FROM service_runs WHERE id = ANY(%s) AND cancel_requested"
        rows = await self._fetch(sql, (ids,))
        return {r[0] for r in rows}

    async def clear_cancel(self, run_id: str) -> None:
        await self._execute(
            "UPDATE service_runs SET cancel_requested = FALSE WHERE id = %s", (run_id,)
        )

    # -- events -------------------------------------------------------------------------------
    def append_events(self, rows: list[EventRow], on_commit: Callable[[], None]) -> None:
        now = time.time()
        statements: list[Statement] = [
            (_EVENT_SQL, (r, s, k, json.dumps(d, default=str), now)) for r, s, k, d in rows
        ]
        self.enqueue(_Write(statements=statements, on_commit=on_commit))

    async def events_after(self, run_id: str, after: int, limit: int = 500) -> list[StoredEvent]:
        sql = (
            "SELECT seq, kind, data FROM service_events WHERE run_id = %s AND seq > %s "
            "ORDER BY seq LIMIT %s"
        )
        rows = await self._fetch(sql, (run_id, after, limit))
        return [StoredEvent(int(seq), kind, data) for seq, kind, data in rows]

    async def max_seq(self, run_id: str) -> int:
        sql = "SELECT COALESCE(MAX(seq), 0) FROM service_events WHERE run_id = %s"
        rows = await self._fetch(sql, (run_id,))
        return int(rows[0][0]) if rows else 0

    # -- artifacts ----------------------------------------------------------------------------
    async def grant(self, owner: str, shas: Iterable[str]) -> None:
        sql = "INSERT INTO service_artifacts (sha256, owner) VALUES (%s, %s) ON CONFLICT DO NOTHING"
        statements: list[Statement] = [(sql, (sha, owner)) for sha in sorted(set(shas))]
        if statements:
            await self.submit(_Write(statements=statements))

    async def owns(self, owner: str, sha256: str) -> bool:
        sql = "SELECT 1 FROM service_artifacts WHERE sha256 = %s AND owner = %s"
        return bool(await self._fetch(sql, (sha256, owner)))


AnyStore = RunStore | PgRunStore
"""Either store; the service code is written against their shared interface."""
