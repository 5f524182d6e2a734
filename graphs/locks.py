"""One writer per thread: a lock row in the checkpoint database.

Two processes running the same thread would fork its history. The lock names the holder (host,
pid); a lock whose process is gone (killed) is stale and taken over, so a crash never blocks a
thread for good.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from pathlib import Path

from core.errors import InputError


class ThreadBusy(InputError):
    """Another process is running this thread."""


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


class ThreadLock:
    def __init__(self, db: Path, thread_id: str) -> None:
        self.db = db
        self.thread_id = thread_id
        self.held = False

    def _conn(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db, timeout=10, isolation_level=None)
        # A lock row need not survive a power cut (a stale lock is taken over anyway): no fsync.
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS groundwork_thread_locks "
            "(thread_id TEXT PRIMARY KEY, host TEXT, pid INTEGER, since REAL)"
        )
        return conn

    def acquire(self) -> None:
        if self.thread_id in _HELD:
            raise ThreadBusy(
                f"thread {self.thread_id} is already running in this process; wait for it to "
                "finish, or use another thread"
            )
        me = (socket.gethostname(), os.getpid())
        with self._conn() as conn:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute(
                "SELECT host, pid, since FROM groundwork_thread_locks WHERE thread_id = ?",
                (self.thread_id,),
            ).fetchone()
            if row is not None and (row[0], row[1]) != me:
                host, pid, since = row
                if host != me[0] or _alive(int(pid)):
                    conn.execute("ROLLBACK")
                    started = time.strftime("%H:%M:%S", time.localtime(since))
                    raise ThreadBusy(
                        f"thread {self.thread_id} is already running (pid {pid} on {host}, since "
                        f"{started}); wait for it to finish, or use another --thread"
                    )
            conn.execute(
                "INSERT OR REPLACE INTO groundwork_thread_locks VALUES (?, ?, ?, ?)",
                (self.thread_id, me[0], me[1], time.time()),
            )
            conn.execute("COMMIT")
        self.held = True
        _HELD.add(self.thread_id)

    def release(self) -> None:
        if not self.held:
            return
        with self._conn() as conn:
            conn.execute(
                "DELETE FROM groundwork_thread_locks WHERE thread_id = ? AND host = ? AND pid = ?",
                (self.thread_id, socket.gethostname(), os.getpid()),
            )
        self.held = False
        _HELD.discard(self.thread_id)
