"""`python -m bench`: run the benchmark; every figure goes to --out (JSON, PNG, Markdown).

    python -m bench                                   # 1000 users, 60 s, default modes
    python -m bench --users 300 --duration 20 --modes design
    python -m bench --find-capacity --modes ""        # only the capacity search
    python -m bench --compare-wait --users 1500 --part-seconds 30 --duration 150
                                                      # polling every second vs waiting
    python -m bench rehearsal                         # two PgBouncers, kills (bench/rehearsal.py)
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from bench import report
from bench import run as bench_run
from service.settings import Settings


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def _modes(text: str) -> tuple[str, ...]:
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = set(modes) - set(bench_run.MODES)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown modes {sorted(unknown)}; "
                                         f"choose from {','.join(bench_run.MODES)}")
    return modes


def parse(argv: list[str] | None = None) -> bench_run.Options:
    d = bench_run.Options()
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=d.users, help="concurrent users (%(default)s)")
    p.add_argument("--duration", type=float, default=d.duration_s,
                   help="seconds the users run, ramp included (%(default)s)")
    p.add_argument("--ramp", type=float, default=d.ramp_fraction,
                   help="share of the run over which users start (%(default)s)")
    p.add_argument("--modes", type=_modes, default=d.modes,
                   help=f"comma-separated, in order, of {','.join(bench_run.MODES)} "
                        f"(default: {','.join(d.modes)})")
    p.add_argument("--wait", type=float, default=d.wait_s,
                   help="seconds a waiting poll asks to be held (design-wait; %(default)s)")
    p.add_argument("--compare-wait", action="store_true",
                   help="polling every second and waiting polls side by side: "
                        "--modes design,design-wait --readpath-seconds 0 --no-restart")
    p.add_argument("--part-seconds", type=float, default=d.part_seconds,
                   help="simulated provider wait per part (%(default)s)")
    p.add_argument("--video-seconds", type=_ints, default=d.video_seconds,
                   help="duration the users ask for; parts = ceil(it / 5) (10); several, "
                        "comma-separated: each user asks for them in turn")
    service = Settings()
    p.add_argument("--api-processes", type=int, default=d.api_processes,
                   help=f"API processes sharing the port (%(default)s; the service's "
                        f"default: {service.api_processes})")
    p.add_argument("--workers", type=int, default=d.workers, help="worker processes")
    p.add_argument("--worker-concurrency", type=int, default=None,
                   help="tasks per worker at once (default: the number of users)")
    p.add_argument("--pool-size", type=int, default=d.pool_size,
                   help="PgBouncer default_pool_size (%(default)s)")
    p.add_argument("--app-pool-max", type=int, default=d.app_pool_max,
                   help=f"the service's pool per process (%(default)s; 0: the service's "
                        f"default, {service.app_pool_max})")
    p.add_argument("--readpath-seconds", type=int, default=d.readpath_s,
                   help="wrk run per service mode; 0 skips it (%(default)s)")
    p.add_argument("--readpath-connections", type=int, default=d.readpath_connections)
    p.add_argument("--pgbench-seconds", type=int, default=d.pgbench_s)
    p.add_argument("--pgbench-clients", type=_ints, default=d.pgbench_clients,
                   help="comma-separated client counts; the best is the ceiling (10,32)")
    p.add_argument("--restart-downtimes", type=_floats, default=d.restart_downtimes,
                   help="seconds PgBouncer stays down in each restart probe (0,3)")
    p.add_argument("--no-restart", action="store_true", help="skip the PgBouncer restart probes")
    p.add_argument("--drain-timeout", type=float, default=d.drain_timeout_s,
                   help="seconds to wait for started tasks after the users stop "
                        "(at least one task's length + 30 s)")
    p.add_argument("--find-capacity", action="store_true",
                   help="after the modes, step users up until a step fails")
    p.add_argument("--capacity-steps", type=_ints, default=d.capacity_steps,
                   help="users per step (200,300,500,700,1000)")
    p.add_argument("--capacity-duration", type=float, default=d.capacity_duration_s,
                   help="seconds per step (%(default)s)")
    p.add_argument("--capacity-all", action="store_true",
                   help="run every step even after one fails")
    p.add_argument("--service-log-level", default=d.service_log_level)
    p.add_argument("--out", type=Path, default=None,
                   help="output directory (bench/results/<UTC time>)")
    a = p.parse_args(argv)
    if a.users < 1 or a.duration <= 0 or a.api_processes < 1 or a.workers < 1:
        p.error("--users, --duration, --api-processes and --workers must be positive")
    if a.compare_wait:
        a.modes, a.readpath_seconds, a.no_restart = ("design", "design-wait"), 0, True
    if not a.video_seconds:
        p.error("--video-seconds needs at least one duration")
    if a.wait <= 0:
        p.error("--wait must be positive")
    out = a.out or Path("bench/results") / dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return bench_run.Options(
        users=a.users, duration_s=a.duration, ramp_fraction=a.ramp, modes=a.modes,
        part_seconds=a.part_seconds, video_seconds=a.video_seconds, wait_s=a.wait,
        api_processes=a.api_processes, workers=a.workers,
        worker_concurrency=a.worker_concurrency, pool_size=a.pool_size,
        app_pool_max=a.app_pool_max or None, readpath_s=a.readpath_seconds,
        readpath_connections=a.readpath_connections, pgbench_s=a.pgbench_seconds,
        pgbench_clients=a.pgbench_clients or d.pgbench_clients,
        restart_downtimes=() if a.no_restart else a.restart_downtimes,
        drain_timeout_s=a.drain_timeout, find_capacity=a.find_capacity,
        capacity_steps=a.capacity_steps, capacity_duration_s=a.capacity_duration,
        capacity_stop_at_failure=not a.capacity_all, service_log_level=a.service_log_level,
        out=out.resolve())


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["rehearsal"]:
        from bench import rehearsal
        return rehearsal.main(args[1:])
    options = parse(argv)
    results = bench_run.run(options)
    paths = report.write(results, options.out)
    print(paths["summary"].read_text())
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
