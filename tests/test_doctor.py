"""The doctor finds each induced problem, names it, and exits non-zero; never a traceback.

Two kinds of tests: on the shared test stack, each induces one problem and undoes it
before it ends (the probe, the SQL and the CLI as they run); on made-up samples, every
check is made to fire, outcome by outcome, and once healthy (the checks and their
sentences, which are pure functions of a sample).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from ops.stack import free_port
from service import doctor, queries
from service.doctor import checks, pgbouncer, render, report
from service.doctor.checks import base
from service.doctor.findings import CHECK_FAILED, UNREADABLE, Finding, Level
from service.doctor.probe import Failure, PgState, Ping, QueueState, Sample
from service.settings import PROJECT_DIR, Settings
from service.worker import runner
from tests.conftest import TEST_POOL_SIZE

CLI_TIMEOUT_S = 60


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service", "doctor", *args], env=env,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
                          cwd=PROJECT_DIR, check=False)


async def test_doctor_runs_every_check_and_reaches_the_stack(settings):
    result = await doctor.examine(settings)
    assert [f.check for f in result.findings] == checks.NAMES
    for name in ("postgres", "pgbouncer", "pgbouncer_console"):
        # WARNING only if the loaded test machine answers slowly.
        assert result.finding(name).level in (Level.OK, Level.WARNING), line(result, name)
    for name in ("pg_connections", "config_server_conn", "config_timeouts"):
        assert result.finding(name).level is Level.OK, line(result, name)
    # OK, or WARNING if other tests' apps hold more API connections than one process would.
    assert result.finding("config_client_conn").level is not Level.CRITICAL
    # The queue statements ran (no UNKNOWN for want of a parameter or a column).
    for name in ("queue_last_hour", "queue_running_too_long", "queue_expired_leases",
                 "queue_backlog", "queue_attempts"):
        assert result.finding(name).level is not Level.UNKNOWN, line(result, name)
    text = report.render_table(result)
    for finding in result.findings:
        assert render.line(finding) in text
    assert f"(exit {result.exit_code})" in text
    data = json.loads(json.dumps(result.to_json(), default=str))
    assert data["verdict"] == result.level
    assert [c["name"] for c in data["checks"]] == checks.NAMES
    assert {"name", "section", "level", "outcome", "summary", "fix", "data"} <= set(
        data["checks"][0])


def line(result: report.Report, name: str) -> str:
    return render.line(result.finding(name))


async def test_doctor_names_a_session_left_idle_in_transaction(settings):
    conn = await psycopg.AsyncConnection.connect(settings.database_direct_url,
                                                 application_name="test-idle-in-transaction")
    try:
        await conn.execute("SELECT 1")  # not autocommit: the transaction stays open
        pid = conn.info.backend_pid
        await asyncio.sleep(0.3)
        result = await doctor.examine(settings.replace(doctor_idle_in_transaction_s=0.1))
    finally:
        await conn.close()
    check = result.finding("pg_idle_in_transaction")
    assert check.level is Level.WARNING, render.line(check)
    assert f"pid {pid}" in render.summary(check)
    assert "test-idle-in-transaction" in render.summary(check)
    assert f"pg_terminate_backend({pid})" in render.fix(check)
    assert result.exit_code >= 1


async def test_doctor_finds_pgbouncer_pool_exhausted_by_slow_statements(settings):
    stop = asyncio.Event()

    async def hold_a_server() -> None:
        # pg_sleep(2) stays under the role's 5 s statement_timeout.
        async with await psycopg.AsyncConnection.connect(
                settings.database_url, autocommit=True, prepare_threshold=None,
                application_name="test-slow-statements") as conn:
            while not stop.is_set():
                await conn.execute("SELECT pg_sleep(2)")

    # Two more clients than PgBouncer has server connections: some always wait.
    holders = [asyncio.create_task(hold_a_server()) for _ in range(TEST_POOL_SIZE + 2)]
    try:
        await wait_for_waiting_clients(settings)
        result = await doctor.examine(settings)
    finally:
        stop.set()
        await asyncio.gather(*holders, return_exceptions=True)
    check = result.finding("pgbouncer_pools")
    assert check.level in (Level.WARNING, Level.CRITICAL), render.line(check)
    assert "cl_waiting" in render.summary(check) and "maxwait" in render.summary(check)
    assert f"default_pool_size from {TEST_POOL_SIZE} to" in render.fix(check)
    assert "PostgreSQL has room for" in render.fix(check)
    assert result.exit_code >= 1


async def wait_for_waiting_clients(settings, timeout_s: float = 30) -> None:
    """Until every server connection of the app's pool is busy and clients wait for one
    (not merely while they log in: then the auth user's lookups queue for a moment)."""
    app_user = conninfo_to_dict(settings.database_url)["user"]
    conn = await pgbouncer.connect(settings.pgbouncer_admin_url, timeout_s=5)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pools = await pgbouncer.show(conn, "POOLS")
            if any(p["cl_waiting"] and p["sv_active"] >= TEST_POOL_SIZE for p in pools
                   if p["database"] != "pgbouncer" and p["user"] == app_user):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"no client waited in PgBouncer within {timeout_s} s")
    finally:
        await conn.close()


