"""The per-process psycopg pool, and running one short statement on it.

PgBouncer in transaction mode does the real pooling: the app pool is a small queue of
client connections to PgBouncer. The rules that mode imposes, written down once:

- `prepare_threshold=None`: PgBouncer 1.18 cannot keep prepared statements across
  transactions, and a client's statement name could resolve to another client's.
- Autocommit, one statement per `pool.connection()` block (or one short explicit
  transaction): the server connection goes back to PgBouncer when the statement ends.
- No session state: no `SET`, `LISTEN`, session advisory locks or `WITH HOLD` cursors.
  Timeouts live on the role (`ALTER ROLE ... SET`, see service.migrate) or `SET LOCAL`.
- No connection is held across slow work (rendering, merging, uploading).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import weakref
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg.pq import ExecStatus
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout, TooManyRequests

from service import errors, queries
from service.settings import Settings

logger = logging.getLogger(__name__)
TUPLES_OK = ExecStatus.TUPLES_OK

# A failed connection attempt is retried with backoff (about 1 s, 2 s, then the rest);
# past this the pool gives up and new connections are made on demand instead, so
# recovery after an outage never waits out a long backoff.
RECONNECT_TIMEOUT_S = 4.0
CONNECT_TIMEOUT_S = 3
# A statement (with its one retry) ends within the pool timeout plus this: then the API
# answers 503 and the worker tries again later.
ANSWER_MARGIN_S = 1.0
# Requests queued for a connection beyond this are refused at once (503), not queued.
MAX_WAITING_PER_CONNECTION = 64

Params = Mapping[str, Any]


def create_pool(settings: Settings, *, name: str, conninfo: str | None = None,
                min_size: int | None = None, max_size: int | None = None) -> AsyncConnectionPool:
    """A closed pool: open it with `await pool.open(wait=True)` inside the event loop."""
    max_size = settings.app_pool_max if max_size is None else max_size
    return AsyncConnectionPool(
        conninfo or settings.database_url,
        min_size=settings.app_pool_min if min_size is None else min_size,
        max_size=max_size,
        name=name,
        open=False,
        timeout=settings.pool_timeout_s,
        max_waiting=MAX_WAITING_PER_CONNECTION * max_size,
        reconnect_timeout=RECONNECT_TIMEOUT_S,
        # Idle connections above min_size close soon: PgBouncer keeps the server side warm.
        max_idle=60,
        # Replaced after this long (psycopg_pool adds up to 10% jitter): connections that
        # moved to another PgBouncer (a pooler pod restarted, a multi-host URL failed
        # over) spread back over all of them, rather than staying for the default hour.
        max_lifetime=settings.app_pool_max_lifetime_s,
        kwargs={
            "prepare_threshold": None,
            "autocommit": True,
            "application_name": name,
            "connect_timeout": CONNECT_TIMEOUT_S,
        },
    )


async def fetch_one(pool: AsyncConnectionPool, query_name: str,
                    params: Params | None = None) -> dict[str, Any] | None:
    rows = await _run(pool, query_name, params, limit=1)
    return rows[0] if rows else None


async def fetch_all(pool: AsyncConnectionPool, query_name: str,
                    params: Params | None = None) -> list[dict[str, Any]]:
    return await _run(pool, query_name, params, limit=None)


async def changed(pool: AsyncConnectionPool, query_name: str, params: Params) -> bool:
    """Run a guarded state change (an UPDATE/INSERT ... RETURNING); True if it matched.

    False means the guard refused: e.g. the caller's claim no longer owns the task.
    """
    return bool(await _run(pool, query_name, params, limit=1))


async def ping(pool: AsyncConnectionPool, *, timeout_s: float) -> None:
    """One statement through PgBouncer to PostgreSQL, within timeout_s (readiness checks).

    Raises errors.DatabaseUnavailable.
    """
    await _run(pool, "ping", None, limit=1, budget_s=timeout_s)


async def _run(pool: AsyncConnectionPool, query_name: str, params: Params | None,
               *, limit: int | None, budget_s: float | None = None) -> list[dict[str, Any]]:
    """Run one named statement; retry once on a broken connection; never take longer
    than budget_s, by default the pool's timeout plus ANSWER_MARGIN_S.

    Every statement the service runs is idempotent (inserts carry a client-made key, state
    changes are guarded in their WHERE), so a retry after a lost connection is safe. Before
    the retry the pool checks its idle connections: after PgBouncer or PostgreSQL restarts
    they are all dead, and a plain retry would only pick the next dead one.

    The deadline matters while PostgreSQL is down behind a running PgBouncer: PgBouncer
    1.18 queues a statement until query_wait_timeout (10 s) instead of failing it, and a
    cancel request cannot reach it. At the deadline the connection is shut down, which
    ends the statement at once; the pool replaces the connection.
    """
    sql = queries.get(query_name)
    loop = asyncio.get_running_loop()
    if budget_s is None:
        budget_s = pool.timeout + ANSWER_MARGIN_S
    deadline = loop.time() + budget_s
    for attempt in (1, 2):
        expired: list[bool] = []
        try:
            async with pool.connection(timeout=min(pool.timeout,
                                                   _left(loop, deadline))) as conn:
                timer = loop.call_at(deadline, _shut_down, conn, expired)
                try:
                    cur = conn.cursor(row_factory=dict_row)
                    await cur.execute(sql, params)
                    # Not `cur.description is None`: that builds a Column object per
                    # column on every call (about 10 us for the progress row).
                    if cur.pgresult is None or cur.pgresult.status != TUPLES_OK:
                        return []
                    return await (cur.fetchmany(limit) if limit else cur.fetchall())
                finally:
                    # Before the connection goes back to the pool.
                    timer.cancel()
        except (PoolTimeout, TooManyRequests) as exc:
            raise errors.DatabaseUnavailable(f"no database connection: {exc}") from exc
        except psycopg.OperationalError as exc:
            if expired:
                raise errors.DatabaseUnavailable(
                    f"no answer from the database within {budget_s:.1f} s") from exc
            if attempt == 2:
                raise errors.DatabaseUnavailable(f"database error: {exc}") from exc
            logger.warning("%s failed (%s), checking the pool and retrying once",
                           query_name, type(exc).__name__)
            await _check_pool(pool, _left(loop, deadline))
    raise AssertionError("unreachable")


def _left(loop: asyncio.AbstractEventLoop, deadline: float) -> float:
    return max(deadline - loop.time(), 0.0)


def _shut_down(conn: psycopg.AsyncConnection[Any], expired: list[bool]) -> None:
    """End the statement in flight on conn now: its socket reads EOF, psycopg raises
    OperationalError and marks the connection broken. Unlike a cancel request, this needs
    no answer from PgBouncer or PostgreSQL."""
    expired.append(True)
    try:
        fd = conn.pgconn.socket
    except psycopg.Error:
        return  # already closed
    with contextlib.suppress(OSError), socket.fromfd(fd, socket.AF_INET,
                                                     socket.SOCK_STREAM) as sock:
        sock.shutdown(socket.SHUT_RDWR)


# The check running for each pool, if any.
_checks: weakref.WeakKeyDictionary[AsyncConnectionPool, asyncio.Task[None]] = \
    weakref.WeakKeyDictionary()


async def _check_pool(pool: AsyncConnectionPool, timeout_s: float) -> None:
    """Let the pool test its idle connections, replacing broken ones; wait at most
    timeout_s. One check per pool at a time; a check is never cancelled half-way (the
    connections it holds would be lost to the pool), it goes on in the background."""
    check = _checks.get(pool)
    if check is None or check.done():
        check = asyncio.create_task(pool.check(), name=f"check-{pool.name}")
        _checks[pool] = check
        check.add_done_callback(_check_done)
    await asyncio.wait({check}, timeout=timeout_s)


def _check_done(check: asyncio.Task[None]) -> None:
    if not check.cancelled() and check.exception() is not None:
        logger.debug("pool check failed: %r", check.exception())
