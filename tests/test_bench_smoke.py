"""The benchmark, small: a few seconds, a few dozen users, every mode.

Keeps `python -m bench` working and checks the claim it exists to prove: through
PgBouncer, PostgreSQL never sees more server connections for the app than PgBouncer's
default_pool_size, while the same service pointed straight at PostgreSQL opens its own.
The speed targets belong to the full benchmark, not to this test.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service.settings import PROJECT_DIR

POOL_SIZE = 4
USERS = 30


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench")
    argv = [sys.executable, "-m", "bench", "--users", str(USERS), "--duration", "5",
            "--modes", "design,direct,pgbench", "--part-seconds", "0.3",
            "--pool-size", str(POOL_SIZE), "--api-processes", "2",
            "--readpath-seconds", "2" if shutil.which("wrk") else "0",
            "--readpath-connections", "20", "--pgbench-seconds", "1",
            "--pgbench-clients", "4", "--no-restart", "--drain-timeout", "20",
            "--out", str(out)]
    proc = subprocess.run(argv, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=150,
                          check=False)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    results = json.loads((out / "results.json").read_text())
    results["_out"] = str(out)
    return results


def test_bench_writes_json_plot_and_summary(bench_run):
    out = Path(bench_run["_out"])
    assert (out / "plot.png").stat().st_size > 10_000
    summary = (out / "summary.md").read_text()
    assert "design (PgBouncer)" in summary and "direct (write-up pools)" in summary
    meta = bench_run["meta"]
    assert meta["machine"]["nproc"] >= 1 and meta["machine"]["cpu_model"] is not None
    assert meta["pgbouncer"]["default_pool_size"] == POOL_SIZE
    assert {"design", "direct", "pgbench"} <= set(bench_run["modes"])
    assert "users_run" in bench_run["targets"]


def test_bench_reports_every_endpoint_and_the_users_tasks(bench_run):
    design = bench_run["modes"]["design"]
    summary = design["users_summary"]
    for name in ("POST /api/generate-video", "GET /api/progress/{id}"):
        endpoint = summary["endpoints"][name]
        assert endpoint["requests"] > 0
        assert set(endpoint) >= {"status_codes", "client_errors", "p50_ms", "p95_ms", "p99_ms",
                                 "max_ms"}
    assert summary["requests_per_s"] > 0
    assert summary["client_errors"] == 0
    assert summary["tasks_seen_completed"] > 0
    assert summary["completed_tasks_per_min"] > 0
    drained = design["tasks_after_drain"]
    assert drained["lost"] == 0 and drained["stuck"] == 0
    assert len(design["timeline"]) >= 5


def test_bench_samples_postgres_pgbouncer_and_app_pools_every_second(bench_run):
    samples = bench_run["modes"]["design"]["samples"]
    assert len(samples) >= 4
    assert all({"t", "postgres", "pgbouncer", "app_pools", "cpu"} <= set(s) for s in samples)
    assert all(s["postgres"] is not None for s in samples)
    pools = [s["pgbouncer"] for s in samples if s["pgbouncer"]]
    assert pools and {"cl_active", "cl_waiting", "sv_active", "sv_idle", "maxwait_s"} <= set(
        pools[0])
    # Two API processes and the worker, each with its own /metrics.
    assert set(samples[-1]["app_pools"]) == {"api-0", "api-1", "worker-0"}
    scraped = [stats for s in samples for proc in s["app_pools"].values() if proc
               for stats in proc.values()]
    assert scraped and "requests_waiting" in scraped[0]


def test_server_connections_never_exceed_pgbouncer_pool_size(bench_run):
    design = bench_run["modes"]["design"]
    seen = [s["postgres"]["app"] for s in design["samples"]]
    assert max(seen) >= 1
    assert max(seen) <= POOL_SIZE
    assert design["connections"]["pg_app_connections_within_pool_size"] is True


def test_direct_mode_opens_its_own_connections_and_pgbench_gives_a_ceiling(bench_run):
    direct = bench_run["modes"]["direct"]
    # The original write-up's pools (min 10 per process) straight to PostgreSQL: past
    # PgBouncer's bound.
    assert direct["connections"]["pg_app_connections_max"] > POOL_SIZE
    assert direct["tasks_after_drain"]["lost"] == 0
    pgbench = bench_run["modes"]["pgbench"]
    assert pgbench["select_tps"] > 0 and pgbench["insert_tps"] > 0