async def test_doctor_finds_a_task_stuck_past_its_lease(settings, direct):
    task_id = uuid.uuid4()
    # A worker that died 15 minutes into the task: nothing renews or rescues its lease
    # (no worker runs in this test, so no rescuer either).
    direct.execute(
        "INSERT INTO video_generation_tasks (task_id, product_name, theme, duration, "
        "total_parts, status, worker_id, claim_token, lease_expires_at, attempts, created_at, "
        "updated_at) VALUES (%s, 'bolt', 'quality', 5, 1, 'generating', 'gone-host:1:dead', "
        "gen_random_uuid(), "
        "now() - interval '1 minute', 1, now() - interval '15 minutes', "
        "now() - interval '2 minutes')", [task_id])
    try:
        result = await doctor.examine(settings)
    finally:
        direct.execute("DELETE FROM video_generation_tasks WHERE task_id = %s", [task_id])
    expired = result.finding("queue_expired_leases")
    assert expired.level is Level.CRITICAL, render.line(expired)
    assert str(task_id) in render.summary(expired)
    assert "video-tasks worker" in render.fix(expired)
    assert str(task_id) in render.summary(result.finding("queue_running_too_long"))
    assert result.exit_code == 2


async def test_doctor_cli_flags_app_pools_that_exceed_max_client_conn(stack):
    # (100 API processes + 1 worker) x 4 = 404 client connections > max_client_conn 400.
    env = stack.app_env() | {"API_PROCESSES": "100", "APP_POOL_MAX": "4",
                             "DOCTOR_EXPECTED_WORKERS": "1"}
    result = await asyncio.to_thread(run_cli, env, "--json")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    data = json.loads(result.stdout)
    assert data["exit_code"] == 2 and data["verdict"] == "CRITICAL"
    check = next(c for c in data["checks"] if c["name"] == "config_client_conn")
    assert check["level"] == "CRITICAL"
    assert "= 404 client connections" in check["summary"]
    assert "max_client_conn 400" in check["summary"]
    assert "raise max_client_conn to at least 404" in check["fix"]
    assert any(r.startswith("config_client_conn:") for r in data["recommendations"])


async def test_doctor_cli_applies_the_charts_rule_to_pods_and_poolers(stack):
    """Past one machine: (20 pods x 2 processes + 50 workers) x 4 = 360 clients over 2
    PgBouncers is 180 each (fits 400), and the server budget counts every instance's
    pools; with 70 workers on one PgBouncer, 440 do not fit (service/capacity.py, the
    Helm chart's rule)."""
    base = {"API_PROCESSES": "2", "APP_POOL_MAX": "4", "DOCTOR_EXPECTED_WORKERS": "50",
            "DOCTOR_EXPECTED_API_PODS": "20"}
    spread = await asyncio.to_thread(run_cli, stack.app_env() | base
                                     | {"DOCTOR_POOLER_INSTANCES": "2"}, "--json")
    checks = {c["name"]: c for c in json.loads(spread.stdout)["checks"]}
    client = checks["config_client_conn"]
    assert "= 360 over DOCTOR_POOLER_INSTANCES 2 PgBouncers = 180 each" in client["summary"]
    assert client["level"] != "CRITICAL", client
    assert "DOCTOR_POOLER_INSTANCES 2 × (" in checks["config_server_conn"]["summary"]
    one = await asyncio.to_thread(run_cli, stack.app_env() | base
                                  | {"DOCTOR_EXPECTED_WORKERS": "70"}, "--json")
    checks = {c["name"]: c for c in json.loads(one.stdout)["checks"]}
    assert checks["config_client_conn"]["level"] == "CRITICAL"
    assert "= 440 client connections" in checks["config_client_conn"]["summary"]


