"""The benchmark, small: a few seconds, a few dozen users, every mode (waiting polls too).

Keeps `python -m bench` working and checks the claim it exists to prove: through
PgBouncer, PostgreSQL never sees more server connections for the app than PgBouncer's
default_pool_size, while the same service pointed straight at PostgreSQL opens its own.
The speed targets belong to the full benchmark, not to this test.
"""

from __future__ import annotations

import json
import re
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
            "--modes", "design,design-wait,direct,pgbench", "--part-seconds", "0.3",
            "--pool-size", str(POOL_SIZE), "--api-processes", "2",
            "--readpath-seconds", "2" if shutil.which("wrk") else "0",
            "--readpath-connections", "20", "--pgbench-seconds", "1",
            "--pgbench-clients", "4", "--no-restart", "--drain-timeout", "20",
            "--out", str(out)]
    proc = subprocess.run(argv, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=180,
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
    assert "design, waiting polls" in summary and "change-to-client delay" in summary
    meta = bench_run["meta"]
    assert meta["machine"]["nproc"] >= 1 and meta["machine"]["cpu_model"] is not None
    assert meta["pgbouncer"]["default_pool_size"] == POOL_SIZE
    assert {"design", "design-wait", "direct", "pgbench"} <= set(bench_run["modes"])
    assert {"users_run", "waiting_polls", "fewer_requests"} <= set(bench_run["targets"])


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


def test_waiting_polls_are_held_until_a_change_and_keep_the_bound(bench_run):
    wait = bench_run["modes"]["design-wait"]
    summary = wait["users_summary"]
    assert summary["client_errors"] == 0 and summary["other_error_responses"] == 0
    assert summary["tasks_seen_completed"] > 0
    # The API held the polls and answered them when their task changed.
    assert wait["server_waits"]["outcomes"].get("changed", 0) > 0
    assert summary["wait_outcomes"].get("changed", 0) > 0
    delay = summary["change_delay"]
    assert delay["changes_seen"] > 0 and delay["p99_ms"] is not None
    assert delay["min_ms"] >= 0  # same machine, same clock: never seen before it happened
    drained = wait["tasks_after_drain"]
    assert drained["lost"] == 0 and drained["stuck"] == 0
    assert wait["connections"]["pg_app_connections_max"] <= POOL_SIZE
    # Polling every second records the same delay, for the side-by-side.
    assert bench_run["modes"]["design"]["users_summary"]["change_delay"]["changes_seen"] > 0


def test_rehearsal_with_two_poolers_keeps_the_bound_and_loses_no_task(tmp_path):
    """`python -m bench rehearsal`, tiny (about 25 s): two PgBouncers, three APIs, three
    workers; one PgBouncer and one worker killed in each round (pinned, multihost)."""
    argv = [sys.executable, "-m", "bench", "rehearsal", "--users", "9", "--duration", "8",
            "--part-seconds", "0.3", "--lease", "3", "--bouncer-down", "1",
            "--pool-size", "3", "--out", str(tmp_path)]
    proc = subprocess.run(argv, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=90,
                          check=False)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    for routing in ("pinned", "multihost"):
        assert re.search(rf"^bound \({routing}\): .* max \d+ <= 2 x default_pool_size = 6: OK$",
                         proc.stdout, re.MULTILINE), proc.stdout
    rounds = json.loads((tmp_path / "results.json").read_text())["rounds"]
    for r in rounds.values():
        assert r["connections"]["pg_app_max"] <= 6
        assert r["tasks"]["lost"] == 0 and r["tasks"]["not_completed"] == 0
        assert r["tasks"]["victim_claims_expired"] >= 1  # the killed worker's, rescued
