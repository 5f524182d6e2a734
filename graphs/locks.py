"""One writer per thread: a thread lock that dies with its holder and cannot wedge.

Two processes (or two API replicas) running the same thread would fork its history. Two
backends, picked by `thread_lock(settings, thread_id)`:

- PostgreSQL (`GROUNDWORK_STORE__URL=postgresql://...`): a session advisory lock on a connection
  held for the run. It works across hosts, and the server drops it when the holder's connection
  goes (a killed replica), so a crash never blocks a thread.
- SQLite (one host): a row naming the holder (host, pid) in a small lock file of its own beside
  the checkpoint database, so lock writes never queue behind the checkpoint writer. Every
  statement is one short transaction with a bounded busy wait (`store.lock_wait_s`, then a
  clear error); no database lock is held between statements; a row whose process is gone is
  stale and taken over.

Both are synchronous underneath (a blocking call runs in a worker thread); `acquire_async` and
`release_async` are the cancel-safe forms for the event loop: a run cancelled while its lock
is being taken still releases it, so 100 start/cancel cycles leave no lock behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import GroundworkError, InputError

if TYPE_CHECKING:
    from agent.settings import Settings

log = logging.getLogger(__name__)


class ThreadBusy(InputError):
    """Another process is running this thread."""


class LockStoreError(GroundworkError):
    """The lock store did not answer in time or cannot be reached."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_HELD: set[str] = set()
"""Threads this process runs now (the service runs many at once)."""
_HELD_GUARD = threading.Lock()


class _Lock:
    """What both backends share: the in-process guard and the cancel-safe async forms."""

    def __init__(self, thread_id: str) -> None:
        self.thread_id = thread_id
        self.held = False

    def _claim_here(self) -> None:
        with _HELD_GUARD:
            if self.thread_id in _HELD:
                raise ThreadBusy(
                    f"thread {self.thread_id} is already running in this process; wait for it "
                    "to finish, or use another thread"
                )
            _HELD.add(self.thread_id)

    def _unclaim_here(self) -> None:
        with _HELD_GUARD:
            _HELD.discard(self.thread_id)

    def acquire(self) -> None:
        self._claim_here()
        try:
            self._acquire()
        except BaseException:
            self._unclaim_here()
            raise
        self.held = True

    def release(self) -> None:
        """Never leaves this process believing it still runs the thread, even if the store
        fails (a stale row is taken over by pid; a Postgres lock goes with its connection)."""
        if not self.held:
            return
        try:
            self._release()
        finally:
            self.held = False
            self._unclaim_here()

    def _acquire(self) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    async def acquire_async(self) -> None:
        """`acquire` off the event loop. Cancelled while the worker thread is taking the lock,
        it releases the lock as soon as that thread is done, so nothing is left held."""
        task = asyncio.ensure_future(asyncio.to_thread(self.acquire))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(self._release_if_taken)
            raise

    def _release_if_taken(self, task: asyncio.Future[None]) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        threading.Thread(target=self._release_quietly, daemon=True).start()

    def _release_quietly(self) -> None:
        try:
            self.release()
        except GroundworkError as exc:
            log.warning("releasing the lock of thread %s failed: %s", self.thread_id, exc)

    async def release_async(self) -> None:
        """`release` off the event loop; a cancel during it does not stop the release."""
        if not self.held:
            return
        task = asyncio.ensure_future(asyncio.to_thread(self._release_quietly))
        await asyncio.shield(task)


