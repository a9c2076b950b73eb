"""Rehearse many hosts: two PgBouncers, three APIs, three workers; kill one of each kind.

Two PgBouncers in front of one PostgreSQL (two pooler pods), three API processes and
three workers with work directories of their own, under load; mid-run one PgBouncer and
one worker are killed with SIGKILL.

    python -m bench rehearsal                                  # both routings, ~100 s
    python -m bench rehearsal --routing pinned --users 30 --duration 15

Placement, as pods spread over two pooler pods: process i uses PgBouncer i % 2, so
PgBouncer A serves api-0, api-2, worker-0 and worker-2, and B serves api-1 and worker-1.
A and worker-0 are killed at the same moment; A is started again after --bouncer-down
seconds (Kubernetes restarting the pod); worker-0 stays dead (its pod gone for good).

Routings (one round each, on an empty tasks table with fresh processes):
- pinned: each process's DATABASE_URL names its own PgBouncer. The processes on A can
  only answer 503 (with Retry-After) until A is back; the ones on B do not notice.
- multihost: DATABASE_URL lists both, its own first (postgresql://u@a:pa,b:pb/db).
  psycopg tries the hosts in turn for each new connection, so a dead PgBouncer is
  skipped; connections that moved to B stay there until the pool recycles them.

What it checks (the exit code is 1 when any check fails):
- the bound: PostgreSQL never sees more server connections of the app's role than
  2 x default_pool_size, and each PgBouncer never more than default_pool_size (the
  reserve pool is off here, so the bound is exact: with PGBOUNCER_RESERVE_POOL_SIZE=r it
  is 2 x (default_pool_size + r));
- no loss: every task a user got a 202 for, and every row in the table, is completed by
  exactly one claim with no claim left open, and has all its parts stored once;
- the rescue: the killed worker held tasks; their leases expired, the other workers
  finished them, and no part that had been stored was rendered again (a part rendered
  twice is one that was in flight on a claim that expired);
- every request got an HTTP answer and every process but the killed worker is still up.

Sampled every SAMPLE_INTERVAL_S: pg_stat_activity (server connections of the app's
role, from both PgBouncers) and each PgBouncer's SHOW POOLS, with bench/sampler.py.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as dt
import json
import shutil
import signal
import sys
import tempfile
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from bench import restart, sampler, services, stats
from bench import run as bench_run
from bench.users import CLIENT_ERROR, PROGRESS, Recording, UserLoad, UserOptions
from ops import procs
from ops.ports import free_port
from ops.procs import START_TIMEOUT_S, ServiceProcess
from ops.stack import Stack

ROUTINGS = ("pinned", "multihost")
BOUNCERS = ("A", "B")
SAMPLE_INTERVAL_S = 0.25
DRAIN_POLL_S = 0.5
# The killed worker must hold tasks for the rescue to be shown: wait this long for one.
VICTIM_WAIT_S = 10.0
TERMINAL = ("completed", "failed")
SERVER_COLUMNS = ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login")


@dataclass(frozen=True)
class Options:
    users: int = 150
    duration_s: float = 45.0
    routings: tuple[str, ...] = ROUTINGS
    pool_size: int = 5
    apis: int = 3
    workers: int = 3
    part_seconds: float = 1.0
    video_seconds: int = 10
    # When in the run PgBouncer A and worker-0 are killed, and how long A stays down.
    kill_at_fraction: float = 0.3
    bouncer_down_s: float = 4.0
    # Longer than the outage, so that the workers cut off with A keep their claims; the
    # killed worker's tasks go back to pending after about this (plus the rescuer's 5 s).
    lease_s: float = 10.0
    heartbeat_interval_s: float = 1.0
    drain_timeout_s: float = 90.0
    service_log_level: str = "INFO"
    out: Path = Path("bench/results/rehearsal")


@dataclass
class Proc:
    name: str
    bouncer: str
    port: int
    handle: ServiceProcess


@dataclass
class Round:
    """What one routing's round started, and when its fault happened (perf_counter)."""

    routing: str
    apis: list[Proc] = field(default_factory=list)
    api_users: list[int] = field(default_factory=list)
    workers: list[Proc] = field(default_factory=list)
    started: float = 0.0
    killed: float = 0.0
    killed_wall: float = 0.0
    gone: float = 0.0
    back: float = 0.0
    back_wall: float = 0.0
    victim_tasks_at_kill: int = 0


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)
    results = run(options)
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    text = summary(results)
    (options.out / "summary.md").write_text(text)
    print(text)
    print(f"written: {options.out / 'results.json'}, {options.out / 'summary.md'}")
    return 0 if results["ok"] else 1


