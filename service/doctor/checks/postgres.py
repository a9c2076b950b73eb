"""PostgreSQL: its connections, its sessions, and what holds server connections."""

from __future__ import annotations

from service.doctor.checks.base import Context, share_level, usable_connections
from service.doctor.findings import Finding, Level

# Rows a finding keeps (and the sentence names at most 3 of); the SQL limits them to 10.
KEEP_ROWS = 10


def check_pg_connections(ctx: Context) -> Finding:
    if ctx.pg is None:
        return ctx.unreadable("postgres")
    o = ctx.pg.overview
    usable, used = usable_connections(o), int(o["connections"])
    level = share_level(used, usable)
    return ctx.found(level, "ok" if level is Level.OK else "near_limit", used=used,
                     usable=usable, max_connections=int(o["max_connections"]),
                     reserved=int(o["superuser_reserved"]) + int(o["reserved"]),
                     server_version=o["server_version"])


def check_pg_sessions(ctx: Context) -> Finding:
    if ctx.pg is None:
        return ctx.unreadable("postgres")
    sessions = ctx.pg.sessions
    return ctx.found(Level.OK, "ok", sessions=sessions,
                     total=sum(int(row["sessions"]) for row in sessions),
                     longest_s=max((float(row["longest_active_s"]) for row in sessions),
                                   default=0.0))


def check_idle_in_transaction(ctx: Context) -> Finding:
    if ctx.pg is None:
        return ctx.unreadable("postgres")
    rows = ctx.pg.idle_in_transaction[:KEEP_ROWS]
    facts = {"threshold_s": ctx.settings.doctor_idle_in_transaction_s,
             "role_timeout_ms": int(ctx.pg.overview.get("idle_in_transaction_timeout_ms")
                                    or 0)}
    if not rows:
        return ctx.found(Level.OK, "ok", **facts)
    return ctx.found(Level.WARNING, "found", total=int(rows[0]["total"]), sessions=rows,
                     **facts)


def check_long_statements(ctx: Context) -> Finding:
    if ctx.pg is None:
        return ctx.unreadable("postgres")
    rows = ctx.pg.long_statements[:KEEP_ROWS]
    facts = {"limit_s": ctx.pg.long_after_s,
             "has_timeout": bool(ctx.pg.overview.get("statement_timeout_ms"))}
    if rows:
        return ctx.found(Level.WARNING, "found", total=int(rows[0]["total"]),
                         statements=rows, **facts)
    if not facts["has_timeout"]:
        return ctx.found(Level.WARNING, "no_timeout", **facts)
    return ctx.found(Level.OK, "ok", **facts)
