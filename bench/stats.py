"""Turning a run's recordings and samples into figures."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from bench.users import CLIENT_ERROR, CREATE, ENDPOINTS, PROGRESS, Recording


def percentile(sorted_values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def latency_summary(latencies: Sequence[float]) -> dict[str, float | None]:
    ordered = sorted(latencies)
    return {"p50_ms": _ms(percentile(ordered, 50)), "p95_ms": _ms(percentile(ordered, 95)),
            "p99_ms": _ms(percentile(ordered, 99)), "max_ms": _ms(ordered[-1] if ordered else None)}


def summarize_users(rec: Recording, *, duration_s: float, ramp_s: float) -> dict[str, Any]:
    by_endpoint: dict[str, Any] = {}
    total = len(rec.status)
    for code, name in ENDPOINTS.items():
        idx = [i for i, e in enumerate(rec.endpoint) if e == code]
        statuses = Counter(rec.status[i] for i in idx)
        answered = [rec.latency_s[i] for i in idx if rec.status[i] != CLIENT_ERROR]
        by_endpoint[name] = {
            "requests": len(idx),
            "status_codes": {str(k): v for k, v in sorted(statuses.items()) if k != CLIENT_ERROR},
            "client_errors": statuses.get(CLIENT_ERROR, 0),
            **latency_summary(answered),
        }
    statuses = Counter(rec.status)
    unavailable = statuses.get(503, 0)
    client_errors = statuses.get(CLIENT_ERROR, 0)
    other_errors = sum(v for k, v in statuses.items()
                       if k != CLIENT_ERROR and not 200 <= k < 300 and k != 503)
    finished = [t for t in rec.tasks.values() if t[1] is not None]
    completed = sum(1 for t in finished if t[2] == "completed")
    steady = [i for i, t in enumerate(rec.ended_s) if ramp_s <= t <= duration_s]
    steady_s = max(duration_s - ramp_s, 1e-9)
    return {
        "requests": total,
        "requests_per_s": round(total / duration_s, 1) if duration_s else 0.0,
        "steady_requests_per_s": round(len(steady) / steady_s, 1),
        "endpoints": by_endpoint,
        "unavailable_503": unavailable,
        "unavailable_503_share": round(unavailable / total, 6) if total else 0.0,
        "unavailable_503_without_retry_after": rec.unavailable_without_retry_after,
        "other_error_responses": other_errors,
        "client_errors": client_errors,
        "client_error_kinds": dict(rec.client_errors.most_common(10)),
        "tasks_created": len(rec.tasks),
        "tasks_seen_completed": completed,
        "tasks_seen_failed": len(finished) - completed,
        "completed_tasks_per_min": round(completed / duration_s * 60, 1) if duration_s else 0.0,
        "task_time_p50_s": _round(percentile(sorted(t[1] - t[0] for t in finished), 50)),
        "task_time_p99_s": _round(percentile(sorted(t[1] - t[0] for t in finished), 99)),
        "generator_cpu_pct": round(rec.generator_cpu_s / rec.wall_s * 100, 1)
        if rec.wall_s else None,
        "generator_loop_lag_max_ms": _ms(rec.loop_lag_max_s),
        "change_delay": change_delay_summary(rec),
        "wait_outcomes": dict(rec.wait_outcomes),
    }


def change_delay_summary(rec: Recording) -> dict[str, Any]:
    """How late users saw their tasks' changes: answers whose updated_at differed from
    the previous answer's, delay = arrival (client wall clock) - updated_at."""
    ordered = sorted(rec.change_delay_s)
    return {"changes_seen": len(ordered), **latency_summary(ordered),
            "p90_ms": _ms(percentile(ordered, 90)),
            # A negative delay would mean the clocks disagree: same machine, never expected.
            "min_ms": _ms(ordered[0] if ordered else None)}


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def timeline(rec: Recording, duration_s: float) -> list[dict[str, Any]]:
    """Per second of the run: requests, errors, and progress/create latency."""
    # Whole seconds only: the last, partial second would read as a drop in load.
    seconds = max(1, math.floor(duration_s))
    buckets: list[dict[int, list[float]]] = [{CREATE: [], PROGRESS: []} for _ in range(seconds)]
    errors = [0] * seconds
    delays: list[list[float]] = [[] for _ in range(seconds)]
    for seen, delay in zip(rec.change_seen_s, rec.change_delay_s, strict=True):
        if int(seen) < seconds:
            delays[int(seen)].append(delay)
    for endpoint, ended, latency, status in zip(rec.endpoint, rec.ended_s, rec.latency_s,
                                                rec.status, strict=True):
        second = int(ended)
        if second >= seconds:
            continue
        buckets[second][endpoint].append(latency)
        if not 200 <= status < 300:
            errors[second] += 1
    rows = []
    for second, bucket in enumerate(buckets):
        progress = sorted(bucket[PROGRESS])
        create = sorted(bucket[CREATE])
        rows.append({
            "t": second,
            "requests": len(progress) + len(create),
            "errors": errors[second],
            "progress_p50_ms": _ms(percentile(progress, 50)),
            "progress_p99_ms": _ms(percentile(progress, 99)),
            "create_p99_ms": _ms(percentile(create, 99)),
            "changes_seen": len(delays[second]),
            "change_delay_p99_ms": _ms(percentile(sorted(delays[second]), 99)),
            "generator_lag_ms": _ms(rec.loop_lag_s[second]) if second < len(rec.loop_lag_s)
            else None,
        })
    return rows