def parse(argv: list[str] | None = None) -> Options:
    d = Options()
    p = argparse.ArgumentParser(prog="python -m bench rehearsal",
                                description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=d.users,
                   help="users in all, spread evenly over the APIs (%(default)s)")
    p.add_argument("--duration", type=float, default=d.duration_s,
                   help="seconds the users run in each round (%(default)s)")
    p.add_argument("--routing", default=",".join(d.routings),
                   help="comma-separated rounds: pinned,multihost (both)")
    p.add_argument("--pool-size", type=int, default=d.pool_size,
                   help="default_pool_size of each PgBouncer (%(default)s)")
    p.add_argument("--part-seconds", type=float, default=d.part_seconds)
    p.add_argument("--video-seconds", type=int, default=d.video_seconds,
                   help="duration the users ask for; parts = ceil(it / 5) (%(default)s)")
    p.add_argument("--kill-at", type=float, default=d.kill_at_fraction,
                   help="share of the run after which A and worker-0 die (%(default)s)")
    p.add_argument("--bouncer-down", type=float, default=d.bouncer_down_s,
                   help="seconds PgBouncer A stays down (%(default)s)")
    p.add_argument("--lease", type=float, default=d.lease_s,
                   help="LEASE_S of the workers (%(default)s)")
    p.add_argument("--drain-timeout", type=float, default=d.drain_timeout_s)
    p.add_argument("--service-log-level", default=d.service_log_level)
    p.add_argument("--out", type=Path, default=None,
                   help="output directory (bench/results/rehearsal-<UTC time>)")
    a = p.parse_args(argv)
    routings = tuple(r.strip() for r in a.routing.split(",") if r.strip())
    if not routings or set(routings) - set(ROUTINGS):
        p.error(f"--routing: choose from {','.join(ROUTINGS)}")
    if a.users < d.apis or a.duration <= 0 or a.pool_size < 1:
        p.error(f"--users must be at least {d.apis}; --duration and --pool-size positive")
    if a.lease <= d.heartbeat_interval_s:
        p.error(f"--lease must be longer than the heartbeat ({d.heartbeat_interval_s} s)")
    out = a.out or Path("bench/results") / ("rehearsal-" + dt.datetime.now(dt.UTC).strftime(
        "%Y%m%dT%H%M%SZ"))
    return Options(users=a.users, duration_s=a.duration, routings=routings,
                   pool_size=a.pool_size, part_seconds=a.part_seconds,
                   video_seconds=a.video_seconds, kill_at_fraction=a.kill_at,
                   bouncer_down_s=a.bouncer_down, lease_s=a.lease,
                   drain_timeout_s=a.drain_timeout, service_log_level=a.service_log_level,
                   out=out.resolve())


# --- the stack: one PostgreSQL, two PgBouncers ---------------------------------------

def second_bouncer(stack: Stack, root: Path) -> Stack:
    """A Stack object used for its PgBouncer only: the same PGBOUNCER_* configuration and
    PostgreSQL as `stack`, its own port and run directory. Its PostgreSQL is never
    started: both PgBouncers point at `stack`'s."""
    settings = stack.settings.replace(pgbouncer_port=free_port(), database_url="",
                                      pgbouncer_admin_url="")
    return Stack(root=root, settings=settings, env=stack.env, python=stack.python)


def database_url(bouncers: dict[str, Stack], own: str, routing: str) -> str:
    url = bouncers[own].settings.database_url
    if routing == "pinned":
        return url
    # Its own PgBouncer first, the other as the fallback (libpq's multi-host URL).
    order = [own] + [name for name in bouncers if name != own]
    parts = urllib.parse.urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    hosts = ",".join(f"127.0.0.1:{bouncers[name].settings.pgbouncer_port}" for name in order)
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{userinfo}@{hosts}"))


