"""One benchmark run: a private stack, then each mode in turn, then the report.

Modes (in the order given):
- design:  the service through PgBouncer, as deployed. Users, then the read path (wrk)
           and PgBouncer restarts while clients poll.
- design-wait: the same service, the users' polls waiting for a change
           (?wait=&since=, bench/users.py) instead of asking every second. Not in the
           default modes: `--modes design,design-wait` (or --compare-wait) puts it side by
           side with design at the same users and workload.
- direct:  the same service pointed straight at PostgreSQL with the original write-up's pool sizes
           (10 kept + 10 overflow = min 10, max 20 per process): what PgBouncer buys.
- pgbench: the database's ceiling for the same statements through PgBouncer.
Each service mode starts on an empty tasks table with fresh API and worker processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import os
import platform
import resource
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
from prometheus_client.parser import text_string_to_metric_families
from psycopg.conninfo import conninfo_to_dict

from bench import pgbench, readpath, restart, sampler, services, stats
from bench.users import UserLoad, UserOptions
from ops.stack import Stack
from pgbouncer import render
from service.settings import Settings

MODES = ("design", "design-wait", "direct", "pgbench")
DEFAULT_MODES = ("design", "direct", "pgbench")
# The modes whose users wait for changes instead of polling every second.
WAIT_MODES = ("design-wait",)
THROUGH_PGBOUNCER = ("design", "design-wait")
DEFAULT_POOL_SIZE = int(render.SETTINGS["default_pool_size"][0])
# The original write-up's SQLAlchemy pool: pool_size=10, max_overflow=10.
WRITE_UP_POOL_MIN, WRITE_UP_POOL_MAX = 10, 20
DRAIN_POLL_S = 0.5
DRAIN_MAX_S = 1800.0
RECOMMENDED_API_PROCESSES = 2
RECOMMENDED_APP_POOL_MAX = 8
TERMINAL = ("completed", "failed")
# The drain gives tasks started at the end of the users' run at least their own length
# and this much more.
DRAIN_MARGIN_S = 30.0
# Open files beyond one per user: PgBouncer/metrics connections, logs, the sampler.
SPARE_FILES = 512
SCRAPE_TIMEOUT_S = 3.0
# The targets of issue "Ten thousand waiting users": waiting polls at 10,000 users for
# 120 s, and at 1,500 users at least 5 times fewer requests than polling every second.
WAIT_TARGET_USERS, WAIT_TARGET_DURATION_S = 10_000, 120.0
CHANGE_DELAY_P99_TARGET_MS = 1000.0
FEWER_REQUESTS_USERS, FEWER_REQUESTS_RATIO = 1500, 5.0


@dataclass(frozen=True)
class Options:
    users: int = 1000
    duration_s: float = 60.0
    ramp_fraction: float = 0.1
    modes: tuple[str, ...] = DEFAULT_MODES
    part_seconds: float = 2.0
    # The video lengths users ask for; several: in turn (bench/users.py, video_mix).
    video_seconds: tuple[int, ...] = (10,)
    # What the users of a wait mode ask for (?wait=); the server caps it at
    # PROGRESS_WAIT_MAX_S (25 s by default).
    wait_s: float = 25.0
    # The deployment the published figures are for: two API processes on two cores,
    # each with a pool of 8 client connections to PgBouncer (see bench/README.md).
    api_processes: int = RECOMMENDED_API_PROCESSES
    workers: int = 1
    # None: as many tasks at once as there are users, so that no task waits in the queue.
    worker_concurrency: int | None = None
    pool_size: int = DEFAULT_POOL_SIZE
    # None (--app-pool-max 0): the service's own default (APP_POOL_MAX).
    app_pool_max: int | None = RECOMMENDED_APP_POOL_MAX
    readpath_s: int = 15
    readpath_connections: int = 200
    seed_rows: int = 10_000
    pgbench_s: int = 10
    # 10 = default_pool_size (one server connection per client); 32 lets PgBouncer queue.
    pgbench_clients: tuple[int, ...] = (10, 32)
    # Seconds PgBouncer stays down in each restart probe; empty: no probe.
    restart_downtimes: tuple[float, ...] = (0.0, 3.0)
    drain_timeout_s: float = 60.0
    find_capacity: bool = False
    capacity_steps: tuple[int, ...] = (200, 300, 500, 700, 1000)
    capacity_duration_s: float = 60.0
    capacity_stop_at_failure: bool = True
    service_log_level: str = "INFO"
    out: Path = Path("bench/results/latest")

    @property
    def ramp_s(self) -> float:
        return self.duration_s * self.ramp_fraction


def run(options: Options, log=print) -> dict[str, Any]:
    started = time.time()
    open_files = raise_open_files(options)
    results: dict[str, Any] = {"meta": machine_and_versions(options), "modes": {}}
    root = Path(tempfile.mkdtemp(prefix="video-tasks-bench-", dir="/tmp"))
    files = Path(tempfile.mkdtemp(prefix="video-tasks-bench-files-", dir=_tmpfs_dir()))
    stack = services.make_stack(root, pool_size=options.pool_size, pgbouncer_env={},
                                files_dir=files)
    options.out.mkdir(parents=True, exist_ok=True)
    try:
        log(f"bench: starting PostgreSQL and PgBouncer in {root}")
        stack.up(app=False, log=lambda _m: None)
        results["meta"]["pgbouncer"] = services.pgbouncer_pool_settings(stack)
        results["meta"]["versions"].update(server_versions(stack))
        for mode in options.modes:
            log(f"bench: mode {mode}")
            if mode == "pgbench":
                results["modes"]["pgbench"] = run_pgbench(stack, options, log)
            else:
                results["modes"][mode] = run_service_mode(
                    stack, options, mode=mode, users=options.users,
                    duration_s=options.duration_s, extras=True, log=log)
        if options.find_capacity:
            from bench import capacity
            results["capacity"] = capacity.search(stack, options, log)
    finally:
        _save_logs(stack, options.out)
        stack.down(log=lambda _m: None)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(files, ignore_errors=True)
    results["meta"]["open_files_limit"] = open_files
    results["meta"]["load_after"] = _loadavg()
    results["meta"]["wall_s"] = round(time.time() - started, 1)
    results["targets"] = evaluate_targets(results, options)
    return results


def service_overrides(stack: Stack, options: Options, *, mode: str,
                      users: int) -> dict[str, Any]:
    overrides: dict[str, Any] = {
        "video_provider": "simulated",
        "simulated_part_s": options.part_seconds,
        "api_processes": options.api_processes,
        "worker_concurrency": options.worker_concurrency or max(users, 4),
        "log_level": options.service_log_level,
        # Every simulated user comes from 127.0.0.1, which the per-user cap on waiting
        # polls counts as one user (as make_stack does for the create limits).
        "progress_waiters_per_user": 0,
    }
    if options.app_pool_max is not None:
        overrides["app_pool_max"] = options.app_pool_max
    if mode == "direct":
        overrides.update(database_url=stack.settings.database_direct_url,
                         app_pool_min=WRITE_UP_POOL_MIN, app_pool_max=WRITE_UP_POOL_MAX)
    return overrides


def run_service_mode(stack: Stack, options: Options, *, mode: str, users: int,
                     duration_s: float, extras: bool, log=print) -> dict[str, Any]:
    services.reset_tasks(stack)
    overrides = service_overrides(stack, options, mode=mode, users=users)
    svc = services.Service(stack, overrides)
    svc.start(workers=options.workers, tag=f"{mode}-{users}")
    ramp_s = duration_s * options.ramp_fraction
    wait_s = options.wait_s if mode in WAIT_MODES else None
    result: dict[str, Any] = {
        "mode": mode, "users": users, "duration_s": duration_s, "ramp_s": ramp_s,
        "wait_s": wait_s,
        "service": {k: v for k, v in overrides.items() if k != "database_url"},
        "database": "PgBouncer" if mode in THROUGH_PGBOUNCER else "PostgreSQL (direct)",
    }
    try:
        how = f"waiting polls (wait={wait_s:g} s)" if wait_s else "polling every second"
        log(f"bench:   {users} users for {duration_s:.0f} s, {how} (API {svc.url})")
        user_opts = UserOptions(users=users, duration_s=duration_s, ramp_s=ramp_s,
                                video_seconds=options.video_seconds[0],
                                video_mix=options.video_seconds, wait_s=wait_s)
        rec, samples = _run_async(_users_and_samples(stack, svc, user_opts))
        # The API's own count of how waiting polls ended (changed, timeout, capped, ...).
        result["server_waits"] = server_waits(svc)
        result["users_summary"] = stats.summarize_users(rec, duration_s=duration_s,
                                                        ramp_s=ramp_s)
        result["timeline"] = stats.timeline(rec, duration_s)
        result["connections"] = stats.summarize_samples(samples, options.pool_size)
        result["samples"] = samples
        result["service_processes_alive_after"] = all(p.alive() for p in svc.processes)
        log("bench:   waiting for the started tasks to finish")
        result["tasks_after_drain"] = drain(stack, list(rec.tasks), drain_timeout_s(options))
        # The read path is plain polls: the same service in design and design-wait.
        if extras and options.readpath_s > 0 and mode not in WAIT_MODES:
            result["readpath"] = run_readpath(stack, svc, options, log)
        if extras and options.restart_downtimes and mode == "design":
            ids = services.seed(stack, 100)
            result["pgbouncer_restarts"] = []
            for down_for_s in options.restart_downtimes:
                log(f"bench:   PgBouncer stopped for {down_for_s:g} s and started again "
                    f"while {restart.POLLERS} clients poll")
                result["pgbouncer_restarts"].append(_run_async(restart.probe(
                    stack, svc.api_port, ids, down_for_s=down_for_s)))
    finally:
        logs = [p.log_path for p in svc.processes]
        svc.stop()
        result["service_log_problems"] = _log_problems(logs)
    return result


async def _users_and_samples(stack: Stack, svc: services.Service,
                             user_opts: UserOptions) -> tuple[Any, list[dict[str, Any]]]:
    direct = conninfo_to_dict(stack.settings.database_direct_url)
    service_pids = svc.pids()
    api_pids = [p for p in service_pids if _cmd_has(p, "service api")]
    worker_pids = [p for p in service_pids if _cmd_has(p, "service worker")]

    def component_pids() -> dict[str, list[int]]:
        postmaster = stack.postgres_pid()
        pgb = stack.pgbouncer_pid()
        return {
            "api": api_pids,
            "worker": worker_pids,
            "pgbouncer": [pgb] if pgb else [],
            "postgres": ([postmaster, *sampler.children(postmaster)] if postmaster else []),
            "bench": [os.getpid()],
        }

    sample = sampler.Sampler(
        superuser_conninfo=stack.superuser_url(str(direct["dbname"])),
        admin_url=stack.settings.pgbouncer_admin_url, app_user=str(direct["user"]),
        app_db=str(direct["dbname"]), metrics_urls=svc.metrics_urls(),
        component_pids=component_pids)
    load = UserLoad("127.0.0.1", svc.api_port, user_opts)
    rec, samples = await asyncio.gather(load.run(), sample.run(user_opts.duration_s))
    return rec, samples


def _cmd_has(pid: int, text: str) -> bool:
    try:
        return text in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False


def drain_timeout_s(options: Options) -> float:
    """The drain's timeout: at least the longest task (parts x part time) plus a margin,
    so that a long simulated video still in flight when the users stop is not "stuck"."""
    parts = math.ceil(max(options.video_seconds) / Settings().part_seconds)
    return max(options.drain_timeout_s, parts * options.part_seconds + DRAIN_MARGIN_S)


def server_waits(svc: services.Service) -> dict[str, Any]:
    """video_tasks_api_progress_waits_total by outcome, summed over the API processes
    (empty when the service has no waiting polls)."""
    outcomes: dict[str, float] = {}
    scraped = 0
    for name, url in svc.metrics_urls().items():
        if not name.startswith("api-"):
            continue
        try:
            with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as resp:
                text = resp.read().decode()
        except (OSError, ValueError):
            continue
        scraped += 1
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "video_tasks_api_progress_waits_total":
                    outcome = sample.labels.get("outcome", "")
                    outcomes[outcome] = outcomes.get(outcome, 0) + int(sample.value)
    return {"processes_scraped": scraped, "outcomes": outcomes}


def raise_open_files(options: Options) -> dict[str, int]:
    """Raise this process's soft limit on open files to its hard limit (the API and
    worker processes inherit it): each user holds a connection here and one in an API
    process. Fails at once when even the hard limit is too low for the users."""
    users = max([options.users, *options.capacity_steps] if options.find_capacity
                else [options.users])
    needed = users + SPARE_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An unlimited hard limit still has the kernel's nr_open above it: ask for what is needed.
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft != wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise SystemExit(f"bench: {users} users need about {needed} open files per "
                         f"process, the hard limit is {hard}: raise it (ulimit -Hn, or "
                         f"LimitNOFILE / limits.conf) or run fewer users")
    return {"soft": soft, "hard": hard, "needed": needed}


def drain(stack: Stack, task_ids: list[str], timeout_s: float) -> dict[str, Any]:
    """Wait until every task the users created is terminal; count lost and stuck ones.

    The wait goes on while tasks keep finishing (a queue of pending tasks behind a worker
    of bounded concurrency drains at its own pace), and gives up once none has finished
    for timeout_s, or after DRAIN_MAX_S in all."""
    started = last_progress = time.monotonic()
    counts: dict[str, int] = {}
    finished = -1
    with services.superuser_connect(stack) as conn:
        while True:
            rows = conn.execute(
                "SELECT status, count(*) FROM video_generation_tasks "
                "WHERE task_id = ANY(%s::uuid[]) GROUP BY status", [task_ids]).fetchall()
            counts = {status: n for status, n in rows}
            unfinished = sum(n for s, n in counts.items() if s not in TERMINAL)
            now = time.monotonic()
            if sum(counts.values()) - unfinished > finished:
                finished, last_progress = sum(counts.values()) - unfinished, now
            if (unfinished == 0 or now - last_progress > timeout_s
                    or now - started > DRAIN_MAX_S):
                break
            time.sleep(DRAIN_POLL_S)
    found = sum(counts.values())
    return {
        "tasks": len(task_ids),
        "by_status": counts,
        # Answered 202 but no row: the create was acknowledged and then lost.
        "lost": len(task_ids) - found,
        # Not completed or failed when the drain gave up (no task finished for
        # timeout_s, or DRAIN_MAX_S passed).
        "stuck": sum(n for s, n in counts.items() if s not in TERMINAL),
        "timeout_s": timeout_s,
        "failed": counts.get("failed", 0),
        "drain_s": round(time.monotonic() - started, 1),
    }


def run_readpath(stack: Stack, svc: services.Service, options: Options,
                 log=print) -> dict[str, Any]:
    if not readpath.wrk_available():
        log("bench:   wrk not found (apt-get install wrk): read path skipped")
        return {"skipped": "wrk not installed"}
    ids = services.seed(stack, options.seed_rows)
    script = readpath.write_script(options.out / "get_progress.lua", ids)
    log(f"bench:   read path: wrk, {options.readpath_connections} connections, "
        f"{options.readpath_s} s")
    readpath.run_wrk(svc.url, script, connections=options.readpath_connections,
                     duration_s=2)  # warm-up
    before = services.pgbouncer_totals(stack)
    result = readpath.run_wrk(svc.url, script, connections=options.readpath_connections,
                              duration_s=options.readpath_s)
    after = services.pgbouncer_totals(stack)
    result["rows"] = len(ids)
    if svc.overrides.get("database_url") is None and result["requests"]:
        # Through PgBouncer, its counters show how many statements a request costs
        # (the idle worker's claim polls add a few).
        result["statements_per_request"] = round(
            (after["query"] - before["query"]) / result["requests"], 3)
        result["transactions_per_request"] = round(
            (after["xact"] - before["xact"]) / result["requests"], 3)
    return result


def run_pgbench(stack: Stack, options: Options, log=print) -> dict[str, Any]:
    services.reset_tasks(stack)
    services.seed(stack, options.seed_rows)
    out = options.out
    select = out / "pgbench_select.sql"
    insert = out / "pgbench_insert.sql"
    select.write_text(pgbench.select_script(options.seed_rows))
    insert.write_text(pgbench.insert_script())
    via = stack.settings.database_url
    runs: dict[str, list[dict[str, Any]]] = {"select": [], "insert": [], "select_direct": []}
    for clients in options.pgbench_clients:
        log(f"bench:   pgbench SELECT and INSERT, {clients} clients, {options.pgbench_s} s each")
        runs["select"].append(pgbench.run(select, conninfo=via, clients=clients,
                                          duration_s=options.pgbench_s))
        runs["insert"].append(pgbench.run(insert, conninfo=via, clients=clients,
                                          duration_s=options.pgbench_s))
    # For reference: the same SELECT without PgBouncer in the path.
    runs["select_direct"].append(pgbench.run(
        select, conninfo=stack.settings.database_direct_url,
        clients=options.pgbench_clients[0], duration_s=options.pgbench_s))
    services.reset_tasks(stack)
    best = {name: max(r["tps"] for r in rs) for name, rs in runs.items() if rs}
    return {"runs": runs, "select_tps": best["select"], "insert_tps": best["insert"],
            "select_direct_tps": best["select_direct"]}


def evaluate_targets(results: dict[str, Any], options: Options) -> dict[str, Any]:
    """The issue's targets, each with the figure and whether this run met it."""
    targets: dict[str, Any] = {}
    design = results["modes"].get("design")
    if design:
        summary = design["users_summary"]
        progress = summary["endpoints"]["GET /api/progress/{id}"]
        drained = design["tasks_after_drain"]
        conns = design["connections"]
        errors_ok = (summary["client_errors"] == 0 and summary["other_error_responses"] == 0
                     and summary["unavailable_503_without_retry_after"] == 0
                     and summary["unavailable_503_share"] < 0.001)
        targets["users_run"] = {
            "users": design["users"], "duration_s": design["duration_s"],
            "counts_for_target": design["users"] >= 1000 and design["duration_s"] >= 60,
            "progress_p99_ms": progress["p99_ms"], "progress_p99_target_ms": 1500,
            "errors_only_rare_503": errors_ok,
            "unavailable_503_share": summary["unavailable_503_share"],
            "lost": drained["lost"], "stuck": drained["stuck"],
            "pg_app_connections_max": conns["pg_app_connections_max"],
            "pool_size": conns["pgbouncer_default_pool_size"],
            "met": bool(errors_ok and drained["lost"] == 0 and drained["stuck"] == 0
                        and progress["p99_ms"] is not None and progress["p99_ms"] < 1500
                        and conns["pg_app_connections_within_pool_size"]),
        }
        ceiling = results["modes"].get("pgbench", {}).get("select_tps")
        rps = design.get("readpath", {}).get("requests_per_s")
        if ceiling and rps:
            targets["read_path"] = {"requests_per_s": rps, "pgbench_select_tps": ceiling,
                                    "fraction": round(rps / ceiling, 3), "target": 0.4,
                                    "met": rps / ceiling >= 0.4}
        if ceiling:
            targets["users_run"]["requests_per_s_fraction_of_pgbench_select"] = round(
                summary["requests_per_s"] / ceiling, 3)
        probes = design.get("pgbouncer_restarts") or []
        if probes:
            recoveries = [p["recovery_s"] for p in probes]
            worst = None if None in recoveries else max(recoveries)
            targets["pgbouncer_restart"] = {
                "recovery_s_by_downtime": {str(p["kept_down_s"]): p["recovery_s"]
                                           for p in probes},
                "target_s": 1.0, "met": worst is not None and worst <= 1.0}
    targets.update(_wait_targets(results))
    capacity = results.get("capacity")
    if capacity:
        targets["capacity"] = {"users": capacity["capacity_users"], "target": 500,
                               "step_duration_s": capacity["step_duration_s"],
                               "met": (capacity["capacity_users"] or 0) >= 500}
    return targets