async def test_doctor_cli_reports_unreachable_parts_without_a_traceback(stack):
    env = stack.app_env() | {"POSTGRES_PORT": str(free_port()),
                             "PGBOUNCER_PORT": str(free_port()), "DATABASE_URL": "",
                             "DATABASE_DIRECT_URL": "", "PGBOUNCER_ADMIN_URL": ""}
    result = await asyncio.to_thread(run_cli, env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "postgres: CRITICAL — unreachable" in result.stdout
    assert "pgbouncer: CRITICAL — unreachable" in result.stdout
    assert "queue_backlog: UNKNOWN" in result.stdout
    assert "VERDICT: CRITICAL" in result.stdout


async def test_doctor_watch_refreshes_and_rates_appear_from_the_second_sample(stack):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "doctor", "--watch", "--json", env=stack.app_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=PROJECT_DIR)
    try:
        first = json.loads(await asyncio.wait_for(proc.stdout.readline(), CLI_TIMEOUT_S))
        second = json.loads(await asyncio.wait_for(proc.stdout.readline(), CLI_TIMEOUT_S))
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, stderr = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            raise
    assert proc.returncode in (0, 1, 2)
    assert b"Traceback" not in stderr

    def traffic(sample: dict) -> str:
        return next(c for c in sample["checks"] if c["name"] == "pgbouncer_traffic")["level"]

    assert traffic(first) == "UNKNOWN"
    assert traffic(second) in ("OK", "WARNING")


async def test_doctor_flags_an_app_pool_timeout_longer_than_query_wait_timeout(settings):
    # The test stack's PgBouncer drops queued clients after query_wait_timeout = 10 s.
    result = await doctor.examine(settings.replace(pool_timeout_s=12.0), interval_s=0.1)
    check = result.finding("config_timeouts")
    assert check.level is Level.WARNING, render.line(check)
    assert "POOL_TIMEOUT_S 12 s is longer than PgBouncer's query_wait_timeout 10 s" in (
        render.summary(check))
    assert result.exit_code >= 1


def test_the_doctors_queue_statements_use_indexes(direct):
    """Running is `lease_expires_at IS NOT NULL` (the lease CHECK), the lease index's own
    predicate: no statement scans the table."""
    params = {"max_attempts": 3, "older_than_s": 600.0}
    for name in ("doctor_queue_summary", "doctor_tasks_running_too_long",
                 "doctor_expired_leases", "doctor_tasks_last_hour"):
        with direct.transaction(force_rollback=True):
            direct.execute("SET LOCAL enable_seqscan = off")
            plan = "\n".join(row[0] for row in direct.execute(
                "EXPLAIN " + queries.get(name), params))
        assert "Seq Scan" not in plan, f"{name}:\n{plan}"


def test_rates_come_from_the_deltas_of_show_stats_totals():
    def read(at: float, xacts: int, queries: int, xact_us: int, wait_us: int):
        stats = [{"database": "videotasks", "total_xact_count": xacts,
                  "total_query_count": queries, "total_xact_time": xact_us,
                  "total_wait_time": wait_us, "avg_wait_time": 999_999}]
        return pgbouncer.Console(version="PgBouncer 1.18.0", pools=[], stats=stats,
                                 taken_at=at)

    (rate,) = pgbouncer.traffic(read(10.0, 100, 150, 50_000, 0),
                                read(12.0, 300, 450, 250_000, 400_000))
    assert rate.xact_per_s == 100 and rate.query_per_s == 150
    assert rate.avg_xact_ms == 1.0  # 200 ms of transactions over 200 transactions
    assert rate.avg_wait_ms == 2.0  # 1.18's avg_wait_time is ignored
    # A restart between the reads (totals went down) gives no rate rather than a wrong one.
    assert pgbouncer.traffic(read(10.0, 100, 150, 0, 0), read(12.0, 5, 5, 0, 0)) == []


# --- every check, on made-up samples --------------------------------------------------

API = base.API_APP
WORKER = base.WORKER_APP
DB = "videotasks"


def pool_row(**changes: Any) -> dict[str, Any]:
    row = {"database": DB, "user": "app", "cl_active": 6, "cl_waiting": 0, "sv_active": 1,
           "sv_idle": 2, "sv_used": 0, "sv_tested": 0, "sv_login": 0, "maxwait": 0,
           "maxwait_us": 0, "pool_mode": "transaction"}
    return row | changes


