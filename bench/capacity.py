"""Capacity: the most concurrent users the design holds, stepping the user count up.

A step passes when, for its whole duration (ramp included):
- every response is 2xx, except 503s with Retry-After under MAX_UNAVAILABLE_SHARE;
- no request goes unanswered (refused, reset, timed out);
- GET progress p99 is under PROGRESS_P99_LIMIT_MS;
- no task is lost or stuck (all reach completed within the drain timeout).
Capacity is the largest passing step. By default the search stops at the first failing
step (more users only fail harder); --capacity-all runs every step.
"""

from __future__ import annotations

from typing import Any

from bench import run as bench_run
from ops.stack import Stack

PROGRESS_P99_LIMIT_MS = 250.0
MAX_UNAVAILABLE_SHARE = 0.001


def verdict(mode_result: dict[str, Any]) -> tuple[bool, list[str]]:
    summary = mode_result["users_summary"]
    progress = summary["endpoints"]["GET /api/progress/{id}"]
    drained = mode_result["tasks_after_drain"]
    reasons = []
    if summary["client_errors"]:
        reasons.append(f"{summary['client_errors']} requests unanswered")
    if summary["other_error_responses"]:
        reasons.append(f"{summary['other_error_responses']} error responses other than 503")
    if summary["unavailable_503_without_retry_after"]:
        reasons.append("503 without Retry-After")
    if summary["unavailable_503_share"] >= MAX_UNAVAILABLE_SHARE:
        reasons.append(f"503 share {summary['unavailable_503_share']:.2%}")
    p99 = progress["p99_ms"]
    if p99 is None or p99 >= PROGRESS_P99_LIMIT_MS:
        reasons.append(f"progress p99 {p99} ms")
    if drained["lost"] or drained["stuck"]:
        reasons.append(f"{drained['lost']} tasks lost, {drained['stuck']} stuck")
    return not reasons, reasons


def search(stack: Stack, options: bench_run.Options, log=print) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    capacity = None
    for users in options.capacity_steps:
        log(f"bench: capacity step: {users} users for {options.capacity_duration_s:.0f} s")
        result = bench_run.run_service_mode(stack, options, mode="design", users=users,
                                            duration_s=options.capacity_duration_s,
                                            extras=False, log=log)
        passed, reasons = verdict(result)
        summary = result["users_summary"]
        steps.append({
            "users": users,
            "passed": passed,
            "reasons": reasons,
            "progress": summary["endpoints"]["GET /api/progress/{id}"],
            "create": summary["endpoints"]["POST /api/generate-video"],
            "requests_per_s": summary["requests_per_s"],
            "completed_tasks_per_min": summary["completed_tasks_per_min"],
            "unavailable_503_share": summary["unavailable_503_share"],
            "client_errors": summary["client_errors"],
            "tasks_after_drain": result["tasks_after_drain"],
            "pg_app_connections_max": result["connections"]["pg_app_connections_max"],
            "pgbouncer_cl_waiting_max": result["connections"]["pgbouncer_cl_waiting_max"],
            "cpu_avg_pct": result["connections"]["cpu_avg_pct"],
            "generator_loop_lag_max_ms": summary["generator_loop_lag_max_ms"],
            "timeline": result["timeline"],
        })
        log(f"bench:   {'pass' if passed else 'FAIL: ' + '; '.join(reasons)} "
            f"(progress p99 {summary['endpoints']['GET /api/progress/{id}']['p99_ms']} ms)")
        if passed:
            capacity = users if capacity is None else max(capacity, users)
        elif options.capacity_stop_at_failure:
            break
    return {"capacity_users": capacity, "step_duration_s": options.capacity_duration_s,
            "criteria": {"progress_p99_under_ms": PROGRESS_P99_LIMIT_MS,
                         "max_503_share": MAX_UNAVAILABLE_SHARE,
                         "no_unanswered_requests": True, "no_lost_or_stuck_tasks": True},
            "steps": steps}