def reset(stack: Stack, bouncers: dict[str, Stack]) -> None:
    """An empty tasks table (parts and attempts go with it) and no server connection
    left over from the round before, on either PgBouncer."""
    services.reset_tasks(stack)  # also KILL/RESUME on PgBouncer A (the stack's own)
    db = conninfo_to_dict(stack.settings.database_url)["dbname"]
    for bouncer in bouncers.values():
        if bouncer is stack:
            continue
        with psycopg.connect(bouncer.settings.pgbouncer_admin_url, autocommit=True,
                             cursor_factory=psycopg.ClientCursor) as admin:
            admin.execute(f"KILL {db}")
            admin.execute(f"RESUME {db}")


def run(options: Options, log: Any = print) -> dict[str, Any]:
    started = time.time()
    results: dict[str, Any] = {"meta": meta(options), "rounds": {}}
    root = Path(tempfile.mkdtemp(prefix="video-tasks-rehearsal-", dir="/tmp"))
    # Both stacks live below it: PgBouncer and PostgreSQL (another user) must reach them.
    root.chmod(0o755)
    files = Path(tempfile.mkdtemp(prefix="video-tasks-rehearsal-files-",
                                  dir=bench_run._tmpfs_dir()))
    stack = services.make_stack(root / "a", pool_size=options.pool_size, files_dir=files,
                                pgbouncer_env={"PGBOUNCER_RESERVE_POOL_SIZE": "0"})
    bouncer_b = second_bouncer(stack, root / "b")
    bouncers = {"A": stack, "B": bouncer_b}
    try:
        log(f"rehearsal: PostgreSQL and PgBouncer A in {root / 'a'}")
        stack.up(app=False, log=lambda _m: None)
        bouncer_b.layout.prepare()
        bouncer_b.start_pgbouncer(lambda _m: None)
        log(f"rehearsal: PgBouncer A on {stack.settings.pgbouncer_port}, B on "
            f"{bouncer_b.settings.pgbouncer_port}, both to PostgreSQL on "
            f"{stack.settings.postgres_port}")
        results["meta"]["pgbouncer"] = services.pgbouncer_pool_settings(stack)
        results["meta"]["versions"].update(bench_run.server_versions(stack))
        for routing in options.routings:
            log(f"rehearsal: round {routing}")
            results["rounds"][routing] = run_round(stack, bouncers, options, routing,
                                                   files / routing, log)
    finally:
        _save_logs(bouncers, options.out)
        with contextlib.suppress(procs.StackError):
            bouncer_b.stop_pgbouncer(lambda _m: None)
        stack.down(log=lambda _m: None)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(files, ignore_errors=True)
    results["meta"]["wall_s"] = round(time.time() - started, 1)
    results["meta"]["load_after"] = bench_run._loadavg()
    results["ok"] = bool(results["rounds"]) and all(
        r["ok"] for r in results["rounds"].values())
    return results


def meta(options: Options) -> dict[str, Any]:
    found = bench_run.machine_and_versions(bench_run.Options(out=options.out))
    found["options"] = {**asdict(options), "out": str(options.out)}
    # psycopg's libpq (the binary wheel bundles its own): multi-host URLs need no
    # particular version, since psycopg tries the hosts itself.
    found["versions"]["libpq"] = psycopg.pq.version()
    found["versions"]["psycopg_impl"] = psycopg.pq.__impl__
    return found


# --- one round -----------------------------------------------------------------------

def run_round(stack: Stack, bouncers: dict[str, Stack], options: Options, routing: str,
              files: Path, log: Any) -> dict[str, Any]:
    reset(stack, bouncers)
    render_log = files / "renders.log"
    files.mkdir(parents=True, exist_ok=True)
    rnd = Round(routing)
    try:
        start_processes(stack, bouncers, options, rnd, files, render_log)
        log(f"rehearsal:   {options.users} users on {len(rnd.apis)} APIs for "
            f"{options.duration_s:.0f} s; PgBouncer A and worker-0 die at "
            f"{options.duration_s * options.kill_at_fraction:.0f} s")
        recs, samples = bench_run._run_async(load_and_fault(stack, bouncers, options, rnd))
        log("rehearsal:   waiting for every task to finish")
        drained_s = drain(stack, options.drain_timeout_s)
        alive = {p.name: p.handle.alive() for p in (*rnd.apis, *rnd.workers[1:])}
        result = evaluate(stack, options, rnd, recs, samples, render_log, drained_s, alive)
    finally:
        everyone = [p.handle for p in (*rnd.apis, *rnd.workers)]
        procs.stop_all(everyone, timeout_s=20)
    log(f"rehearsal:   {'OK' if result['ok'] else 'FAILED: ' + '; '.join(result['failures'])}")
    return result