def console(taken_at: float, xacts: int, wait_us: int) -> pgbouncer.Console:
    clients = ([{"database": DB, "application_name": API, "state": "active"}] * 4
               + [{"database": DB, "application_name": WORKER, "state": "active"}] * 2
               + [{"database": "pgbouncer", "application_name": "video-tasks-doctor",
                   "state": "active"}])
    return pgbouncer.Console(
        version="PgBouncer 1.18.0",
        pools=[pool_row(), pool_row(database="pgbouncer", user="pgbouncer", cl_active=1,
                                    sv_active=0, sv_idle=0, pool_mode="statement")],
        stats=[{"database": DB, "total_xact_count": xacts, "total_query_count": xacts * 2,
                "total_xact_time": xacts * 1000, "total_wait_time": wait_us}],
        config={"max_client_conn": "500", "default_pool_size": "10",
                "query_wait_timeout": "10", "query_timeout": "0", "client_idle_timeout": "0",
                "idle_transaction_timeout": "30", "auth_user": "pgbouncer_auth"},
        databases=[{"name": DB, "pool_size": 10, "reserve_pool": 2, "max_connections": 20,
                    "current_connections": 3, "paused": 0, "disabled": 0},
                   {"name": "pgbouncer", "pool_size": 2, "paused": 0, "disabled": 0}],
        clients=clients, taken_at=taken_at)


def healthy() -> Sample:
    """What a healthy stack looks like to the doctor: every check OK."""
    return Sample(
        direct=Ping(roundtrip_ms=0.8, connect_ms=4.0),
        bouncer=Ping(roundtrip_ms=1.2, connect_ms=5.0),
        console=console(100.0, 1000, 0),
        console_other=console(101.0, 1200, 2000),
        postgres=PgState(
            overview={"server_version": "15.18", "max_connections": 100,
                      "superuser_reserved": 3, "reserved": 0, "statement_timeout_ms": 5000,
                      "idle_in_transaction_timeout_ms": 10000, "connections": 12,
                      "own_pid": 4242},
            sessions=[{"application_name": "(none)", "usename": "app", "state": "idle",
                       "sessions": 3, "longest_active_s": 0.0}],
            idle_in_transaction=[], long_statements=[], long_after_s=5.0, via="direct"),
        queue=QueueState(
            summary={"pending": 2, "runnable": 1, "oldest_pending_s": 0.3, "running": 3,
                     "completed_10m": 40, "failed_10m": 1, "on_last_attempt": 0,
                     "failed_out_of_attempts_1h": 0},
            last_hour=[{"status": "pending", "tasks": 2}, {"status": "completed", "tasks": 40}],
            running_too_long=[], expired_leases=[], via="direct"),
        taken_at=1_800_000_000.0)


SETTINGS = Settings()
TASK_ID = "3c9144a3-0000-4000-8000-000000000001"


def task_row(**changes: Any) -> dict[str, Any]:
    row = {"task_id": uuid.UUID(TASK_ID), "status": "generating", "worker_id": "host:1:dead",
           "attempts": 2, "current_part": 1, "total_parts": 4,
           "seconds_since_creation": 900.0, "overdue_s": 3.0, "total": 1}
    return row | changes


def session_row(**changes: Any) -> dict[str, Any]:
    row = {"pid": 4711, "usename": "app", "datname": DB, "application_name": "psql",
           "state": "idle in transaction", "idle_s": 42.0, "xact_s": 50.0, "running_s": 40.0,
           "last_query": "UPDATE video_generation_tasks SET progress = 1",
           "query": "SELECT pg_sleep(60)", "wait_event_type": None, "wait_event": None,
           "total": 1}
    return row | changes


# How each case changes the healthy sample (in place, on a deep copy) and the settings.
Change = Callable[[Sample], Any]


@dataclass(frozen=True)
class Case:
    check: str
    level: Level
    outcome: str
    change: Change
    # Each of these is in the rendered line.
    says: tuple[str, ...] = ()
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.check}-{self.outcome}-{self.level.value}"


def both_reads(change: Callable[[pgbouncer.Console], Any]) -> Change:
    def apply(s: Sample) -> None:
        change(s.console)
        change(s.console_other)
    return apply


def pools(**changes: Any) -> Change:
    return both_reads(lambda c: c.pools[0].update(changes))


