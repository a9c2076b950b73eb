"""The run's outputs: results.json (everything), plot.png and summary.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PROGRESS = "GET /api/progress/{id}"
CREATE = "POST /api/generate-video"
LABELS = {"design": "design (PgBouncer)", "design-wait": "design, waiting polls",
          "direct": "direct (write-up pools)"}
COLORS = {"design": "tab:blue", "design-wait": "tab:green", "direct": "tab:orange"}


def write(results: dict[str, Any], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "summary": out / "summary.md"}
    paths["json"].write_text(json.dumps(results, indent=1, default=str))
    paths["summary"].write_text(markdown(results))
    plot = out / "plot.png"
    if write_plot(results, plot):
        paths["plot"] = plot
    return paths


def write_plot(results: dict[str, Any], path: Path) -> bool:
    modes = {name: m for name, m in results.get("modes", {}).items() if "timeline" in m}
    steps = results.get("capacity", {}).get("steps", [])
    if not modes and not steps:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5), sharex=True)
    (lat, conns), (wait, rate) = axes
    pool_size = results["meta"].get("pgbouncer", {}).get("default_pool_size")
    for name, mode in modes.items():
        label = LABELS.get(name, name)
        color = COLORS.get(name)
        t = [row["t"] for row in mode["timeline"]]
        if not mode.get("wait_s"):
            # A waiting poll's latency is how long it was held: its delay is what counts.
            lat.plot(t, [row["progress_p99_ms"] for row in mode["timeline"]], color=color,
                     label=f"{label} p99")
            lat.plot(t, [row["progress_p50_ms"] for row in mode["timeline"]], color=color,
                     linestyle=":", label=f"{label} p50")
        if any(row.get("change_delay_p99_ms") for row in mode["timeline"]):
            lat.plot(t, [row.get("change_delay_p99_ms") for row in mode["timeline"]],
                     color=color, linestyle="-.", label=f"{label}: change delay p99")
        rate.plot(t, [row["requests"] for row in mode["timeline"]], color=color,
                  label=f"{label} requests/s")
        st = [s["t"] for s in mode["samples"]]
        conns.plot(st, [(s["postgres"] or {}).get("app") for s in mode["samples"]],
                   color=color, label=f"{label}: PostgreSQL server connections")
        wait.plot(st, [_pool_sum(s, "requests_waiting") for s in mode["samples"]],
                  color=color, linestyle="--", label=f"{label}: app pools requests_waiting")
        if name == "design":
            wait.plot(st, [(s["pgbouncer"] or {}).get("cl_waiting") for s in mode["samples"]],
                      color="black", label="design: PgBouncer cl_waiting")
    if pool_size:
        conns.axhline(pool_size, color="grey", linestyle="--",
                      label=f"PgBouncer default_pool_size = {pool_size}")
    lat.set_ylabel("GET progress latency, change-to-client delay (ms)")
    lat.set_yscale("log")
    conns.set_ylabel("connections")
    wait.set_ylabel("waiting clients")
    rate.set_ylabel("requests per second")
    for ax in (lat, conns, wait, rate):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in (wait, rate):
        ax.set_xlabel("seconds into the run")
    users = results["meta"]["options"]["users"]
    fig.suptitle(f"{users} users, {results['meta']['machine']['nproc']} cores "
                 f"({results['meta']['date']})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _pool_sum(sample: dict[str, Any], key: str) -> float | None:
    values = [stats[key] for proc in (sample.get("app_pools") or {}).values() if proc
              for stats in proc.values() if key in stats]
    return sum(values) if values else None


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        value = f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return f"{value}{unit}"


def _seconds(value: Any) -> str:
    """Video lengths: one, or several asked for in turn (older results: an int)."""
    return ", ".join(str(v) for v in value) if isinstance(value, list | tuple) else str(value)


def _lat(endpoint: dict[str, Any]) -> str:
    return " / ".join(_fmt(endpoint.get(k)) for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms"))


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    m = meta["machine"]
    o = meta["options"]
    lines = [
        f"# Benchmark {meta['date']}",
        "",
        f"Machine: {m['nproc']} cores ({m['cpu_model']}), {m['memory_gb']} GB, "
        f"kernel {m['kernel']}; load average before {m['load_before']}, "
        f"after {meta.get('load_after')}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".",
        f"Run: {o['users']} users, {o['duration_s']:.0f} s (ramp {o['ramp_fraction']:.0%}), "
        f"simulated part {o['part_seconds']} s, video {_seconds(o['video_seconds'])} s, "
        f"worker concurrency {o['worker_concurrency'] or 'users'}, "
        f"API processes {o['api_processes']}, workers {o['workers']}; "
        f"PgBouncer {meta.get('pgbouncer')}.",
        "",
    ]
    modes = {k: v for k, v in results["modes"].items() if "users_summary" in v}
    if modes:
        names = list(modes)
        how = ("polling every second" if not any(modes[n].get("wait_s") for n in names)
               else "polling every second or waiting for changes")
        lines += [f"## Users {how} ({o['users']} users, {o['duration_s']:.0f} s)",
                  "", "| | " + " | ".join(LABELS.get(n, n) for n in names) + " |",
                  "|---|" + "---|" * len(names)]

        def row(title: str, fn) -> None:
            lines.append(f"| {title} | " + " | ".join(fn(modes[n]) for n in names) + " |")

        row("requests/s (whole run / after ramp)", lambda r: (
            f"{_fmt(r['users_summary']['requests_per_s'])} / "
            f"{_fmt(r['users_summary']['steady_requests_per_s'])}"))
        row("completed tasks/min", lambda r: _fmt(r["users_summary"]["completed_tasks_per_min"]))
        row("requests per task created", lambda r: _fmt(
            r["users_summary"]["requests"] / r["users_summary"]["tasks_created"]
            if r["users_summary"]["tasks_created"] else None))
        row("GET progress p50/p95/p99/max ms (waiting: time held)",
            lambda r: _lat(r["users_summary"]["endpoints"][PROGRESS]))
        row("changes seen; change-to-client delay p50/p90/p99/max ms", lambda r: (
            f"{r['users_summary']['change_delay']['changes_seen']}; " + " / ".join(
                _fmt(r["users_summary"]["change_delay"].get(k))
                for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms"))))
        row("waiting polls: changed / unchanged after the wait / unchanged early",
            lambda r: " / ".join(str(r["users_summary"].get("wait_outcomes", {}).get(k, 0))
                                 for k in ("changed", "unchanged after the wait",
                                           "unchanged, early"))
            if r.get("wait_s") else "")
        row("API: waits by outcome (all processes)", lambda r: ", ".join(
            f"{k} {v}" for k, v in sorted(
                r.get("server_waits", {}).get("outcomes", {}).items())) or "none")
        row("POST create p50/p95/p99/max ms",
            lambda r: _lat(r["users_summary"]["endpoints"][CREATE]))
        row("GET progress requests, status codes", lambda r: (
            f"{r['users_summary']['endpoints'][PROGRESS]['requests']}, "
            f"{r['users_summary']['endpoints'][PROGRESS]['status_codes']}"))
        row("POST create requests, status codes", lambda r: (
            f"{r['users_summary']['endpoints'][CREATE]['requests']}, "
            f"{r['users_summary']['endpoints'][CREATE]['status_codes']}"))
        row("503 share / unanswered requests", lambda r: (
            f"{r['users_summary']['unavailable_503_share']:.3%} / "
            f"{r['users_summary']['client_errors']}"))
        row("tasks created / lost / stuck / failed", lambda r: (
            f"{r['tasks_after_drain']['tasks']} / {r['tasks_after_drain']['lost']} / "
            f"{r['tasks_after_drain']['stuck']} / {r['tasks_after_drain']['failed']}"))
        row("PostgreSQL server connections of the app, max",
            lambda r: _fmt(r["connections"]["pg_app_connections_max"]))
        row("PgBouncer cl_waiting max / maxwait max s", lambda r: (
            f"{_fmt(r['connections']['pgbouncer_cl_waiting_max'])} / "
            f"{_fmt(r['connections']['pgbouncer_maxwait_max_s'])}"
            if r["mode"] != "direct" else "not in the path"))
        row("app pools requests_waiting max",
            lambda r: _fmt(r["connections"]["app_pools_requests_waiting_max"]))
        row("CPU % of one core: api / worker / pgbouncer / postgres / bench / other",
            lambda r: " / ".join(_fmt(r["connections"]["cpu_avg_pct"].get(f"{c}_pct"))
                                 for c in ("api", "worker", "pgbouncer", "postgres", "bench",
                                           "other")))
        row("machine busy % (all cores)",
            lambda r: _fmt(r["connections"]["cpu_avg_pct"].get("machine_busy_pct")))
        row("load generator CPU % / worst loop lag ms", lambda r: (
            f"{_fmt(r['users_summary']['generator_cpu_pct'])} / "
            f"{_fmt(r['users_summary']['generator_loop_lag_max_ms'])}"))
        lines.append("")
        reads = {n: modes[n]["readpath"] for n in names if "readpath" in modes[n]}
        if reads:
            lines += ["## Read path: GET progress in a tight loop (wrk)", "",
                      "| | requests/s | p50 / p99 / max ms | errors | statements per request |",
                      "|---|---|---|---|---|"]
            for n, r in reads.items():
                if "requests_per_s" not in r:
                    lines.append(f"| {LABELS.get(n, n)} | skipped: {r.get('skipped')} | | | |")
                    continue
                lines.append(f"| {LABELS.get(n, n)} | {_fmt(r['requests_per_s'])} | "
                             f"{r['p50_ms']} / {r['p99_ms']} / {r['max_ms']} | {r['errors']} | "
                             f"{_fmt(r.get('statements_per_request'))} |")
            lines.append("")
    pg = results["modes"].get("pgbench")
    if pg:
        lines += ["## Database ceiling: pgbench, same statements", "",
                  "| script | via | clients | tps | latency avg ms | failed |",
                  "|---|---|---|---|---|---|"]
        for name, runs in pg["runs"].items():
            for r in runs:
                via = "PostgreSQL direct" if name.endswith("direct") else "PgBouncer"
                lines.append(f"| {name.replace('_direct', '')} | {via} | {r['clients']} | "
                             f"{_fmt(r['tps'])} | {r['latency_avg_ms']} | {r['failed']} |")
        lines.append("")
    design = results["modes"].get("design", {})
    probes = design.get("pgbouncer_restarts")
    if probes:
        lines += ["## PgBouncer restarts while 20 clients poll", "",
                  "| kept down | down in total s | requests | failed (by status) | "
                  "failed, sent after it was back | recovery s |",
                  "|---|---|---|---|---|---|"]
        for p in probes:
            lines.append(f"| {p['kept_down_s']:g} s | {p['pgbouncer_down_for_s']} | "
                         f"{p['requests']} | {p['failed_requests']} {p['failed_by_status']} | "
                         f"{p['failed_requests_sent_after_back']} | {p['recovery_s']} |")
        lines.append("")
    capacity = results.get("capacity")
    if capacity:
        lines += [f"## Capacity (steps of {capacity['step_duration_s']:.0f} s)", "",
                  "| users | result | progress p50/p95/p99/max ms | requests/s | 503 share | "
                  "server conns max | machine busy % |",
                  "|---|---|---|---|---|---|---|"]
        for step in capacity["steps"]:
            result = "pass" if step["passed"] else "fail: " + "; ".join(step["reasons"])
            lines.append(f"| {step['users']} | {result} | {_lat(step['progress'])} | "
                         f"{_fmt(step['requests_per_s'])} | {step['unavailable_503_share']:.3%} | "
                         f"{_fmt(step['pg_app_connections_max'])} | "
                         f"{_fmt(step['cpu_avg_pct'].get('machine_busy_pct'))} |")
        lines += ["", f"Capacity: **{capacity['capacity_users']} users**.", ""]
    targets = results.get("targets")
    if targets:
        lines += ["## Targets", ""]
        for name, t in targets.items():
            figures = ", ".join(f"{k} {v}" for k, v in t.items() if k != "met")
            lines.append(f"- {name}: {'met' if t['met'] else 'NOT met'} ({figures})")
        lines.append("")
    return "\n".join(lines)
