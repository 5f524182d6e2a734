"""PostgreSQL checkpoints for deployments with several API replicas.

`GROUNDWORK_STORE__URL=postgresql://user@host:5432/db` moves LangGraph's checkpoints into
PostgreSQL through `langgraph-checkpoint-postgres` on a psycopg 3 connection pool (sized by
`store.pool_min_size` / `store.pool_max_size`); thread exclusivity then uses PostgreSQL advisory
locks (graphs/locks.py). The schema is set up on start, under an advisory lock so replicas
starting together do not race on the migrations. An unreachable server, a wrong password or
a role without rights is one line that says which and how to fix it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from core.errors import GroundworkError

if TYPE_CHECKING:
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from psycopg_pool import AsyncConnectionPool

    from agent.settings import StoreSettings

SETUP_LOCK_KEY = 0x67726F756E64  # "ground": one advisory key for schema set-up


class StoreError(GroundworkError):
    """The checkpoint database cannot be used (unreachable, refused, missing rights)."""


def describe_url(url: str) -> str:
    """host:port/db as user, never the password (messages and logs show this)."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        info = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "the configured database (GROUNDWORK_STORE__URL does not parse)"
    host = info.get("host") or "localhost"
    port = info.get("port") or 5432
    return f"{host}:{port}/{info.get('dbname') or '?'} as {info.get('user') or '?'}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


async def check_connection(url: str, timeout_s: float) -> None:
    """One direct connection first: the pool would only say "timed out", this says why."""
    import psycopg

    try:
        conn = await psycopg.AsyncConnection.connect(
            url, autocommit=True, connect_timeout=max(1, int(timeout_s))
        )
    except psycopg.OperationalError as exc:
        raise StoreError(
            f"cannot reach PostgreSQL at {describe_url(url)}: {_first_line(exc)}; start it or "
            "fix GROUNDWORK_STORE__URL (unset it for the SQLite file)"
        ) from exc
    except psycopg.ProgrammingError as exc:
        raise StoreError(
            f"GROUNDWORK_STORE__URL is not a valid PostgreSQL URL ({_first_line(exc)}); use "
            "postgresql://user:password@host:5432/dbname"
        ) from exc
    await conn.close()


SETUP_LOCK_WAIT_S = 120.0
"""How long a replica waits for another's schema set-up before saying so."""


async def _take_setup_lock(conn: Any, timeout_s: float) -> None:
    """Polls `pg_try_advisory_lock` instead of blocking in `pg_advisory_lock`: a waiting
    statement holds a snapshot, and the migrations' `CREATE INDEX CONCURRENTLY` in the replica
    that holds the lock waits for every such snapshot to end, so a blocking waiter deadlocks
    the two replicas (seen when two started at once). Between polls no statement is open."""
    import asyncio
    import time

    deadline = time.monotonic() + max(SETUP_LOCK_WAIT_S, timeout_s)
    while True:
        cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (SETUP_LOCK_KEY,))
        row = await cur.fetchone()
        if row is not None and bool(row[0]):
            return
        if time.monotonic() > deadline:
            raise StoreError(
                "another process has held the checkpoint schema set-up lock for over "
                f"{SETUP_LOCK_WAIT_S:.0f} s; check for a stuck replica "
                "(pg_stat_activity) or restart it"
            )
        await asyncio.sleep(0.2)


async def _setup_schema(url: str, saver: AsyncPostgresSaver, timeout_s: float) -> None:
    import psycopg

    conn = await psycopg.AsyncConnection.connect(
        url, autocommit=True, connect_timeout=max(1, int(timeout_s))
    )
    try:
        await _take_setup_lock(conn, timeout_s)
        try:
            await saver.setup()
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (SETUP_LOCK_KEY,))
    except psycopg.errors.InsufficientPrivilege as exc:
        raise StoreError(
            f"the PostgreSQL role at {describe_url(url)} may not create the checkpoint tables "
            f"({_first_line(exc)}); GRANT CREATE ON SCHEMA public (or run once as the owner)"
        ) from exc
    finally:
        await conn.close()


@asynccontextmanager
async def open_pool(store: StoreSettings) -> AsyncIterator[AsyncConnectionPool[Any]]:
    """A psycopg 3 pool on `store.url` (sized by the settings; autocommit, dict rows, no
    server-side prepares), checked first so a bad URL is one clear line. The checkpointer uses
    one; the service can open its own for run records."""
    from psycopg.rows import dict_row
    from psycopg_pool import AsyncConnectionPool, PoolTimeout

    if store.url is None:
        raise StoreError("GROUNDWORK_STORE__URL is not set: there is no PostgreSQL to open")
    url = store.url
    await check_connection(url, store.connect_timeout_s)
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        conninfo=url,
        min_size=min(store.pool_min_size, store.pool_max_size),
        max_size=store.pool_max_size,
        timeout=store.connect_timeout_s,
        # What AsyncPostgresSaver needs: autocommit, dict rows, no server-side prepares
        # (they break behind PgBouncer in transaction mode).
        kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
        open=False,
    )
    try:
        await pool.open(wait=store.pool_min_size > 0, timeout=store.connect_timeout_s)
    except PoolTimeout as exc:
        raise StoreError(
            f"PostgreSQL at {describe_url(url)} gave no pool connection within "
            f"{store.connect_timeout_s:.0f} s; check max_connections or lower "
            "GROUNDWORK_STORE__POOL_MIN_SIZE"
        ) from exc
    try:
        yield pool
    finally:
        await pool.close()


@asynccontextmanager
async def open_postgres_checkpointer(store: StoreSettings) -> AsyncIterator[AsyncPostgresSaver]:
    """A checkpointer on a connection pool, its schema set up; the pool closes with the block."""
    import psycopg
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    async with open_pool(store) as pool:
        url = str(store.url)
        try:
            saver = AsyncPostgresSaver(pool)
            await _setup_schema(url, saver, store.connect_timeout_s)
            yield saver
        except psycopg.errors.InsufficientPrivilege as exc:
            raise StoreError(
                f"the PostgreSQL role at {describe_url(url)} lacks rights on the checkpoint "
                f"tables ({_first_line(exc)}); GRANT SELECT, INSERT, UPDATE, DELETE on them"
            ) from exc
        except psycopg.OperationalError as exc:
            raise StoreError(
                f"PostgreSQL at {describe_url(url)} failed: {_first_line(exc)}; progress up to "
                "the last stage is kept, resume the thread when the database is back"
            ) from exc
