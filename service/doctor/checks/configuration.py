"""Configuration arithmetic: client connections, server connections, timeouts.

The connection arithmetic is service.capacity's, the rule the Helm chart applies too; here
with what one machine runs: one API "pod" of API_PROCESSES, DOCTOR_EXPECTED_WORKERS
workers and the one PgBouncer whose console the doctor reads.
"""

from __future__ import annotations

import math
from typing import Any

from service import capacity
from service.doctor import pgbouncer
from service.doctor.checks.base import (
    API_APP,
    WORKER_APP,
    Context,
    share_level,
    usable_connections,
)
from service.doctor.findings import Finding, Level

# Room to suggest above a computed need: 25 %.
HEADROOM = 1.25
# Server connections above this share of PostgreSQL's usable ones leave too little room.
SERVER_HEADROOM_SHARE = 0.9


def check_client_budget(ctx: Context) -> Finding:
    console, s = ctx.console, ctx.settings
    if console is None:
        return ctx.unreadable("console")
    limit = console.setting("max_client_conn")
    pods, poolers = s.doctor_expected_api_pods, s.doctor_pooler_instances
    processes = pods * s.api_processes + s.doctor_expected_workers
    clients = capacity.client_connections(
        api_pods=pods, api_processes=s.api_processes, worker_pods=s.doctor_expected_workers,
        app_pool_max=s.app_pool_max)
    planned = capacity.clients_per_pooler(clients, poolers)
    apps = pgbouncer.clients_by_application(console.clients)
    now = {app: sum(apps.get(app, {}).values()) for app in (API_APP, WORKER_APP)}
    facts: dict[str, Any] = {
        "api_processes": s.api_processes, "expected_workers": s.doctor_expected_workers,
        "api_pods": pods, "pooler_instances": poolers, "clients": clients,
        "app_pool_max": s.app_pool_max, "planned": planned, "max_client_conn": limit,
        "now": now, "suggest": math.ceil(planned * HEADROOM)}
    if planned > limit:
        return ctx.found(Level.CRITICAL, "over_limit", fit=limit * poolers // processes,
                         **facts)
    # An application holding more client connections than the arithmetic allows this
    # PgBouncer: more processes run than the settings say.
    over = {app: most for app, most in (
        (API_APP, capacity.clients_per_pooler(pods * s.api_processes * s.app_pool_max,
                                              poolers)),
        (WORKER_APP, capacity.clients_per_pooler(s.doctor_expected_workers * s.app_pool_max,
                                                 poolers)))
        if now[app] > most}
    if over:
        return ctx.found(Level.WARNING, "more_processes", over=over, **facts)
    level = share_level(planned, limit)
    return ctx.found(level, "ok" if level is Level.OK else "near_limit", **facts)


def check_server_budget(ctx: Context) -> Finding:
    console, pg = ctx.console, ctx.pg
    if console is None or pg is None:
        return ctx.unreadable("console and postgres")
    terms, budget, servers = [], 0, 0
    for db_name in sorted({p["database"] for p in console.app_pools()}):
        db = console.database(db_name) or {}
        pools = [p for p in console.app_pools() if p["database"] == db_name]
        term = {"database": db_name,
                "pool_size": int(db.get("pool_size") or console.setting("default_pool_size")),
                "reserve": int(db.get("reserve_pool") or 0), "users": len(pools),
                "max_db_connections": int(db.get("max_connections") or 0)}
        uncapped = capacity.pooler_server_connections(
            default_pool_size=term["pool_size"], reserve_pool_size=term["reserve"],
            pools=term["users"])
        term["most"] = capacity.pooler_server_connections(
            default_pool_size=term["pool_size"], reserve_pool_size=term["reserve"],
            pools=term["users"], max_db_connections=term["max_db_connections"])
        term["capped"] = term["most"] < uncapped
        terms.append(term)
        budget += term["most"]
        servers += sum(pgbouncer.server_connections(p) for p in pools)
    o = pg.overview
    usable = usable_connections(o)
    # Every PgBouncer instance has pools of its own; the others are taken to be like
    # this one, down to their server connections now.
    poolers = ctx.settings.doctor_pooler_instances
    budget, servers = budget * poolers, servers * poolers
    others = max(0, int(o["connections"]) - servers)
    total = budget + others
    facts = {"terms": terms, "pgbouncer_budget": budget, "other_sessions": others,
             "pooler_instances": poolers,
             "total": total, "usable": usable, "max_connections": int(o["max_connections"]),
             "reserved": int(o["superuser_reserved"]) + int(o["reserved"])}
    if total > usable:
        return ctx.found(Level.CRITICAL, "over_limit", **facts)
    if total > usable * SERVER_HEADROOM_SHARE:
        return ctx.found(Level.WARNING, "little_headroom", **facts)
    return ctx.found(Level.OK, "ok", **facts)


def check_timeouts(ctx: Context) -> Finding:
    """Timeouts that contradict each other; each problem is a code the renderer words."""
    console, pg, s = ctx.console, ctx.pg, ctx.settings
    if console is None and pg is None:
        return ctx.unreadable("console or postgres")
    facts: dict[str, Any] = {"pool_timeout_s": s.pool_timeout_s, "lease_s": s.lease_s,
                             "statement_timeout_ms": None}
    problems = []
    if pg is not None:
        facts["statement_timeout_ms"] = int(pg.overview["statement_timeout_ms"] or 0)
        facts["role_idle_in_transaction_ms"] = int(
            pg.overview.get("idle_in_transaction_timeout_ms") or 0)
        if not facts["statement_timeout_ms"]:
            problems.append("no_statement_timeout")
    if console is not None:
        facts |= {"query_wait_timeout_s": console.setting("query_wait_timeout"),
                  "query_timeout_s": console.setting("query_timeout"),
                  "client_idle_timeout_s": console.setting("client_idle_timeout"),
                  "idle_transaction_timeout_s": console.setting("idle_transaction_timeout"),
                  "app_pool_max_idle_s": ctx.app_pool_max_idle_s}
        qwt, statement_ms = facts["query_wait_timeout_s"], facts["statement_timeout_ms"]
        if not qwt:
            problems.append("no_query_wait_timeout")
        elif s.pool_timeout_s > qwt:
            problems.append("pool_timeout_over_query_wait")
        if (facts["query_timeout_s"] and statement_ms is not None
                and facts["query_timeout_s"] * 1000 <= statement_ms):
            problems.append("query_timeout_not_above_statement_timeout")
        if 0 < facts["client_idle_timeout_s"] < facts["app_pool_max_idle_s"]:
            problems.append("client_idle_below_pool_max_idle")
        if (pg is not None and not facts["idle_transaction_timeout_s"]
                and not facts["role_idle_in_transaction_ms"]):
            problems.append("no_idle_in_transaction_guard")
    if s.pool_timeout_s >= s.lease_s:
        problems.append("pool_timeout_not_below_lease")
    if problems:
        return ctx.found(Level.WARNING, "contradictions", problems=problems, **facts)
    return ctx.found(Level.OK, "ok", problems=[], **facts)
