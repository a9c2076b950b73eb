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

import logging
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout, TooManyRequests

from service import errors, queries
from service.settings import Settings

logger = logging.getLogger(__name__)

# A failed connection attempt is retried with backoff (about 1 s, 2 s, then the rest);
# past this the pool gives up and new connections are made on demand instead, so
# recovery after an outage never waits out a long backoff.
RECONNECT_TIMEOUT_S = 4.0
CONNECT_TIMEOUT_S = 3
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


async def _run(pool: AsyncConnectionPool, query_name: str, params: Params | None,
               *, limit: int | None) -> list[dict[str, Any]]:
    """Run one named statement; retry once on a broken connection.

    Every statement the service runs is idempotent (inserts carry a client-made key, state
    changes are guarded in their WHERE), so a retry after a lost connection is safe. Before
    the retry the pool checks its idle connections: after PgBouncer or PostgreSQL restarts
    they are all dead, and a plain retry would only pick the next dead one.
    """
    sql = queries.get(query_name)
    for attempt in (1, 2):
        try:
            async with pool.connection() as conn:
                cur = conn.cursor(row_factory=dict_row)
                await cur.execute(sql, params)
                if cur.description is None:
                    return []
                return await (cur.fetchmany(limit) if limit else cur.fetchall())
        except (PoolTimeout, TooManyRequests) as exc:
            raise errors.DatabaseUnavailable(f"no database connection: {exc}") from exc
        except psycopg.OperationalError as exc:
            if attempt == 2:
                raise errors.DatabaseUnavailable(f"database error: {exc}") from exc
            logger.warning("%s failed (%s), checking the pool and retrying once",
                           query_name, type(exc).__name__)
            try:
                await pool.check()
            except psycopg.Error:
                logger.debug("pool check failed", exc_info=True)
    raise AssertionError("unreachable")