def database(**changes: Any) -> Change:
    return both_reads(lambda c: c.databases[0].update(changes))


def config(**changes: str) -> Change:
    return both_reads(lambda c: c.config.update(changes))


def overview(**changes: Any) -> Change:
    return lambda s: s.postgres.overview.update(changes)


def summary(**changes: Any) -> Change:
    return lambda s: s.queue.summary.update(changes)


def setattrs(**changes: Any) -> Change:
    def apply(s: Sample) -> None:
        for key, value in changes.items():
            setattr(s, key, value)
    return apply


def clients(app: str, n: int) -> Change:
    return both_reads(lambda c: c.clients.extend(
        [{"database": DB, "application_name": app, "state": "active"}] * n))


def no_worker_clients(s: Sample) -> None:
    for c in (s.console, s.console_other):
        c.clients[:] = [x for x in c.clients if x["application_name"] != WORKER]


def no_room(s: Sample) -> None:
    pools(cl_waiting=3, maxwait=1)(s)
    s.postgres.overview["connections"] = 97


def held(s: Sample) -> None:
    pools(cl_waiting=3, maxwait=1)(s)
    s.postgres.long_statements.append(session_row())


def binds(s: Sample) -> None:
    pools(cl_waiting=3, maxwait=1)(s)
    database(current_connections=19)(s)


DOWN = Failure("connection refused")
STUCK = [task_row()]

