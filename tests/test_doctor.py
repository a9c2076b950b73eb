"""The doctor finds each induced problem, names it, and exits non-zero; never a traceback.

Each test induces one problem on the shared test stack and undoes it before it ends.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import uuid

import psycopg

from ops.stack import free_port
from service import doctor
from service.doctor import checks, pgbouncer, report
from service.doctor.checks import Level
from service.settings import PROJECT_DIR
from tests.conftest import TEST_POOL_SIZE

CLI_TIMEOUT_S = 60


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service", "doctor", *args], env=env,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
                          cwd=PROJECT_DIR, check=False)


async def test_doctor_runs_every_check_and_reaches_the_stack(settings):
    result = await doctor.examine(settings)
    assert [c.name for c in result.checks] == [name for _, name, _ in checks.CHECKS]
    for name in ("postgres", "pgbouncer", "pgbouncer_console"):
        # WARNING only if the loaded test machine answers slowly.
        assert result.check(name).level in (Level.OK, Level.WARNING), result.check(name).line()
    for name in ("pg_connections", "config_server_conn", "config_timeouts"):
        assert result.check(name).level is Level.OK, result.check(name).line()
    # OK, or WARNING if other tests' apps hold more API connections than one process would.
    assert result.check("config_client_conn").level is not Level.CRITICAL
    text = report.render_table(result)
    for check in result.checks:
        assert check.line() in text
    assert f"(exit {result.exit_code})" in text
    assert json.loads(json.dumps(result.to_json(), default=str))["verdict"] == result.level


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
    check = result.check("pg_idle_in_transaction")
    assert check.level is Level.WARNING, check.line()
    assert f"pid {pid}" in check.summary
    assert "test-idle-in-transaction" in check.summary
    assert f"pg_terminate_backend({pid})" in check.fix
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
    check = result.check("pgbouncer_pools")
    assert check.level in (Level.WARNING, Level.CRITICAL), check.line()
    assert "cl_waiting" in check.summary and "maxwait" in check.summary
    assert f"default_pool_size from {TEST_POOL_SIZE} to" in check.fix
    assert "PostgreSQL has room for" in check.fix
    assert result.exit_code >= 1


async def wait_for_waiting_clients(settings, timeout_s: float = 30) -> None:
    conn = await pgbouncer.connect(settings.pgbouncer_admin_url, timeout_s=5)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pools = await pgbouncer.show(conn, "POOLS")
            if any(p["cl_waiting"] for p in pools if p["database"] != "pgbouncer"):
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
    expired = result.check("queue_expired_leases")
    assert expired.level is Level.CRITICAL, expired.line()
    assert str(task_id) in expired.summary
    assert "python -m service worker" in expired.fix
    assert str(task_id) in result.check("queue_running_too_long").summary
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
    check = result.check("config_timeouts")
    assert check.level is Level.WARNING, check.line()
    assert "POOL_TIMEOUT_S 12 s is longer than PgBouncer's query_wait_timeout 10 s" in (
        check.summary)
    assert result.exit_code >= 1


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