def summarize_samples(samples: list[dict[str, Any]], pool_size: int) -> dict[str, Any]:
    pg = [s["postgres"] for s in samples if s.get("postgres")]
    pools = [s["pgbouncer"] for s in samples if s.get("pgbouncer")]
    cpu = [s["cpu"] for s in samples if s.get("cpu")]

    def top(rows: list[dict[str, Any]], key: str) -> float | None:
        values = [r[key] for r in rows if r.get(key) is not None]
        return max(values) if values else None

    waiting = [w for w in (_app_pool_total(s, "requests_waiting") for s in samples)
               if w is not None]
    app_max = top(pg, "app")
    cpu_avg = {}
    for key in sorted({k for row in cpu for k in row}):
        values = [row[key] for row in cpu if row.get(key) is not None]
        cpu_avg[key] = round(sum(values) / len(values), 1) if values else None
    return {
        "samples": len(samples),
        "pg_app_connections_max": app_max,
        "pg_app_active_max": top(pg, "app_active"),
        "pg_app_idle_in_transaction_max": top(pg, "app_idle_in_transaction"),
        "pg_all_client_backends_max": top(pg, "all_client_backends"),
        "pgbouncer_default_pool_size": pool_size,
        "pg_app_connections_within_pool_size": None if app_max is None
        else app_max <= pool_size,
        "pgbouncer_cl_active_max": top(pools, "cl_active"),
        "pgbouncer_cl_waiting_max": top(pools, "cl_waiting"),
        "pgbouncer_sv_active_max": top(pools, "sv_active"),
        "pgbouncer_sv_idle_max": top(pools, "sv_idle"),
        "pgbouncer_maxwait_max_s": top(pools, "maxwait_s"),
        "app_pools_requests_waiting_max": max(waiting) if waiting else None,
        "app_pools_scraped": sum(1 for s in samples for v in (s.get("app_pools") or {}).values()
                                 if v is not None),
        "cpu_avg_pct": cpu_avg,
    }


def _app_pool_total(sample: dict[str, Any], key: str) -> float | None:
    """The sum of one get_stats key over every scraped pool of a sample."""
    values = [stats[key] for process in (sample.get("app_pools") or {}).values() if process
              for stats in process.values() if key in stats]
    return sum(values) if values else None