def _wait_targets(results: dict[str, Any]) -> dict[str, Any]:
    """Waiting polls: no error, nothing lost or stuck, change-to-client delay p99 under
    1 s, server connections within default_pool_size; and, beside polling every second
    at the same users and workload, at least 5 times fewer requests."""
    targets: dict[str, Any] = {}
    wait = results["modes"].get("design-wait")
    if not wait:
        return targets
    summary = wait["users_summary"]
    drained = wait["tasks_after_drain"]
    conns = wait["connections"]
    delay = summary["change_delay"]
    errors = (summary["client_errors"] + summary["other_error_responses"]
              + summary["unavailable_503"])
    within = conns["pg_app_connections_within_pool_size"]
    targets["waiting_polls"] = {
        "users": wait["users"], "duration_s": wait["duration_s"],
        "counts_for_target": (wait["users"] >= WAIT_TARGET_USERS
                              and wait["duration_s"] >= WAIT_TARGET_DURATION_S),
        "errors": errors, "lost": drained["lost"], "stuck": drained["stuck"],
        "changes_seen": delay["changes_seen"],
        "change_delay_p50_ms": delay["p50_ms"], "change_delay_p99_ms": delay["p99_ms"],
        "change_delay_p99_target_ms": CHANGE_DELAY_P99_TARGET_MS,
        "pg_app_connections_max": conns["pg_app_connections_max"],
        "pool_size": conns["pgbouncer_default_pool_size"],
        "server_capped": wait.get("server_waits", {}).get("outcomes", {}).get("capped", 0),
        "met": bool(errors == 0 and drained["lost"] == 0 and drained["stuck"] == 0
                    and delay["p99_ms"] is not None
                    and delay["p99_ms"] < CHANGE_DELAY_P99_TARGET_MS and within),
    }
    plain = results["modes"].get("design")
    if (plain and plain["users"] == wait["users"]
            and plain["duration_s"] == wait["duration_s"]):
        asked, waited = plain["users_summary"]["requests"], summary["requests"]
        ratio = round(asked / waited, 2) if waited else None
        targets["fewer_requests"] = {
            "users": wait["users"], "duration_s": wait["duration_s"],
            "counts_for_target": wait["users"] >= FEWER_REQUESTS_USERS,
            "requests_polling_every_second": asked, "requests_waiting": waited,
            "ratio": ratio, "target_ratio": FEWER_REQUESTS_RATIO,
            "met": ratio is not None and ratio >= FEWER_REQUESTS_RATIO,
        }
    return targets