def start_processes(stack: Stack, bouncers: dict[str, Stack], options: Options, rnd: Round,
                    files: Path, render_log: Path) -> None:
    common = {
        "video_provider": "simulated", "simulated_part_s": options.part_seconds,
        "simulated_render_log": render_log, "api_processes": 1,
        "worker_concurrency": max(options.users, 4), "lease_s": options.lease_s,
        "heartbeat_interval_s": options.heartbeat_interval_s,
        "worker_poll_interval_s": 0.2, "log_level": options.service_log_level,
    }

    def spawn(command: str, index: int, **extra: Any) -> Proc:
        own = BOUNCERS[index % len(BOUNCERS)]
        name = f"{rnd.routing}-{command}-{index}"
        env = stack.app_env()
        values = {**common, "database_url": database_url(bouncers, own, rnd.routing), **extra}
        env.update({key.upper(): str(value) for key, value in values.items()})
        port = int(extra.get("api_port") or extra["worker_metrics_port"])
        handle = ServiceProcess.start(command, env=env, name=name,
                                      log_path=stack.log_dir / f"{name}.log", port=port)
        return Proc(name=f"{command}-{index}", bouncer=own, port=port, handle=handle)

    for i in range(options.workers):
        rnd.workers.append(spawn("worker", i, worker_metrics_port=free_port(),
                                 work_dir=files / f"work-{i}"))
    for i in range(options.apis):
        rnd.apis.append(spawn("api", i, api_port=free_port(), metrics_port=free_port()))
    for p in (*rnd.workers, *rnd.apis):
        p.handle.wait_listening(timeout_s=START_TIMEOUT_S)


async def load_and_fault(stack: Stack, bouncers: dict[str, Stack], options: Options,
                         rnd: Round) -> tuple[list[Recording], list[dict[str, Any]]]:
    rnd.api_users = [options.users // len(rnd.apis) + (i < options.users % len(rnd.apis))
                     for i in range(len(rnd.apis))]
    loads = [UserLoad("127.0.0.1", api.port, UserOptions(
        users=n, duration_s=options.duration_s, ramp_s=options.duration_s * 0.1,
        video_seconds=options.video_seconds))
        for api, n in zip(rnd.apis, rnd.api_users, strict=True)]
    stop = asyncio.Event()
    samples: list[dict[str, Any]] = []
    rnd.started = time.perf_counter()
    sampling = asyncio.create_task(sample(stack, bouncers, rnd, stop, samples))
    try:
        recs, _ = await asyncio.gather(asyncio.gather(*(load.run() for load in loads)),
                                       fault(stack, bouncers["A"], options, rnd))
    finally:
        stop.set()
        await sampling
    # Each recording's times are from its own start: shift them onto the round's clock.
    for load, rec in zip(loads, recs, strict=True):
        shift = load.perf_started - rnd.started
        for i in range(len(rec.ended_s)):
            rec.ended_s[i] += shift
    return list(recs), samples


async def fault(stack: Stack, bouncer: Stack, options: Options, rnd: Round) -> None:
    await asyncio.sleep(options.duration_s * options.kill_at_fraction)
    victim = rnd.workers[0]
    deadline = time.monotonic() + VICTIM_WAIT_S
    while True:
        held = await asyncio.to_thread(tasks_held, stack, victim.handle.pid)
        if held or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    rnd.victim_tasks_at_kill = held
    rnd.killed, rnd.killed_wall = time.perf_counter(), time.time()
    victim.handle.signal(signal.SIGKILL)
    # SIGKILL, then wait until the process is gone and its port closed.
    await asyncio.to_thread(bouncer.stop_pgbouncer, lambda _m: None, sig=signal.SIGKILL)
    rnd.gone = time.perf_counter()
    await asyncio.sleep(options.bouncer_down_s)
    await asyncio.to_thread(bouncer.start_pgbouncer, lambda _m: None)
    rnd.back, rnd.back_wall = time.perf_counter(), time.time()


def tasks_held(stack: Stack, pid: int) -> int:
    with services.superuser_connect(stack) as conn:
        row = conn.execute("SELECT count(*) FROM video_generation_tasks WHERE worker_id LIKE %s",
                           [f"%:{pid}:%"]).fetchone()
    return int(row[0]) if row else 0


