"""SHOW results as dicts: the one reader for PgBouncer's admin console (and PostgreSQL).

The console's SHOW columns change between PgBouncer versions (1.18 has no
load_balance_hosts, 1.23 changed avg_wait_time, ...), so rows are read by column name;
its counters arrive as numeric and become int or float. The console speaks only the
simple query protocol: connect with a client-side cursor (psycopg.ClientCursor).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

import psycopg

Row = dict[str, Any]


def rows(description: Sequence[Any] | None, values: Iterable[Sequence[Any]]) -> list[Row]:
    """A cursor's rows as dicts keyed by column name; numbers as int or float."""
    if description is None:
        return []
    names = [column.name for column in description]
    return [{name: _number(value) for name, value in zip(names, row, strict=True)}
            for row in values]


def show(conn: psycopg.Connection[Any], what: str) -> list[Row]:
    """`SHOW <what>` on a connection, as rows()."""
    cur = conn.execute(f"SHOW {what}")
    return rows(cur.description, cur.fetchall() if cur.description else [])


async def show_async(conn: psycopg.AsyncConnection[Any], what: str) -> list[Row]:
    """`SHOW <what>` on an async connection, as rows()."""
    cur = await conn.execute(f"SHOW {what}")
    return rows(cur.description, await cur.fetchall() if cur.description else [])


def _number(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value
