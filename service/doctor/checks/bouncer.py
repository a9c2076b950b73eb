"""PgBouncer: its pools (are clients queueing?), its traffic, its client connections."""

from __future__ import annotations

import math
from typing import Any

from service.doctor import pgbouncer
from service.doctor.checks.base import Context, share_level, usable_connections
from service.doctor.findings import Finding, Level, worst


def check_pools(ctx: Context) -> Finding:
    console = ctx.console
    if console is None:
        return ctx.unreadable("console")
    pools = console.app_pools()
    if not pools:
        return ctx.found(Level.OK, "no_pool")
    qwt = console.setting("query_wait_timeout")
    # Clients queue for a moment whenever every server is busy or one is logging in: that
    # is pooling working. Saturated: still queued at both reads, or queued too long.
    brief_s = ctx.settings.doctor_wait_warn_ms / 1000
    seen: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for read in ctx.reads:
        for p in read.app_pools():
            seen.setdefault((p["database"], p["user"]), []).append(
                (int(p["cl_waiting"]), pgbouncer.maxwait_s(p)))
    # The auth user's "clients" are PgBouncer's own password lookups during logins.
    auth_user = console.config.get("auth_user")
    levels = [Level.OK]
    databases = []
    for db_name in sorted({p["database"] for p in pools}):
        db = console.database(db_name) or {}
        if db.get("paused") or db.get("disabled"):
            databases.append({"database": db_name, "paused": bool(db.get("paused")),
                              "disabled": bool(db.get("disabled"))})
            levels.append(Level.CRITICAL)
    entries = []
    for p in pools:
        db = console.database(p["database"]) or {}
        reads = seen.get((p["database"], p["user"]), [(0, 0.0)])
        waiting, wait_s = max(r[0] for r in reads), max(r[1] for r in reads)
        entry: dict[str, Any] = {
            "database": p["database"], "user": p["user"],
            "pool_size": int(db.get("pool_size") or console.setting("default_pool_size")),
            "busy": int(p["sv_active"]), "servers": pgbouncer.server_connections(p),
            "clients": int(p["cl_active"]), "waiting": waiting, "wait_s": wait_s,
            "reads": len(reads), "pool_mode": p.get("pool_mode"),
            "paused": bool(db.get("paused")),
            "saturated": p["user"] != auth_user and waiting > 0 and (
                wait_s >= brief_s or (len(reads) > 1 and all(r[0] for r in reads))),
        }
        if entry["pool_mode"] not in (None, "transaction"):
            levels.append(Level.WARNING)
        if entry["saturated"]:
            entry["critical"] = qwt > 0 and wait_s >= qwt / 2
            levels.append(Level.CRITICAL if entry["critical"] else Level.WARNING)
            if not entry["paused"]:
                entry["advice"] = _pool_advice(ctx, console, p, entry["pool_size"], waiting)
        entries.append(entry)
    level = worst(*levels)
    return ctx.found(level, "ok" if level is Level.OK else "problems", pools=entries,
                     databases=databases, query_wait_timeout_s=qwt,
                     wait_warn_ms=ctx.settings.doctor_wait_warn_ms)


def _pool_advice(ctx: Context, console: pgbouncer.Console, pool: dict[str, Any],
                 pool_size: int, waiting: int) -> dict[str, Any]:
    """How far to raise the pool: by what PostgreSQL can take, and whether to look first
    at what holds the connections."""
    pairs = max(1, sum(1 for p in console.app_pools() if p["database"] == pool["database"]))
    step = max(waiting, math.ceil(pool_size / 2), 2)
    room = ctx.pg_room()
    db = console.database(pool["database"]) or {}
    advice: dict[str, Any] = {
        "held": bool(ctx.pg and (ctx.pg.long_statements or ctx.pg.idle_in_transaction)),
        "room": room,
        "no_room": room is not None and room // pairs < 1,
        "max_db_connections": int(db.get("max_connections") or 0),
        "current_connections": int(db.get("current_connections") or 0),
    }
    if advice["no_room"] and ctx.pg is not None:
        advice["pg_connections"] = int(ctx.pg.overview["connections"])
        advice["pg_usable"] = usable_connections(ctx.pg.overview)
    if room is not None and not advice["no_room"]:
        step = min(step, room // pairs)
    advice["raise_to"] = pool_size + step
    advice["step"] = step
    return advice


def check_traffic(ctx: Context) -> Finding:
    if ctx.console is None:
        return ctx.unreadable("console")
    reads = ctx.reads
    if len(reads) < 2:
        return ctx.found(Level.UNKNOWN, "one_read")
    rates = pgbouncer.traffic(reads[0], reads[-1])
    if not rates:
        return ctx.found(Level.UNKNOWN, "no_comparable_reads")
    limit = ctx.settings.doctor_wait_warn_ms
    slow = [t.database for t in rates
            if t.avg_xact_ms is not None and (t.avg_wait_ms or 0.0) > limit]
    return ctx.found(Level.WARNING if slow else Level.OK, "slow_wait" if slow else "ok",
                     rates=[t.__dict__ for t in rates], slow=slow, wait_warn_ms=limit)


def check_clients(ctx: Context) -> Finding:
    console = ctx.console
    if console is None:
        return ctx.unreadable("console")
    apps = pgbouncer.clients_by_application(console.clients)
    total = sum(sum(states.values()) for states in apps.values())
    limit = console.setting("max_client_conn")
    level = share_level(total, limit)
    return ctx.found(level, "ok" if level is Level.OK else "near_limit", total=total,
                     max_client_conn=limit, clients=apps)
