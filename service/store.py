"""Durable records of the service: runs, their event logs, and who owns which artifact.

One SQLite file in WAL mode, written by one thread with group commit: every write queued while
the previous commit was on disk goes into the next transaction, so 200 clients starting runs
at once cost a handful of fsyncs, not 200. A batch holding a run record (acceptance, a status
change, a result) commits with `synchronous=FULL`: on disk before the client hears
"accepted". Event-only batches commit with NORMAL (safe against a killed process, the case
SSE replay is about; a power cut may drop the last few). Events carry increasing per-run ids,
so an SSE client that reconnects with `Last-Event-ID` gets exactly what it missed. Reads use
their own connections (WAL readers never wait for the writer).

SQLite and not Redis: the LangGraph checkpoints that resume a run already live in a local
SQLite file, so the records that decide *whether* to resume belong on the same disk.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from core.errors import GroundworkError

log = logging.getLogger(__name__)
T = TypeVar("T")
READERS = 4
MAX_BATCH = 2000

RunStatus = Literal["queued", "running", "done", "failed", "interrupted", "cancelled"]
ACTIVE: tuple[RunStatus, ...] = ("queued", "running")
TERMINAL: tuple[RunStatus, ...] = ("done", "failed", "interrupted", "cancelled")

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    request TEXT NOT NULL,
    policy TEXT NOT NULL,
    context TEXT NOT NULL,
    turn INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    result TEXT,
    error TEXT,
    question TEXT
);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status);
CREATE INDEX IF NOT EXISTS runs_owner ON runs (owner, created_at);
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    ts REAL NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS artifacts (
    sha256 TEXT NOT NULL,
    owner TEXT NOT NULL,
    PRIMARY KEY (sha256, owner)
) WITHOUT ROWID;
"""

_COLUMNS = (
    "id, owner, kind, status, request, policy, context, turn, created_at, updated_at, "
    "result, error, question"
)


class StoreError(GroundworkError):
    pass


@dataclass
class RunRow:
    id: str
    owner: str
    kind: str
    status: RunStatus
    request: str
    policy: str
    context: dict[str, Any]
    turn: int
    created_at: float
    updated_at: float
    result: dict[str, Any] | None = None
    error: str | None = None
    question: str | None = None

    @classmethod
    def from_db(cls, row: Iterable[Any]) -> RunRow:
        (id_, owner, kind, status, request, policy, context, turn, created, updated, result,
         error, question) = row  # fmt: skip
        return cls(
            id=id_,
            owner=owner,
            kind=kind,
            status=status,
            request=request,
            policy=policy,
            context=json.loads(context),
            turn=turn,
            created_at=created,
            updated_at=updated,
            result=json.loads(result) if result else None,
            error=error,
            question=question,
        )


@dataclass(frozen=True)
class StoredEvent:
    seq: int
    kind: str
    data: str  # JSON text, sent to SSE clients as is


Statement = tuple[str, Sequence[Any]]
EventRow = tuple[str, int, str, dict[str, Any]]


@dataclass
class _Write:
    """One queued write: statements run atomically (a savepoint), or event rows."""

    statements: list[Statement] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)
    durable: bool = False
    done: asyncio.Future[None] | None = None
    on_commit: Callable[[], None] | None = None