async def sample(stack: Stack, bouncers: dict[str, Stack], rnd: Round, stop: asyncio.Event,
                 out: list[dict[str, Any]]) -> None:
    """pg_stat_activity and each PgBouncer's SHOW POOLS every SAMPLE_INTERVAL_S, with one
    bench.sampler.Sampler per PgBouncer (each also reads pg_stat_activity: two readings
    per tick, the larger counts)."""
    direct = conninfo_to_dict(stack.settings.database_direct_url)
    samplers = {name: sampler.Sampler(
        superuser_conninfo=stack.superuser_url(str(direct["dbname"])),
        admin_url=b.settings.pgbouncer_admin_url, app_user=str(direct["user"]),
        app_db=str(direct["dbname"]), metrics_urls={}, component_pids=dict)
        for name, b in bouncers.items()}
    try:
        while not stop.is_set():
            t = time.perf_counter() - rnd.started
            got = await asyncio.gather(*(s.sample_once() for s in samplers.values()))
            readings = [g["postgres"] for g in got if g["postgres"]]
            out.append({
                "t": round(t, 2),
                "postgres": max(readings, key=lambda r: r["app"]) if readings else None,
                "pgbouncer": {name: g["pgbouncer"] for name, g in zip(samplers, got,
                                                                      strict=True)},
            })
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SAMPLE_INTERVAL_S)
    finally:
        for s in samplers.values():
            await s.close()


def drain(stack: Stack, timeout_s: float) -> float:
    """Wait until no task in the table is unfinished; the seconds it took."""
    started = time.monotonic()
    with services.superuser_connect(stack) as conn:
        while time.monotonic() - started < timeout_s:
            row = conn.execute("SELECT count(*) FROM video_generation_tasks "
                               "WHERE status <> ALL(%s)", [list(TERMINAL)]).fetchone()
            if row and row[0] == 0:
                break
            time.sleep(DRAIN_POLL_S)
    return round(time.monotonic() - started, 1)


# --- what it shows -------------------------------------------------------------------

def evaluate(stack: Stack, options: Options, rnd: Round, recs: list[Recording],
             samples: list[dict[str, Any]], render_log: Path, drained_s: float,
             alive: dict[str, bool]) -> dict[str, Any]:
    failures: list[str] = []
    bound = 2 * options.pool_size
    conns = connections(samples)
    if conns["pg_app_max"] is None:
        failures.append("pg_stat_activity was never sampled")
    elif conns["pg_app_max"] > bound:
        failures.append(f"server connections {conns['pg_app_max']} > {bound}")
    for name, pool in conns["pgbouncer"].items():
        if (pool["server_max"] or 0) > options.pool_size:
            failures.append(f"PgBouncer {name}: {pool['server_max']} server connections "
                            f"> default_pool_size {options.pool_size}")
    conns["bound"] = bound
    conns["within_bound"] = not [f for f in failures if "server connections" in f]

    promised = {task_id for rec in recs for task_id in rec.tasks}
    tasks = ledger(stack, promised, render_log, victim_pid=rnd.workers[0].handle.pid,
                   killed_wall=rnd.killed_wall)
    tasks["drain_s"] = drained_s
    checks = {
        "lost": "tasks promised (202) without a row",
        "not_completed": "tasks not completed",
        "not_completed_once": "tasks not completed by exactly one claim",
        "open_claims": "claims left open",
        "parts_missing": "completed tasks without all parts stored",
        "rendered_again_after_stored": "parts rendered again after being stored",
    }
    for key, what in checks.items():
        if tasks[key]:
            failures.append(f"{tasks[key]} {what}")
    if not rnd.victim_tasks_at_kill:
        failures.append("the killed worker held no task: the rescue was not shown")
    elif tasks["victim_claims_expired"] < rnd.victim_tasks_at_kill:
        failures.append(f"{rnd.victim_tasks_at_kill - tasks['victim_claims_expired']} of the "
                        f"killed worker's {rnd.victim_tasks_at_kill} claims never expired")

    api = {}
    for proc, rec, users in zip(rnd.apis, recs, rnd.api_users, strict=True):
        entries = [(rec.ended_s[i] - rec.latency_s[i], rec.ended_s[i], rec.status[i])
                   for i in range(len(rec.status))]
        outage = restart.summarize(entries, down_s=rnd.killed - rnd.started,
                                   back_s=rnd.back - rnd.started)
        progress = [rec.latency_s[i] for i in range(len(rec.status))
                    if rec.endpoint[i] == PROGRESS and rec.status[i] == 200]
        api[proc.name] = {
            "pgbouncer": proc.bouncer, "users": users,
            "requests": outage["requests"], "failed": outage["failed_requests"],
            "failed_by_status": outage["failed_by_status"],
            "failed_sent_after_back": outage["failed_requests_sent_after_back"],
            "recovery_s": outage["recovery_s"] if outage["failed_requests"] else None,
            "unanswered": sum(1 for s in rec.status if s == CLIENT_ERROR),
            "unavailable_without_retry_after": rec.unavailable_without_retry_after,
            "progress_latency": stats.latency_summary(progress),
            "first_failure_s": outage["failures"][0][0] - outage["down_at_s"]
            if outage["failures"] else None,
        }
        if api[proc.name]["unanswered"]:
            failures.append(f"{proc.name}: {api[proc.name]['unanswered']} requests unanswered")
        if api[proc.name]["recovery_s"] is None and outage["failed_requests"]:
            failures.append(f"{proc.name} did not recover")
    for name, up in alive.items():
        if not up:
            failures.append(f"{name} exited")
    return {
        "routing": rnd.routing, "ok": not failures, "failures": failures,
        "users": options.users, "duration_s": options.duration_s,
        "placement": {p.name: p.bouncer for p in (*rnd.apis, *rnd.workers)},
        "fault": {
            "at_s": round(rnd.killed - rnd.started, 2),
            "pgbouncer_gone_after_s": round(rnd.gone - rnd.killed, 2),
            "pgbouncer_down_s": round(rnd.back - rnd.killed, 2),
            "victim": rnd.workers[0].name, "victim_tasks_at_kill": rnd.victim_tasks_at_kill,
        },
        "connections": conns, "tasks": tasks, "api": api,
        "workers": worker_figures(stack, rnd), "alive_after": alive,
        "service_log_problems": bench_run._log_problems(
            [p.handle.log_path for p in (*rnd.apis, *rnd.workers)]),
        "samples": samples,
    }


