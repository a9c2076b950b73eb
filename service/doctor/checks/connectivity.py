"""Connectivity: PostgreSQL directly, PgBouncer, and PgBouncer's admin console."""

from __future__ import annotations

from typing import Any

from service.doctor import pgbouncer
from service.doctor.checks.base import SLOW_PING_MS, Context, address
from service.doctor.findings import Finding, Level
from service.doctor.probe import Failure, Ping


def _ping_facts(ping: Ping) -> dict[str, Any]:
    return {"roundtrip_ms": ping.roundtrip_ms, "connect_ms": ping.connect_ms,
            "slow_ms": SLOW_PING_MS}


def check_postgres(ctx: Context) -> Finding:
    direct, where = ctx.sample.direct, address(ctx.settings.database_direct_url)
    if isinstance(direct, Failure):
        if isinstance(ctx.sample.bouncer, Ping):
            return ctx.found(Level.WARNING, "only_through_pgbouncer", address=where,
                             reason=direct.reason)
        return ctx.found(Level.CRITICAL, "unreachable", address=where, reason=direct.reason)
    slow = direct.roundtrip_ms > SLOW_PING_MS
    return ctx.found(Level.WARNING if slow else Level.OK, "slow" if slow else "ok",
                     address=where, **_ping_facts(direct))


def paused_databases(ctx: Context) -> list[str]:
    """The app databases PgBouncer holds paused."""
    if ctx.console is None:
        return []
    return [d["name"] for d in ctx.console.databases
            if d.get("paused") and d["name"] != pgbouncer.CONSOLE_DB]


def check_pgbouncer(ctx: Context) -> Finding:
    ping, where = ctx.sample.bouncer, address(ctx.settings.database_url)
    if isinstance(ping, Failure):
        paused = paused_databases(ctx)
        if paused:
            return ctx.found(Level.CRITICAL, "paused", address=where, reason=ping.reason,
                             paused=paused)
        if ping.connected:
            return ctx.found(Level.WARNING, "no_server_connection", address=where,
                             reason=ping.reason)
        return ctx.found(Level.CRITICAL, "unreachable", address=where, reason=ping.reason)
    slow = ping.roundtrip_ms > SLOW_PING_MS
    return ctx.found(Level.WARNING if slow else Level.OK, "slow" if slow else "ok",
                     address=where, **_ping_facts(ping))


def check_console(ctx: Context) -> Finding:
    console = ctx.sample.console
    if isinstance(console, Failure):
        bouncer = ctx.sample.bouncer
        pgbouncer_down = isinstance(bouncer, Failure) and not bouncer.connected
        return ctx.found(Level.WARNING, "pgbouncer_down" if pgbouncer_down else "refused",
                         reason=console.reason)
    return ctx.found(Level.OK, "ok", version=console.version)
