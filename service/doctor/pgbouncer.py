"""PgBouncer's admin console: connect, read the SHOW commands, send RELOAD/PAUSE/RESUME.

The console (virtual database "pgbouncer") speaks only the simple query protocol, hence
the client-side cursor, and its SHOW columns change between versions (1.18 has no
load_balance_hosts, 1.23 changed avg_wait_time, ...), so rows are read by column name.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

# `SHOW <what>` as dicts keyed by column name; numbers as int or float.
from service.show import show_async as show

Row = dict[str, Any]

# Databases of PgBouncer itself, not pools of the app.
CONSOLE_DB = "pgbouncer"
# How the doctor's connections show in SHOW CLIENTS and pg_stat_activity.
APPLICATION_NAME = "video-tasks-doctor"
# The version where SHOW STATS avg_wait_time became meaningful (PgBouncer PR #727).
AVG_WAIT_FIXED_IN = (1, 23)


async def connect(url: str, *, timeout_s: float) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(
        url, autocommit=True, cursor_factory=psycopg.AsyncClientCursor,
        connect_timeout=max(1, round(timeout_s)), application_name=APPLICATION_NAME)


async def command(conn: psycopg.AsyncConnection[Any], what: str) -> None:
    """RELOAD, PAUSE [db], RESUME [db]: console commands without a result."""
    await conn.execute(what)


@dataclass
class Console:
    """What the doctor reads from the console at one moment."""

    version: str
    pools: list[Row]
    stats: list[Row]
    config: dict[str, str] = field(default_factory=dict)
    databases: list[Row] = field(default_factory=list)
    clients: list[Row] = field(default_factory=list)
    taken_at: float = 0.0  # time.monotonic()

    def app_pools(self) -> list[Row]:
        return [p for p in self.pools if p["database"] != CONSOLE_DB]

    def app_stats(self) -> list[Row]:
        return [s for s in self.stats if s["database"] != CONSOLE_DB]

    def database(self, name: str) -> Row | None:
        return next((d for d in self.databases if d["name"] == name), None)

    def setting(self, key: str, default: int = 0) -> int:
        """A numeric SHOW CONFIG value (seconds for the timeouts)."""
        try:
            return int(float(self.config.get(key, default)))
        except ValueError:
            return default

    def version_tuple(self) -> tuple[int, ...]:
        match = re.search(r"(\d+)\.(\d+)", self.version)
        return (int(match[1]), int(match[2])) if match else (0, 0)

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "pools": self.pools, "stats": self.stats,
                "config": self.config, "databases": self.databases,
                "clients_by_application": clients_by_application(self.clients)}


async def read(conn: psycopg.AsyncConnection[Any], *, full: bool = True) -> Console:
    """POOLS and STATS; with `full`, also VERSION, CONFIG, DATABASES and CLIENTS."""
    pools = await show(conn, "POOLS")
    stats = await show(conn, "STATS")
    taken_at = time.monotonic()
    if not full:
        return Console(version="", pools=pools, stats=stats, taken_at=taken_at)
    version_rows = await show(conn, "VERSION")
    version = str(next(iter(version_rows[0].values()))) if version_rows else "unknown"
    config = {str(r["key"]): "" if r["value"] is None else str(r["value"])
              for r in await show(conn, "CONFIG")}
    return Console(version=version, pools=pools, stats=stats, config=config,
                   databases=await show(conn, "DATABASES"),
                   clients=await show(conn, "CLIENTS"), taken_at=taken_at)


def clients_by_application(clients: list[Row]) -> dict[str, dict[str, int]]:
    """Client connections of the app databases: {application_name: {state: count}}."""
    counts: dict[str, dict[str, int]] = {}
    for client in clients:
        if client.get("database") == CONSOLE_DB:
            continue
        name = client.get("application_name") or "(none)"
        state = str(client.get("state", "?"))
        per_state = counts.setdefault(name, {})
        per_state[state] = per_state.get(state, 0) + 1
    return counts


def maxwait_s(pool: Row) -> float:
    return float(pool.get("maxwait", 0)) + float(pool.get("maxwait_us", 0)) / 1e6


def server_connections(pool: Row) -> int:
    return sum(int(pool.get(k, 0)) for k in
               ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login"))


@dataclass(frozen=True)
class Traffic:
    """SHOW STATS between two samples, for one database."""

    database: str
    interval_s: float
    xact_per_s: float
    query_per_s: float
    avg_xact_ms: float | None
    avg_wait_ms: float | None  # per transaction; what 1.18's avg_wait_time is not


def traffic(before: Console, after: Console) -> list[Traffic]:
    """Rates from the totals' deltas: right on every version, unlike 1.18's averages."""
    interval = after.taken_at - before.taken_at
    if interval <= 0:
        return []
    old = {s["database"]: s for s in before.app_stats()}
    result = []
    for new in after.app_stats():
        prev = old.get(new["database"])
        if prev is None:
            continue
        xacts = new["total_xact_count"] - prev["total_xact_count"]
        queries = new["total_query_count"] - prev["total_query_count"]
        if xacts < 0:  # PgBouncer restarted between the samples
            continue
        xact_us = new["total_xact_time"] - prev["total_xact_time"]
        wait_us = new["total_wait_time"] - prev["total_wait_time"]
        result.append(Traffic(
            database=new["database"], interval_s=interval, xact_per_s=xacts / interval,
            query_per_s=queries / interval,
            avg_xact_ms=xact_us / xacts / 1000 if xacts else None,
            avg_wait_ms=wait_us / xacts / 1000 if xacts else None))
    return result