def worker_figures(stack: Stack, rnd: Round) -> dict[str, Any]:
    """Per surviving worker: tasks it completed while PgBouncer A was down, and how soon
    after A was back it completed one (from the attempts audit)."""
    with services.superuser_connect(stack) as conn:
        ended = conn.execute("SELECT worker_id, extract(epoch FROM ended_at)::float8 "
                             "FROM video_task_attempts WHERE outcome = 'completed'").fetchall()
    by_pid: dict[int, list[float]] = collections.defaultdict(list)
    for worker_id, at in ended:
        by_pid[int(worker_id.split(":")[-2])].append(at)
    figures = {}
    for proc in rnd.workers[1:]:
        times = by_pid.get(proc.handle.pid, [])
        after = [t for t in times if t >= rnd.back_wall]
        figures[proc.name] = {
            "pgbouncer": proc.bouncer, "completed": len(times),
            "completed_while_a_down": sum(1 for t in times
                                          if rnd.killed_wall <= t < rnd.back_wall),
            "first_completion_after_back_s": round(min(after) - rnd.back_wall, 2)
            if after else None,
        }
    return figures


def connections(samples: list[dict[str, Any]]) -> dict[str, Any]:
    pg = [s["postgres"] for s in samples if s["postgres"]]
    result: dict[str, Any] = {
        "samples": len(samples),
        "pg_app_max": max((r["app"] for r in pg), default=None),
        "pg_all_client_backends_max": max((r["all_client_backends"] for r in pg), default=None),
        "pgbouncer": {},
    }
    for name in BOUNCERS:
        pools = [s["pgbouncer"][name] for s in samples if s["pgbouncer"].get(name)]
        servers = [sum(p[c] for c in SERVER_COLUMNS) for p in pools]
        result["pgbouncer"][name] = {
            "samples_answered": len(pools),
            "server_max": max(servers, default=None),
            "sv_active_max": max((p["sv_active"] for p in pools), default=None),
            "cl_waiting_max": max((p["cl_waiting"] for p in pools), default=None),
            "maxwait_s_max": max((p["maxwait_s"] for p in pools), default=None),
            "cl_active_max": max((p["cl_active"] for p in pools), default=None),
            # Client connections at the end: where the app's pools are connected now.
            "cl_active_last": pools[-1]["cl_active"] if pools else None,
        }
    return result


