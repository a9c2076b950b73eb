"""Runbook steps on PgBouncer's admin console: RELOAD, PAUSE, RESUME.

    video-tasks pgbouncer reload                # re-read pgbouncer.ini, show changes
    video-tasks pgbouncer pause [DB] [--timeout S]
    video-tasks pgbouncer resume [DB]

(the command line is ops/cli.py; ops/pgbouncer-reload, -pause, -resume call it). PAUSE
waits until every server connection of DB (all databases without DB) is released, then
PgBouncer closes them: clients stay connected and queue until RESUME. If that takes
longer than the timeout, the PAUSE is undone (RESUME) so the service does not stay
half-paused; the doctor's pg_long_statements and pg_idle_in_transaction name what holds
the connections. Each returns the exit code: 0 done, 1 not done.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import psycopg

from service import errors
from service.doctor import pgbouncer
from service.settings import Settings

DEFAULT_PAUSE_TIMEOUT_S = 30.0
RESTART_NOTE = ("settings PgBouncer reads only at start (SHOW CONFIG changeable = no: "
                "listen_addr, listen_port, unix_socket_dir, pkt_buf, ...) need a restart")


async def reload(settings: Settings) -> int:
    conn = await pgbouncer.connect(settings.pgbouncer_admin_url,
                                   timeout_s=settings.doctor_timeout_s)
    try:
        before = await _config(conn)
        await pgbouncer.command(conn, "RELOAD")
        after = await _config(conn)
    finally:
        await conn.close()
    changed = [key for key in sorted(after) if before.get(key, (None,))[0] != after[key][0]]
    if not changed:
        print("RELOAD done: no setting changed (was pgbouncer.ini edited and saved?)")
    for key in changed:
        print(f"{key}: {before.get(key, ('(unset)',))[0]} -> {after[key][0]}")
    print(f"note: {RESTART_NOTE}")
    return 0


async def _config(conn: psycopg.AsyncConnection[Any]) -> dict[str, tuple[str, str]]:
    return {str(r["key"]): (str(r["value"]), str(r.get("changeable", "")))
            for r in await pgbouncer.show(conn, "CONFIG")}


async def pause(settings: Settings, database: str | None, timeout_s: float) -> int:
    target = database or "all databases"
    conn = await pgbouncer.connect(settings.pgbouncer_admin_url,
                                   timeout_s=settings.doctor_timeout_s)
    try:
        print(f"PAUSE {target}: waiting up to {timeout_s:g} s for server connections "
              "to be released...", flush=True)
        pausing = asyncio.create_task(pgbouncer.command(conn, _with_db("PAUSE", database)))
        done, _ = await asyncio.wait({pausing}, timeout=timeout_s)
        if not done:
            busy = await _busy_servers(settings, database)
            print(f"PAUSE {target} did not finish in {timeout_s:g} s: {busy} server "
                  "connections still in a transaction. Undoing it with RESUME; run "
                  "`video-tasks doctor` (pg_long_statements, pg_idle_in_transaction) "
                  "to see what holds them.")
            await resume(settings, database, quiet=True)
            # The pending PAUSE never answers now: drop its connection, then the task.
            await conn.close()
            pausing.cancel()
            with contextlib.suppress(BaseException):
                await pausing
            return 1
        pausing.result()
    finally:
        await conn.close()
    print(f"PAUSED {target}: clients queue (up to query_wait_timeout) until "
          f"`ops/pgbouncer-resume{' ' + database if database else ''}`")
    return 0


async def resume(settings: Settings, database: str | None, *, quiet: bool = False) -> int:
    conn = await pgbouncer.connect(settings.pgbouncer_admin_url,
                                   timeout_s=settings.doctor_timeout_s)
    try:
        await asyncio.wait_for(pgbouncer.command(conn, _with_db("RESUME", database)),
                               settings.doctor_timeout_s)
    except psycopg.Error as exc:
        if "not paused" not in str(exc):
            raise
        if not quiet:
            print(f"{database or 'PgBouncer'} was not paused: nothing to do")
        return 0
    finally:
        await conn.close()
    if not quiet:
        print(f"RESUMED {database or 'all databases'}")
    return 0


async def _busy_servers(settings: Settings, database: str | None) -> int:
    conn = await pgbouncer.connect(settings.pgbouncer_admin_url,
                                   timeout_s=settings.doctor_timeout_s)
    try:
        pools = await pgbouncer.show(conn, "POOLS")
    finally:
        await conn.close()
    return sum(int(p["sv_active"]) for p in pools
               if p["database"] != pgbouncer.CONSOLE_DB
               and (database is None or p["database"] == database))


def _with_db(command: str, database: str | None) -> str:
    if database is None:
        return command
    if not database.replace("_", "").isalnum():
        raise errors.ConfigError(f"not a database name: {database!r}")
    return f"{command} {database}"