CASES = [
    # connectivity
    Case("postgres", Level.WARNING, "slow", setattrs(direct=Ping(250.0, None)),
         ("direct SELECT 1", "250 ms", "check its CPU and I/O")),
    Case("postgres", Level.CRITICAL, "unreachable", setattrs(direct=DOWN, bouncer=DOWN),
         ("postgres: CRITICAL — unreachable at 127.0.0.1:55432: connection refused",)),
    Case("postgres", Level.WARNING, "only_through_pgbouncer", setattrs(direct=DOWN),
         ("not reachable directly", "DATABASE_DIRECT_URL")),
    Case("pgbouncer", Level.WARNING, "slow", setattrs(bouncer=Ping(300.0, 2.0)),
         ("through PgBouncer", "300 ms", "see pgbouncer_pools")),
    Case("pgbouncer", Level.CRITICAL, "unreachable", setattrs(bouncer=DOWN),
         ("unreachable at 127.0.0.1:6432", "video-tasks stack status")),
    Case("pgbouncer", Level.WARNING, "no_server_connection",
         setattrs(bouncer=Failure("connected, but SELECT 1 got no server connection",
                                  connected=True)), ("every server connection is busy",)),
    Case("pgbouncer", Level.CRITICAL, "paused",
         lambda s: (setattrs(bouncer=Failure("no answer", connected=True))(s),
                    database(paused=1)(s)),
         ("videotasks is PAUSED", "ops/pgbouncer-resume videotasks")),
    Case("pgbouncer_console", Level.WARNING, "refused",
         setattrs(console=Failure("password authentication failed"), console_other=None),
         ("admin console unreachable: password authentication failed", "PGBOUNCER_ADMIN_URL")),
    Case("pgbouncer_console", Level.WARNING, "pgbouncer_down",
         setattrs(console=DOWN, console_other=None, bouncer=DOWN), ("see pgbouncer",)),
    # PgBouncer
    Case("pgbouncer_pools", Level.WARNING, "problems", pools(cl_waiting=3, maxwait=1),
         ("3 clients waiting for a server connection (cl_waiting)", "oldest 1.0 s (maxwait",
          "raise default_pool_size from 10 to 15", "PostgreSQL has room for 85 more",
          "ops/pgbouncer-reload")),
    Case("pgbouncer_pools", Level.CRITICAL, "problems", pools(cl_waiting=3, maxwait=6),
         ("query_wait_timeout 10 s drops them",)),
    Case("pgbouncer_pools", Level.WARNING, "problems", no_room,
         ("do not raise the pool: PostgreSQL has no room (97 of 97",)),
    Case("pgbouncer_pools", Level.WARNING, "problems", held,
         ("first end what holds the server connections",)),
    Case("pgbouncer_pools", Level.WARNING, "problems", binds,
         ("max_db_connections 20 binds too: raise it to 24",)),
    Case("pgbouncer_pools", Level.CRITICAL, "problems", database(paused=1),
         ("videotasks is PAUSED: its clients queue until RESUME",)),
    Case("pgbouncer_pools", Level.CRITICAL, "problems", database(disabled=1),
         ("videotasks is DISABLED", "ENABLE videotasks;")),
    Case("pgbouncer_pools", Level.WARNING, "problems", pools(pool_mode="session"),
         ("runs in pool_mode session", "set pool_mode = transaction")),
    Case("pgbouncer_traffic", Level.WARNING, "slow_wait",
         lambda s: s.console_other.stats[0].update(total_wait_time=200 * 150_000),
         ("200 transactions/s", "avg wait 150 ms", "wait more than 100 ms")),
    Case("pgbouncer_traffic", Level.UNKNOWN, "one_read", setattrs(console_other=None),
         ("rates need two",)),
    Case("pgbouncer_clients", Level.WARNING, "near_limit", clients("bench", 400),
         ("406 of max_client_conn 500", "bench 400", "PGBOUNCER_MAX_CLIENT_CONN")),
    Case("pgbouncer_clients", Level.CRITICAL, "near_limit", clients("bench", 470),
         ("476 of max_client_conn 500",)),
    # PostgreSQL
    Case("pg_connections", Level.WARNING, "near_limit", overview(connections=80),
         ("80 of 97 usable connections", "max_connections 100 − 3 reserved")),
    Case("pg_connections", Level.CRITICAL, "near_limit", overview(connections=95),
         ("95 of 97",)),
    Case("pg_sessions", Level.OK, "ok",
         lambda s: s.postgres.sessions.append({"application_name": API, "usename": "app",
                                               "state": "active", "sessions": 2,
                                               "longest_active_s": 3.5}),
         ("5 other sessions", f"{API} 2 active", "longest running statement 3.5 s")),
    Case("pg_idle_in_transaction", Level.WARNING, "found",
         lambda s: s.postgres.idle_in_transaction.append(session_row()),
         ("1 session idle in a transaction", "pid 4711", "'psql'", "idle 42.0 s",
          "pg_terminate_backend(4711)", "idle_in_transaction_session_timeout 10.0 s")),
    Case("pg_long_statements", Level.WARNING, "found",
         lambda s: s.postgres.long_statements.append(session_row()),
         ("1 statement running longer than the statement timeout 5.0 s", "pid 4711",
          "pg_sleep(60)", "pg_cancel_backend(4711)")),
    Case("pg_long_statements", Level.WARNING, "no_timeout",
         lambda s: (overview(statement_timeout_ms=0)(s),
                    setattr(s.postgres, "long_after_s", 30.0)),
         ("30.0 s (the role has no statement_timeout)", "DB_STATEMENT_TIMEOUT_MS")),
    # configuration arithmetic
    Case("config_client_conn", Level.CRITICAL, "over_limit", lambda s: None,
         ("(API_PROCESSES 130 + DOCTOR_EXPECTED_WORKERS 1) × APP_POOL_MAX 4 = 524",
          "raise max_client_conn to at least 524", "lower APP_POOL_MAX to 3"),
         {"api_processes": 130}),
    Case("config_client_conn", Level.WARNING, "more_processes", clients(API, 4),
         (f"{API} holds 8 client connections, more than API_PROCESSES × APP_POOL_MAX = 4",)),
    Case("config_client_conn", Level.WARNING, "near_limit", config(max_client_conn="9"),
         ("= 8 client connections at most, of max_client_conn 9", "raise max_client_conn to 10")),
    Case("config_server_conn", Level.CRITICAL, "over_limit", overview(max_connections=20),
         ("PgBouncer may open 12 server connections", "(pool_size 10 + reserve 2) × 1 users",
          "+ 9 other sessions now = 21 of 17 usable", "'too many clients'")),
    Case("config_server_conn", Level.WARNING, "little_headroom", overview(max_connections=25),
         ("= 21 of 22 usable", "little headroom")),
    Case("config_timeouts", Level.WARNING, "contradictions", lambda s: None,
         ("POOL_TIMEOUT_S 12 s is longer than PgBouncer's query_wait_timeout 10 s",),
         {"pool_timeout_s": 12.0}),
    Case("config_timeouts", Level.WARNING, "contradictions", config(query_wait_timeout="0"),
         ("query_wait_timeout is 0",)),
    Case("config_timeouts", Level.WARNING, "contradictions", overview(statement_timeout_ms=0),
         ("the role has no statement_timeout",)),
    Case("config_timeouts", Level.WARNING, "contradictions", config(query_timeout="5"),
         ("query_timeout 5 s is not above statement_timeout 5.0 s",)),
    Case("config_timeouts", Level.WARNING, "contradictions", config(client_idle_timeout="30"),
         ("client_idle_timeout 30 s is shorter than the app pool's max_idle 60 s",)),
    Case("config_timeouts", Level.WARNING, "contradictions",
         lambda s: (config(idle_transaction_timeout="0")(s),
                    overview(idle_in_transaction_timeout_ms=0)(s)),
         ("neither idle_transaction_timeout",)),
    Case("config_timeouts", Level.WARNING, "contradictions", lambda s: None,
         ("POOL_TIMEOUT_S 4 s is not below LEASE_S 4 s",),
         {"pool_timeout_s": 4.0, "lease_s": 4.0, "heartbeat_interval_s": 1.0}),
    # the queue
    Case("queue_last_hour", Level.OK, "none", lambda s: s.queue.last_hour.clear(),
         ("no task created in the last hour",)),
    Case("queue_running_too_long", Level.WARNING, "found",
         lambda s: s.queue.running_too_long.extend(STUCK),
         ("1 task still generating/merging/uploading more than 10 min after creation",
          TASK_ID, "part 1/4, attempt 2", "worker host:1:dead")),
    Case("queue_expired_leases", Level.WARNING, "being_rescued",
         lambda s: s.queue.expired_leases.extend(STUCK),
         ("1 running task whose worker stopped renewing the lease", TASK_ID,
          "expired 3.0 s ago", "within seconds")),
    Case("queue_expired_leases", Level.CRITICAL, "not_rescued",
         lambda s: s.queue.expired_leases.append(task_row(overdue_s=60.0)),
         ("no worker rescued them for 60.0 s", "video-tasks worker",
          "MAX_ATTEMPTS 3")),
    Case("queue_backlog", Level.CRITICAL, "no_worker",
         lambda s: (no_worker_clients(s), summary(oldest_pending_s=120.0)(s)),
         ("0 worker client connections: no worker is connected", "start workers")),
    Case("queue_backlog", Level.WARNING, "no_worker",
         lambda s: (no_worker_clients(s), summary(oldest_pending_s=10.0)(s)),
         ("no worker is connected",)),
    Case("queue_backlog", Level.WARNING, "behind", summary(oldest_pending_s=120.0),
         ("oldest waiting 2 min", "oldest over 60.0 s", "3 running of WORKER_CONCURRENCY 4 "
          "× 1 workers = 4 slots")),
    Case("queue_backlog", Level.CRITICAL, "stalled",
         summary(oldest_pending_s=900.0, completed_10m=0), ("workers do not keep up",)),
    Case("queue_backlog", Level.CRITICAL, "table_unreadable",
         setattrs(queue=Failure('relation "video_generation_tasks" does not exist')),
         ("does not exist", "video-tasks migrate")),
    Case("queue_attempts", Level.WARNING, "failing",
         summary(failed_out_of_attempts_1h=2, on_last_attempt=1),
         ("1 task on the last of MAX_ATTEMPTS 3", "2 failed after 3 attempts",
          "error_message")),
]