def ledger(stack: Stack, promised: set[str], render_log: Path, *, victim_pid: int,
           killed_wall: float) -> dict[str, Any]:
    """Tasks, claims and parts from the database, and renders from the simulated
    provider's log: what was lost, left unfinished, completed twice or rendered again."""
    with services.superuser_connect(stack) as conn:
        rows = {r[0]: r for r in conn.execute(
            "SELECT task_id::text, status, total_parts, extract(epoch FROM finished_at) "
            "FROM video_generation_tasks")}
        claims = conn.execute(
            "SELECT task_id::text, worker_id, outcome, extract(epoch FROM ended_at) "
            "FROM video_task_attempts").fetchall()
        stored: dict[str, int] = dict(conn.execute(
            "SELECT task_id::text, count(*) FILTER (WHERE state = 'stored') "
            "FROM video_task_parts GROUP BY 1").fetchall())
    statuses = collections.Counter(r[1] for r in rows.values())
    completed_by: collections.Counter[str] = collections.Counter()
    expired_pids: dict[str, set[int]] = collections.defaultdict(set)
    outcomes: collections.Counter[str] = collections.Counter()
    victim_tasks: dict[str, float] = {}
    open_claims = 0
    for task_id, worker_id, outcome, ended in claims:
        pid = int(worker_id.split(":")[-2])
        outcomes[outcome or "open"] += 1
        if outcome is None:
            open_claims += 1
        elif outcome == "completed":
            completed_by[task_id] += 1
        elif outcome == "expired":
            expired_pids[task_id].add(pid)
            if pid == victim_pid:
                victim_tasks[task_id] = float(ended)
    renders: dict[tuple[str, int], list[tuple[float, int]]] = collections.defaultdict(list)
    if render_log.exists():
        for line in render_log.read_text().splitlines():
            tid, part, by, _started, ended = line.split()
            renders[(tid, int(part))].append((float(ended), int(by)))
    rendered_again = explained = 0
    for (task_id, _part), done in renders.items():
        if len(done) < 2:
            continue
        rendered_again += 1
        # Every render but the last must belong to a claim that expired (it was in
        # flight when its worker died or was cut off): then it was never stored.
        if all(pid in expired_pids[task_id] for _, pid in sorted(done)[:-1]):
            explained += 1
    victim_finished = [float(rows[t][3]) - killed_wall for t in victim_tasks
                       if t in rows and rows[t][3] is not None]
    return {
        "promised": len(promised), "rows": len(rows), "by_status": dict(statuses),
        "completed": statuses.get("completed", 0),
        "lost": len(promised - set(rows)),
        "not_completed": sum(n for s, n in statuses.items() if s != "completed"),
        "not_completed_once": sum(1 for t in rows if completed_by[t] != 1),
        "claims_by_outcome": dict(outcomes),
        "open_claims": open_claims,
        "parts_missing": sum(1 for t, r in rows.items()
                             if r[1] == "completed" and stored.get(t, 0) != r[2]),
        "parts_rendered": sum(len(v) for v in renders.values()),
        "parts_rendered_again": rendered_again,
        "rendered_again_after_stored": rendered_again - explained,
        "victim_claims_expired": len(victim_tasks),
        "other_claims_expired": sum(len(p - {victim_pid}) for p in expired_pids.values()),
        # Seconds from the kill: the killed worker's tasks back to pending (the rescuer),
        # and completed by another worker.
        "victim_rescued_after_s_max": round(max(victim_tasks.values()) - killed_wall, 1)
        if victim_tasks else None,
        "victim_completed_after_s_max": round(max(victim_finished), 1)
        if victim_finished else None,
    }


# --- report --------------------------------------------------------------------------

