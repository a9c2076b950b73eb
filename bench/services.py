"""The system under test: a private stack on free ports, and the service processes on it.

PostgreSQL and PgBouncer start with the same code as `make up` (ops.stack.Stack), in
the run's own directory, so a benchmark never touches a dev stack on the default ports.
The API and worker run as `python -m service api|worker`, exactly as deployed, started
and stopped by ops.procs.ServiceProcess like the stack's and the tests' processes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from ops import procs
from ops.ports import free_port, free_ports, port_open
from ops.procs import START_TIMEOUT_S, STOP_TIMEOUT_S, ServiceProcess
from ops.stack import Stack
from service import show

__all__ = ["SEED_PREFIX", "Service", "ServiceProcess", "free_ports", "make_stack",
           "pgbouncer_pool_settings", "pgbouncer_totals", "reset_tasks", "seed", "seed_ids",
           "superuser_connect"]
# Rows seeded for the read path and pgbench: pending, never runnable, never terminal.
SEED_PREFIX = "bench-"
SEED_SQL = """
INSERT INTO video_generation_tasks
    (task_id, product_name, theme, duration, type, total_parts, run_after)
SELECT md5(%(prefix)s || n)::uuid, 'bench product ' || n, 'bench theme', 10, 'video', 2,
       'infinity'
FROM generate_series(1, %(rows)s) AS n
ON CONFLICT DO NOTHING
"""


def seed_ids(rows: int) -> list[str]:
    """The task ids SEED_SQL creates, computed the same way (md5 of prefix + n)."""
    import hashlib
    import uuid
    return [str(uuid.UUID(hashlib.md5(f"{SEED_PREFIX}{n}".encode()).hexdigest()))
            for n in range(1, rows + 1)]


def make_stack(root: Path, *, pool_size: int, pgbouncer_env: dict[str, str],
               files_dir: Path | None = None) -> Stack:
    """A Stack on free ports under root; PgBouncer's knobs from PGBOUNCER_* overrides.

    files_dir holds the worker's part files and the "videos" of the simulated provider:
    on tmpfs, so that the benchmark measures the service, not the disk's metadata speed
    (PostgreSQL's data stays under root, on disk).
    """
    files = files_dir or root
    return Stack.on_free_ports(
        root, pgbouncer_env={"PGBOUNCER_DEFAULT_POOL_SIZE": str(pool_size), **pgbouncer_env},
        media_dir=files / "media", work_dir=files / "work",
        # Every simulated user comes from one address: the per-user limits would make
        # them one user. The benchmark measures capacity, not the fairness rules.
        user_creates_per_minute=0, user_max_unfinished=0)


def pgbouncer_pool_settings(stack: Stack) -> dict[str, int]:
    values = stack.pgbouncer_values()
    return {name: int(values[name]) for name in (
        "default_pool_size", "reserve_pool_size", "reserve_pool_timeout",
        "max_db_connections", "max_client_conn", "query_wait_timeout")}


def app_user(stack: Stack) -> str:
    return str(conninfo_to_dict(stack.settings.database_direct_url)["user"])


def superuser_connect(stack: Stack, dbname: str | None = None) -> psycopg.Connection:
    db = dbname or str(conninfo_to_dict(stack.settings.database_direct_url)["dbname"])
    return psycopg.connect(stack.superuser_url(db), autocommit=True)


def reset_tasks(stack: Stack) -> None:
    """Empty the tasks table between modes so that each starts alike, and close
    PgBouncer's server connections: idle ones would linger (server_idle_timeout) and be
    counted against the next mode."""
    with superuser_connect(stack) as conn:
        conn.execute("TRUNCATE video_generation_tasks CASCADE")
        conn.execute("VACUUM ANALYZE video_generation_tasks")
    db = conninfo_to_dict(stack.settings.database_url)["dbname"]
    with psycopg.connect(stack.settings.pgbouncer_admin_url, autocommit=True,
                         cursor_factory=psycopg.ClientCursor) as admin:
        # KILL drops the database's client and server connections; RESUME lets new
        # clients in again.
        admin.execute(f"KILL {db}")
        admin.execute(f"RESUME {db}")


def seed(stack: Stack, rows: int) -> list[str]:
    with superuser_connect(stack) as conn:
        conn.execute(SEED_SQL, {"prefix": SEED_PREFIX, "rows": rows})
        conn.execute("VACUUM ANALYZE video_generation_tasks")
    return seed_ids(rows)


@dataclass
class Service:
    """The API (api_processes processes on one port) and the workers of one mode."""

    stack: Stack
    overrides: dict[str, Any]
    api_port: int = 0
    metrics_base_port: int = 0
    worker_metrics_ports: list[int] = field(default_factory=list)
    processes: list[ServiceProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def api_processes(self) -> int:
        return int(self.overrides.get("api_processes", 1))

    def metrics_urls(self) -> dict[str, str]:
        urls = {f"api-{i}": f"http://127.0.0.1:{self.metrics_base_port + i}/metrics"
                for i in range(self.api_processes)}
        for i, port in enumerate(self.worker_metrics_ports):
            urls[f"worker-{i}"] = f"http://127.0.0.1:{port}/metrics"
        return urls

    def start(self, *, workers: int, tag: str) -> None:
        self.api_port = free_port()
        self.metrics_base_port = free_ports(self.api_processes)
        for i in range(workers):
            port = free_port()
            self.worker_metrics_ports.append(port)
            self._spawn("worker", f"{tag}-worker-{i}", worker_metrics_port=port)
        self._spawn("api", f"{tag}-api", api_port=self.api_port,
                    metrics_port=self.metrics_base_port)
        deadline = time.monotonic() + START_TIMEOUT_S
        # Every API process must be up, not only the first to bind the port: each one's
        # metrics listen once its pool is open, just before it takes the API port.
        wanted = [self.api_port] + [self.metrics_base_port + i
                                    for i in range(self.api_processes)]
        while not all(port_open(port) for port in wanted):
            for p in self.processes:
                p.check_alive()
            if time.monotonic() > deadline:
                raise procs.StackError(f"the API did not listen within {START_TIMEOUT_S:.0f} s")
            time.sleep(0.05)
        time.sleep(0.3)

    def _spawn(self, command: str, name: str, **extra: Any) -> None:
        env = self.stack.app_env()
        values = {**self.overrides, **extra}
        env.update({key.upper(): str(value) for key, value in values.items()})
        self.processes.append(ServiceProcess.start(
            command, env=env, name=name, log_path=self.stack.log_dir / f"{name}.log"))

    def pids(self) -> list[int]:
        """The service's processes, forked API children included."""
        return [pid for p in self.processes for pid in (p.pid, *p.children())]

    def stop(self) -> None:
        # SIGTERM: the API drains, the worker hands unfinished tasks back.
        procs.stop_all(self.processes, STOP_TIMEOUT_S)
        self.processes.clear()


def pgbouncer_totals(stack: Stack) -> dict[str, int]:
    """SHOW STATS totals of the app's database (statements and transactions pooled)."""
    db = conninfo_to_dict(stack.settings.database_url)["dbname"]
    with psycopg.connect(stack.settings.pgbouncer_admin_url, autocommit=True,
                         cursor_factory=psycopg.ClientCursor) as conn:
        for row in show.show(conn, "STATS"):
            if row.get("database") == db:
                return {"xact": int(row["total_xact_count"]),
                        "query": int(row["total_query_count"])}
    return {"xact": 0, "query": 0}