def diagnose(change: Change = lambda s: None, **settings: Any) -> dict[str, Finding]:
    sample = copy.deepcopy(healthy())
    change(sample)
    return {f.check: f for f in checks.evaluate(SETTINGS.replace(**settings), sample)}


def test_a_healthy_sample_passes_every_check():
    findings = diagnose()
    assert list(findings) == checks.NAMES
    for finding in findings.values():
        assert finding.level is Level.OK, render.line(finding)
        assert render.fix(finding) == ""
        assert " — " in render.line(finding)  # every OK line says what it saw
    said = {name: render.summary(f) for name, f in findings.items()}
    assert said["pgbouncer_pools"] == ("videotasks/app: 3 of 10 server connections open "
                                       "(1 busy), 6 clients, none waiting "
                                       "(pool_mode transaction)")
    assert said["config_client_conn"].startswith(
        "(API_PROCESSES 1 + DOCTOR_EXPECTED_WORKERS 1) × APP_POOL_MAX 4 = 8 client connections")
    assert "200 transactions/s" in said["pgbouncer_traffic"]
    assert said["config_timeouts"] == ("POOL_TIMEOUT_S 2 s; statement_timeout 5.0 s; "
                                       "query_wait_timeout 10 s; idle_transaction_timeout "
                                       "30 s: consistent")
    assert said["queue_last_hour"] == "created in the last hour: 2 pending, 40 completed"