class RunStore:
    """Async access to the SQLite file: a group-committing writer and a pool of readers."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).expanduser()
        self._queue: asyncio.Queue[_Write] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._wx: ThreadPoolExecutor | None = None
        self._rx: ThreadPoolExecutor | None = None
        self._wconn: sqlite3.Connection | None = None
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=10000")
        return conn

    async def open(self) -> RunStore:
        def setup() -> sqlite3.Connection:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._connect()
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(SCHEMA)
            return conn

        self._wx = ThreadPoolExecutor(1, thread_name_prefix="service-db-writer")
        self._rx = ThreadPoolExecutor(READERS, thread_name_prefix="service-db-reader")
        try:
            self._wconn = await asyncio.get_running_loop().run_in_executor(self._wx, setup)
        except (OSError, sqlite3.Error) as e:
            await self.close()
            raise StoreError(
                f"cannot open the service database {self.path}: {e}; set "
                "GROUNDWORK_SERVICE__DB to a writable file"
            ) from e
        self._writer = asyncio.create_task(self._write_loop(), name="service-db-writer")
        return self

    async def close(self) -> None:
        if self._writer is not None:
            await self.barrier()
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        for pool in (self._rx, self._wx):
            if pool is not None:
                pool.shutdown(wait=True)
        self._rx = self._wx = None
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        if self._wconn is not None:
            self._wconn.close()
            self._wconn = None

    # -- plumbing -----------------------------------------------------------------------------
    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._rx is None:
            raise StoreError("the service database is not open (RunStore.open() first)")
        return await asyncio.get_running_loop().run_in_executor(
            self._rx, lambda: fn(self._reader())
        )

    def enqueue(self, write: _Write) -> None:
        """Queue a write without waiting (EventLog.emit); see `submit` to wait for it."""
        if self._writer is None:
            raise StoreError("the service database is not open (RunStore.open() first)")
        self._queue.put_nowait(write)

    async def submit(self, write: _Write) -> None:
        """Queue a write and return once it is committed."""
        write.done = asyncio.get_running_loop().create_future()
        self.enqueue(write)
        await write.done

    async def barrier(self) -> None:
        """Return once everything queued before this call is committed."""
        await self.submit(_Write())

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < MAX_BATCH:
                batch.append(self._queue.get_nowait())
            try:
                errors = await loop.run_in_executor(self._wx, self._commit, batch)
            except sqlite3.Error as e:  # the commit itself failed: nothing in it was stored
                log.exception("service database write failed (%d writes)", len(batch))
                errors = {i: e for i in range(len(batch))}
            for i, write in enumerate(batch):
                error = errors.get(i)
                if error is None and write.on_commit is not None:
                    write.on_commit()
                if write.done is not None and not write.done.done():
                    if error is None:
                        write.done.set_result(None)
                    else:
                        write.done.set_exception(
                            StoreError(f"service database write failed: {error}")
                        )

    def _commit(self, batch: list[_Write]) -> dict[int, sqlite3.Error]:
        """Runs in the writer thread: one transaction for the whole batch."""
        conn = self._wconn
        assert conn is not None
        durable = any(w.durable for w in batch)
        errors: dict[int, sqlite3.Error] = {}
        if durable:
            conn.execute("PRAGMA synchronous=FULL")
        try:
            conn.execute("BEGIN IMMEDIATE")
            events = [r for w in batch for r in w.events]
            if events:
                now = time.time()
                conn.executemany(
                    "INSERT OR IGNORE INTO events (run_id, seq, kind, data, ts) VALUES (?,?,?,?,?)",
                    [(r, s, k, json.dumps(d, default=str), now) for r, s, k, d in events],
                )
            for i, write in enumerate(batch):
                if not write.statements:
                    continue
                conn.execute("SAVEPOINT w")
                try:
                    for sql, params in write.statements:
                        conn.execute(sql, params)
                    conn.execute("RELEASE w")
                except sqlite3.Error as e:
                    conn.execute("ROLLBACK TO w")
                    conn.execute("RELEASE w")
                    errors[i] = e
            conn.execute("COMMIT")
        except sqlite3.Error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            if durable:
                conn.execute("PRAGMA synchronous=NORMAL")
        return errors

    async def ping(self) -> None:
        await self._read(lambda c: c.execute("SELECT 1").fetchone())

    # -- runs ---------------------------------------------------------------------------------
    async def create(
        self,
        row: RunRow,
        event: tuple[str, dict[str, Any]],
        lease: tuple[str, float] | None = None,
    ) -> None:
        """Insert a run and its first event (seq 1), durably. (`lease`: see PgRunStore; one
        process owns a SQLite file, so it has no use here.)"""
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
        )
        statements: list[Statement] = [
            (f"INSERT INTO runs ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", values),
            _event_statement(row.id, 1, event[0], event[1]),
        ]
        await self.submit(_Write(statements=statements, durable=True))

    async def transition(
        self,
        run_id: str,
        fields: dict[str, Any],
        event: tuple[int, str, dict[str, Any]] | None = None,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        """Update a run's columns and append one event, atomically and durably (readers see
        both or neither, and every event queued before this one)."""
        values = dict(fields)
        if "result" in values and values["result"] is not None:
            values["result"] = json.dumps(values["result"])
        if "context" in values:
            values["context"] = json.dumps(values["context"])
        values["updated_at"] = time.time()
        assignments = ", ".join(f"{k} = ?" for k in values)
        statements: list[Statement] = [
            (f"UPDATE runs SET {assignments} WHERE id = ?", (*values.values(), run_id))
        ]
        if event is not None:
            statements.append(_event_statement(run_id, *event))
        await self.submit(_Write(statements=statements, durable=True, on_commit=on_commit))

    async def get(self, run_id: str) -> RunRow | None:
        row = await self._read(
            lambda c: c.execute(f"SELECT {_COLUMNS} FROM runs WHERE id = ?", (run_id,)).fetchone()
        )
        return RunRow.from_db(row) if row else None

    async def status(self, run_id: str) -> RunStatus | None:
        row = await self._read(
            lambda c: c.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
        )
        return row[0] if row else None

    async def unfinished(self) -> list[RunRow]:
        marks = ",".join("?" * len(ACTIVE))
        sql = f"SELECT {_COLUMNS} FROM runs WHERE status IN ({marks}) ORDER BY created_at"
        rows = await self._read(lambda c: c.execute(sql, ACTIVE).fetchall())
        return [RunRow.from_db(r) for r in rows]

    async def list_runs(self, owner: str, limit: int) -> list[RunRow]:
        sql = f"SELECT {_COLUMNS} FROM runs WHERE owner = ? ORDER BY created_at DESC LIMIT ?"
        rows = await self._read(lambda c: c.execute(sql, (owner, limit)).fetchall())
        return [RunRow.from_db(r) for r in rows]

    # -- leases (one process owns its SQLite file: every lease is its own) --------------------
    shared = False
    """Whether other server processes read and drive these runs (PgRunStore: True)."""

    async def claim(self, run_id: str, replica: str, ttl_s: float) -> bool:
        return True

    async def renew(self, run_ids: Iterable[str], replica: str, ttl_s: float) -> set[str]:
        return set(run_ids)

    async def release_lease(self, run_id: str, replica: str) -> None:
        return None

    async def request_cancel(self, run_id: str) -> None:
        return None

    async def cancel_requested(self, run_ids: Iterable[str]) -> set[str]:
        return set()

    async def clear_cancel(self, run_id: str) -> None:
        return None

    # -- events -------------------------------------------------------------------------------
    def append_events(self, rows: list[EventRow], on_commit: Callable[[], None]) -> None:
        """Queue event rows (not durable on their own); `on_commit` runs once they are stored."""
        self.enqueue(_Write(events=rows, on_commit=on_commit))

    async def events_after(self, run_id: str, after: int, limit: int = 500) -> list[StoredEvent]:
        sql = "SELECT seq, kind, data FROM events WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?"
        rows = await self._read(lambda c: c.execute(sql, (run_id, after, limit)).fetchall())
        return [StoredEvent(seq, kind, data) for seq, kind, data in rows]

    async def max_seq(self, run_id: str) -> int:
        sql = "SELECT COALESCE(MAX(seq), 0) FROM events WHERE run_id = ?"
        row = await self._read(lambda c: c.execute(sql, (run_id,)).fetchone())
        return int(row[0]) if row else 0

    # -- artifacts ----------------------------------------------------------------------------
    async def grant(self, owner: str, shas: Iterable[str]) -> None:
        sql = "INSERT OR IGNORE INTO artifacts (sha256, owner) VALUES (?, ?)"
        statements: list[Statement] = [(sql, (sha, owner)) for sha in sorted(set(shas))]
        if statements:
            await self.submit(_Write(statements=statements))

    async def owns(self, owner: str, sha256: str) -> bool:
        sql = "SELECT 1 FROM artifacts WHERE sha256 = ? AND owner = ?"
        row = await self._read(lambda c: c.execute(sql, (sha256, owner)).fetchone())
        return row is not None


def _event_statement(run_id: str, seq: int, kind: str, data: dict[str, Any]) -> Statement:
    return (
        "INSERT OR IGNORE INTO events (run_id, seq, kind, data, ts) VALUES (?,?,?,?,?)",
        (run_id, seq, kind, json.dumps(data, default=str), time.time()),
    )
