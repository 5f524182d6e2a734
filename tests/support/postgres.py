"""A throwaway PostgreSQL database per test session, on the server at 127.0.0.1:5432.

`GROUNDWORK_TEST_POSTGRES` (default postgresql://postgres@127.0.0.1:5432/postgres) names an
administrative connection; `throwaway_database()` creates `gw_test_<random>`, yields its URL and
drops it (with FORCE, so a test's leftover connection cannot keep it). `unavailable()` is the
skip reason when no server answers, or None.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

ADMIN_URL = os.environ.get(
    "GROUNDWORK_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def _with_db(url: str, dbname: str) -> str:
    """The same server URL with another database name."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


def unavailable() -> str | None:
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed"
    try:
        with psycopg.connect(ADMIN_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"no PostgreSQL at {ADMIN_URL} ({first}); set GROUNDWORK_TEST_POSTGRES"
    return None


def admin_execute(sql: str, *, dbname: str | None = None) -> None:
    import psycopg

    url = _with_db(ADMIN_URL, dbname) if dbname else ADMIN_URL
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)


@contextmanager
def throwaway_database() -> Iterator[str]:
    name = f"gw_test_{uuid.uuid4().hex[:12]}"
    admin_execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_db(ADMIN_URL, name)
    finally:
        admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def advisory_locks_held(url: str) -> int:
    """Advisory locks held in `url`'s database right now (by anyone)."""
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
            "WHERE l.locktype = 'advisory' AND d.datname = current_database()"
        ).fetchone()
    return int(row[0]) if row else 0
