"""The queue: the tasks table, read with the statements in service/sql/doctor.sql."""

from __future__ import annotations

from typing import Any

from service import tasks
from service.doctor import pgbouncer
from service.doctor.checks.base import (
    BACKLOG_CRITICAL_FACTOR,
    NO_WORKER_AFTER_POLLS,
    RESCUE_GRACE_S,
    WORKER_APP,
    Context,
)
from service.doctor.findings import Finding, Level
from service.doctor.probe import Ping


def _rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Task rows with the ids as text, for JSON."""
    return [{**row, "task_id": str(row["task_id"])} for row in rows]


def check_last_hour(ctx: Context) -> Finding:
    if ctx.queue is None:
        return ctx.unreadable("queue")
    counts = {row["status"]: int(row["tasks"]) for row in ctx.queue.last_hour}
    # In the vocabulary's order.
    ordered = {status.value: counts[status.value] for status in tasks.Status
               if status.value in counts}
    return ctx.found(Level.OK, "ok" if ordered else "none", counts=ordered)


def check_running_too_long(ctx: Context) -> Finding:
    if ctx.queue is None:
        return ctx.unreadable("queue")
    rows, after_s = ctx.queue.running_too_long, ctx.settings.doctor_stuck_after_s
    if not rows:
        return ctx.found(Level.OK, "ok", after_s=after_s)
    return ctx.found(Level.WARNING, "found", after_s=after_s, total=int(rows[0]["total"]),
                     tasks=_rows(rows))


def check_expired_leases(ctx: Context) -> Finding:
    if ctx.queue is None:
        return ctx.unreadable("queue")
    rows = ctx.queue.expired_leases
    if not rows:
        return ctx.found(Level.OK, "ok")
    overdue_s = float(rows[0]["overdue_s"])
    facts = {"total": int(rows[0]["total"]), "overdue_s": overdue_s, "tasks": _rows(rows),
             "grace_s": RESCUE_GRACE_S, "max_attempts": ctx.settings.max_attempts}
    if overdue_s > RESCUE_GRACE_S:
        return ctx.found(Level.CRITICAL, "not_rescued", **facts)
    return ctx.found(Level.WARNING, "being_rescued", **facts)


def check_backlog(ctx: Context) -> Finding:
    if ctx.queue is None:
        if isinstance(ctx.sample.direct, Ping) or isinstance(ctx.sample.bouncer, Ping):
            # The database answers but the queue cannot be read: nothing can be queued.
            return ctx.found(Level.CRITICAL, "table_unreadable", reason=ctx.reason("queue"))
        return ctx.unreadable("queue")
    q, s = ctx.queue.summary, ctx.settings
    oldest = float(q["oldest_pending_s"])
    workers = None
    if ctx.console is not None:
        apps = pgbouncer.clients_by_application(ctx.console.clients)
        workers = sum(apps.get(WORKER_APP, {}).values())
    facts = {**q, "worker_connections": workers, "lag_warn_s": s.doctor_queue_lag_warn_s,
             "worker_concurrency": s.worker_concurrency,
             "expected_workers": s.doctor_expected_workers}
    if (q["runnable"] and workers == 0
            and oldest > s.worker_poll_interval_s * NO_WORKER_AFTER_POLLS):
        level = Level.CRITICAL if oldest > s.doctor_queue_lag_warn_s else Level.WARNING
        return ctx.found(level, "no_worker", **facts)
    if oldest > s.doctor_queue_lag_warn_s:
        stalled = (oldest > s.doctor_queue_lag_warn_s * BACKLOG_CRITICAL_FACTOR
                   and not q["completed_10m"])
        return ctx.found(Level.CRITICAL if stalled else Level.WARNING,
                         "stalled" if stalled else "behind", **facts)
    return ctx.found(Level.OK, "ok", **facts)


def check_attempts(ctx: Context) -> Finding:
    if ctx.queue is None:
        return ctx.unreadable("queue")
    q = ctx.queue.summary
    facts = {"on_last_attempt": q["on_last_attempt"],
             "failed_out_of_attempts_1h": q["failed_out_of_attempts_1h"],
             "max_attempts": ctx.settings.max_attempts}
    if q["failed_out_of_attempts_1h"]:
        return ctx.found(Level.WARNING, "failing", **facts)
    return ctx.found(Level.OK, "ok", **facts)