@pytest.mark.parametrize("case", CASES, ids=str)
def test_each_check_fires(case: Case):
    findings = diagnose(case.change, **case.settings)
    finding = findings[case.check]
    text = render.line(finding)
    assert (finding.level, finding.outcome) == (case.level, case.outcome), text
    assert text.startswith(f"{case.check}: {case.level.value} — ")
    for words in case.says:
        assert words in text, text
    if case.level in (Level.WARNING, Level.CRITICAL):
        assert render.fix(finding), text  # a problem always names what to do
    # Facts are JSON as they are: --json prints them.
    json.dumps(report.finding_json(finding), default=str)


def test_every_check_has_a_case_that_makes_it_fire():
    fired = {case.check for case in CASES}
    assert fired == set(checks.NAMES)
    # Every check but the two that only inform can warn.
    warned = {case.check for case in CASES if case.level is not Level.OK}
    assert set(checks.NAMES) - warned == {"pg_sessions", "queue_last_hour"}


def test_unreadable_parts_make_their_checks_unknown_not_the_report():
    findings = diagnose(setattrs(console=Failure("no answer within 3 s"), console_other=None,
                                 postgres=Failure("permission denied"),
                                 queue=Failure("permission denied for table")))
    unknown = {name for name, f in findings.items() if f.level is Level.UNKNOWN}
    assert unknown == set(checks.NAMES) - {"postgres", "pgbouncer", "pgbouncer_console",
                                           "queue_backlog"}
    assert all(findings[name].outcome == UNREADABLE for name in unknown)
    assert (render.summary(findings["pg_connections"])
            == "PostgreSQL could not be read: permission denied")
    assert render.summary(findings["queue_attempts"]) == (
        "the tasks table could not be read: permission denied for table")
    assert render.summary(findings["pgbouncer_pools"]) == "PgBouncer's console is unreachable"
    # The database answers but the queue cannot be read: that is critical, not unknown.
    assert findings["queue_backlog"].level is Level.CRITICAL


def test_a_check_that_raises_is_unknown_and_the_others_still_run():
    findings = diagnose(lambda s: s.postgres.overview.pop("max_connections"))
    broken = findings["pg_connections"]
    assert (broken.level, broken.outcome) == (Level.UNKNOWN, CHECK_FAILED)
    assert render.summary(broken) == "the check itself failed: KeyError: 'max_connections'"
    assert findings["queue_backlog"].level is Level.OK


def test_a_sentence_that_fails_is_reported_not_raised():
    odd = Finding("queue_attempts", "queue", Level.WARNING, "failing", {"max_attempts": 3})
    assert "the sentence failed: KeyError" in render.line(odd)


def test_the_report_orders_problems_and_sums_them_up():
    sample = copy.deepcopy(healthy())
    setattrs(direct=DOWN, bouncer=DOWN, console=DOWN, console_other=None)(sample)
    summary(failed_out_of_attempts_1h=1)(sample)
    result = report.Report(checks.evaluate(SETTINGS, sample), sample, SETTINGS)
    assert result.exit_code == 2
    assert result.verdict() == ("CRITICAL — 2 critical (postgres, pgbouncer); "
                                "2 warnings (pgbouncer_console, queue_attempts)")
    assert [f.check for f in result.problems()][:2] == ["postgres", "pgbouncer"]
    text = report.render_table(result)
    assert "VERDICT: CRITICAL" in text and "(exit 2)" in text
    assert "  1. postgres: is PostgreSQL running" in text
    data = result.to_json()
    assert data["recommendations"][0].startswith("postgres: is PostgreSQL running")
    attempts = next(c for c in data["checks"] if c["name"] == "queue_attempts")
    assert attempts["data"] == {"on_last_attempt": 0, "failed_out_of_attempts_1h": 1,
                                "max_attempts": 3}


def test_the_doctor_reasons_with_the_services_own_constants():
    assert base.RESCUE_GRACE_S == 3 * runner.RESCUE_INTERVAL_S
    assert render.RUNNING_TEXT == "generating/merging/uploading"
    ctx = base.Context(SETTINGS, healthy())
    assert ctx.app_pool_max_idle_s == 60  # what service.db gives the app's pools