class ThreadLock(_Lock):
    """The SQLite lock: a row in `<checkpoint db>.locks`."""

    def __init__(self, db: Path, thread_id: str, *, wait_s: float = 5.0) -> None:
        super().__init__(thread_id)
        self.db = db.with_name(db.name + ".locks")
        self.wait_s = wait_s

    def _conn(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db, timeout=self.wait_s, isolation_level=None)
        # A lock row need not survive a power cut (a stale lock is taken over anyway): no fsync.
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS groundwork_thread_locks "
            "(thread_id TEXT PRIMARY KEY, host TEXT, pid INTEGER, since REAL)"
        )
        return conn

    def _busy(self, exc: sqlite3.OperationalError) -> LockStoreError:
        return LockStoreError(
            f"the thread-lock file {self.db} stayed busy for {self.wait_s:.0f} s ({exc}); retry, "
            "or raise GROUNDWORK_STORE__LOCK_WAIT_S if many runs start at once"
        )

    def _acquire(self) -> None:
        me = (socket.gethostname(), os.getpid())
        try:
            self.db.parent.mkdir(parents=True, exist_ok=True)
            conn = self._conn()
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                raise self._busy(exc) from exc
            raise LockStoreError(
                f"cannot open the thread-lock file {self.db}: {exc}; set GROUNDWORK_CHECKPOINT_DB "
                "to a writable place"
            ) from exc
        except OSError as exc:
            raise LockStoreError(
                f"cannot open the thread-lock file {self.db}: {exc}; set GROUNDWORK_CHECKPOINT_DB "
                "to a writable place"
            ) from exc
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(
                    "SELECT host, pid, since FROM groundwork_thread_locks WHERE thread_id = ?",
                    (self.thread_id,),
                ).fetchone()
                if row is not None and (row[0], row[1]) != me:
                    host, pid, since = row
                    if host != me[0] or _alive(int(pid)):
                        started = time.strftime("%H:%M:%S", time.localtime(since))
                        raise ThreadBusy(
                            f"thread {self.thread_id} is already running (pid {pid} on {host}, "
                            f"since {started}); wait for it to finish, or use another --thread"
                        )
                conn.execute(
                    "INSERT OR REPLACE INTO groundwork_thread_locks VALUES (?, ?, ?, ?)",
                    (self.thread_id, me[0], me[1], time.time()),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            raise self._busy(exc) from exc
        finally:
            conn.close()

    def _release(self) -> None:
        try:
            conn = self._conn()
            try:
                conn.execute(
                    "DELETE FROM groundwork_thread_locks WHERE thread_id = ? AND host = ? "
                    "AND pid = ?",
                    (self.thread_id, socket.gethostname(), os.getpid()),
                )
            finally:
                conn.close()
        except sqlite3.OperationalError as exc:
            raise self._busy(exc) from exc

    def holders(self) -> list[tuple[str, str, int]]:
        """(thread_id, host, pid) of every lock row: for tests and `readyz`-style checks."""
        if not self.db.exists():
            return []
        conn = self._conn()
        try:
            rows = conn.execute("SELECT thread_id, host, pid FROM groundwork_thread_locks")
            return [(str(t), str(h), int(p)) for t, h, p in rows]
        finally:
            conn.close()


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


def advisory_key(thread_id: str) -> int:
    """A stable signed 64-bit key per thread id (PostgreSQL advisory locks take a bigint)."""
    digest = hashlib.blake2b(f"groundwork-thread:{thread_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class PostgresThreadLock(_Lock):
    """A session advisory lock on a connection of its own, held for the run."""

    def __init__(self, url: str, thread_id: str, *, connect_timeout_s: float = 10.0) -> None:
        super().__init__(thread_id)
        self.url = url
        self.connect_timeout_s = connect_timeout_s
        self._conn: Any = None

    def _acquire(self) -> None:
        import psycopg

        from graphs.store import StoreError, describe_url

        try:
            conn = psycopg.connect(
                self.url, autocommit=True, connect_timeout=max(1, int(self.connect_timeout_s))
            )
        except psycopg.OperationalError as exc:
            raise StoreError(
                f"cannot reach PostgreSQL at {describe_url(self.url)} for the thread lock: "
                f"{str(exc).strip().splitlines()[0]}; check GROUNDWORK_STORE__URL"
            ) from exc
        try:
            row = conn.execute(
                "SELECT pg_try_advisory_lock(%s)", (advisory_key(self.thread_id),)
            ).fetchone()
        except BaseException:
            conn.close()
            raise
        if not row or not row[0]:
            conn.close()
            raise ThreadBusy(
                f"thread {self.thread_id} is already running on another replica or process; "
                "wait for it to finish, or use another thread"
            )
        self._conn = conn

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        import psycopg

        try:
            conn.execute("SELECT pg_advisory_unlock(%s)", (advisory_key(self.thread_id),))
        except psycopg.Error as exc:
            # Closing the connection below drops a session lock anyway.
            log.info(
                "advisory unlock of %s failed (%s); closing its connection", self.thread_id, exc
            )
        finally:
            conn.close()


def thread_lock(settings: Settings, thread_id: str) -> _Lock:
    """The lock of one thread for the configured store (PostgreSQL or the SQLite file)."""
    store = settings.store
    if store.is_postgres():
        assert store.url is not None
        return PostgresThreadLock(store.url, thread_id, connect_timeout_s=store.connect_timeout_s)
    return ThreadLock(settings.checkpoint_db.expanduser(), thread_id, wait_s=store.lock_wait_s)