# --- helpers -------------------------------------------------------------------------

def _run_async(coro):
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _tmpfs_dir() -> str:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else tempfile.gettempdir()


def _loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def machine_and_versions(options: Options) -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        mem_gb = round(mem_kb / 1024 / 1024, 1)
    import aiohttp
    import orjson
    import psycopg_pool
    versions = {"python": platform.python_version(), "aiohttp": aiohttp.__version__,
                "psycopg": psycopg.__version__, "psycopg_pool": psycopg_pool.__version__,
                "orjson": orjson.__version__}
    with contextlib.suppress(ImportError):
        import uvloop
        versions["uvloop"] = uvloop.__version__
    for name, argv in {"pgbouncer": ["pgbouncer", "-V"], "wrk": ["wrk", "-v"],
                       "pgbench": ["pgbench", "-V"]}.items():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(argv, capture_output=True, text=True, timeout=5)
            versions[name] = (out.stdout or out.stderr).strip().splitlines()[0]
    opts = asdict(options)
    opts["out"] = str(options.out)
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"nproc": os.cpu_count(), "cpu_model": cpu_model, "memory_gb": mem_gb,
                    "kernel": platform.release(), "load_before": _loadavg()},
        "versions": versions,
        "options": opts,
    }


def server_versions(stack: Stack) -> dict[str, str]:
    with services.superuser_connect(stack) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return {"postgresql": row[0] if row else ""}


def _save_logs(stack: Stack, out: Path) -> None:
    dest = out / "logs"
    dest.mkdir(parents=True, exist_ok=True)
    for path in stack.log_dir.glob("*.log"):
        with contextlib.suppress(OSError):
            shutil.copy(path, dest / path.name)
    pgb_log = stack.run_dir / "pgbouncer.log"
    if pgb_log.exists():
        with contextlib.suppress(OSError):
            shutil.copy(pgb_log, dest / "pgbouncer.log")


def _log_problems(logs: list[Path]) -> dict[str, int]:
    """ERROR lines and tracebacks the service logged during the mode."""
    counts = {"error_lines": 0, "tracebacks": 0}
    for p in logs:
        with contextlib.suppress(OSError):
            for line in p.read_text(errors="replace").splitlines():
                if " ERROR " in line or " CRITICAL " in line:
                    counts["error_lines"] += 1
                elif line.startswith("Traceback"):
                    counts["tracebacks"] += 1
    return counts