def summary(results: dict[str, Any]) -> str:
    rounds = results["rounds"]
    names = list(rounds)
    meta = results["meta"]
    pool = meta.get("pgbouncer", {}).get("default_pool_size", "?")
    lines = [f"# Rehearsal: two poolers, three APIs, three workers ({meta['date']})", "",
             "| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]

    def row(title: str, fn: Any) -> None:
        lines.append(f"| {title} | " + " | ".join(str(fn(rounds[n])) for n in names) + " |")

    if not rounds:
        return "\n".join(lines[:1]) + "\nno round finished\n"
    # Every round places the processes alike.
    first = next(iter(rounds.values()))

    def api_row(title: str, fn: Any) -> None:
        for api, figures in first["api"].items():
            row(f"{api} (PgBouncer {figures['pgbouncer']}): {title}",
                lambda r, api=api: fn(r["api"][api]))

    row("users, seconds", lambda r: f"{r['users']}, {r['duration_s']:g}")
    row("tasks promised (202) / rows / completed", lambda r: (
        f"{r['tasks']['promised']} / {r['tasks']['rows']} / {r['tasks']['completed']}"))
    row("lost / not completed / not completed exactly once / claims open", lambda r: (
        f"{r['tasks']['lost']} / {r['tasks']['not_completed']} / "
        f"{r['tasks']['not_completed_once']} / {r['tasks']['open_claims']}"))
    row("parts stored missing / rendered again (after stored)", lambda r: (
        f"{r['tasks']['parts_missing']} / {r['tasks']['parts_rendered_again']} "
        f"({r['tasks']['rendered_again_after_stored']})"))
    row(f"**PostgreSQL server connections of the app, max** (bound 2 x {pool})",
        lambda r: f"**{r['connections']['pg_app_max']}**")
    for b in BOUNCERS:
        row(f"PgBouncer {b}: server connections / sv_active / cl_waiting, max",
            lambda r, b=b: "{server_max} / {sv_active_max} / {cl_waiting_max}".format(
                **r["connections"]["pgbouncer"][b]))
    row("PgBouncer clients at the end, A / B", lambda r: " / ".join(
        str(r["connections"]["pgbouncer"][b]["cl_active_last"]) for b in BOUNCERS))
    row("kill at s; A down (kill -9 to accepting again) s",
        lambda r: f"{r['fault']['at_s']:.1f}; {r['fault']['pgbouncer_down_s']:.1f}")
    api_row("failed requests by status", lambda a: _statuses(a))
    api_row("GET progress p50 / p99 / max ms", lambda a: "{p50_ms} / {p99_ms} / {max_ms}".format(
        **a["progress_latency"]))
    api_row("recovery after A was back, s",
            lambda a: "-" if a["recovery_s"] is None else f"{a['recovery_s']:.2f}")
    for w, figures in first["workers"].items():
        row(f"{w} (PgBouncer {figures['pgbouncer']}): "
            "tasks completed while A was down; first after A was back, s",
            lambda r, w=w: "{completed_while_a_down}; {first_completion_after_back_s}".format(
                **r["workers"][w]))
    row("worker-0's tasks at the kill / claims expired (others)", lambda r: (
        f"{r['fault']['victim_tasks_at_kill']} / {r['tasks']['victim_claims_expired']} "
        f"({r['tasks']['other_claims_expired']})"))
    row("worker-0's tasks back to pending / completed, s after the kill, max", lambda r: (
        f"{r['tasks']['victim_rescued_after_s_max']} / "
        f"{r['tasks']['victim_completed_after_s_max']}"))
    row("all tasks finished, s after the users stopped", lambda r: r["tasks"]["drain_s"])
    row("result", lambda r: "OK" if r["ok"] else "FAILED: " + "; ".join(r["failures"]))
    lines.append("")
    for name, r in rounds.items():
        c = r["connections"]
        lines.append(f"bound ({name}): PostgreSQL server connections of the app max "
                     f"{c['pg_app_max']} <= 2 x default_pool_size = {c['bound']}: "
                     f"{'OK' if c['within_bound'] else 'FAILED'}")
    lines.append(f"rehearsal: {'OK' if results['ok'] else 'FAILED'} "
                 f"({meta.get('wall_s', '?')} s)")
    return "\n".join(lines) + "\n"


def _statuses(api: dict[str, Any]) -> str:
    if not api["failed"]:
        return f"0 of {api['requests']}"
    shown = ", ".join(f"{n} x {s}" for s, n in sorted(api["failed_by_status"].items()))
    return f"{shown} of {api['requests']}"


# --- helpers -------------------------------------------------------------------------

def _save_logs(bouncers: dict[str, Stack], out: Path) -> None:
    dest = out / "logs"
    dest.mkdir(parents=True, exist_ok=True)
    for name, b in bouncers.items():
        for path in b.log_dir.glob("*.log"):
            with contextlib.suppress(OSError):
                shutil.copy(path, dest / path.name)
        with contextlib.suppress(OSError):
            shutil.copy(b.run_dir / "pgbouncer.log", dest / f"pgbouncer-{name}.log")


if __name__ == "__main__":
    sys.exit(main())

