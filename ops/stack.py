"""The local stack without Docker: PostgreSQL, PgBouncer, the API and a worker.

    video-tasks stack up | down | run | status | render-pgbouncer | restart-pgbouncer

`Stack` puts the parts together: ops.postgres (the cluster), ops.bouncer (PgBouncer),
ops.apps (the API and worker processes), ops.ports (every listener checked before
anything starts), ops.layout (STACK_DIR). The OS packages' own PostgreSQL and PgBouncer
are never used or touched. The tests and the benchmark run the same class on throwaway
directories and free ports (`Stack.on_free_ports`).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from ops import ports
from ops.apps import AppProcesses
from ops.bouncer import Bouncer
from ops.layout import Layout
from ops.ports import free_port, port_open
from ops.postgres import Postgres
from ops.procs import ServiceProcess, StackError, children, pid_alive, read_pid, wait_until
from service import migrate
from service import settings as settings_module
from service.settings import PROJECT_DIR, Settings

__all__ = ["Stack", "StackError", "free_port", "pid_alive", "port_open", "read_pid",
           "settings_env", "wait_until"]

Log = Callable[[str], object]
DEFAULT_STACK_DIR = PROJECT_DIR / ".stack"
# Variables that configure a stack or the app besides the settings' own names: dropped
# from the environment of a private stack (tests, benchmark), with the .env file.
_STACK_ENV_PREFIXES = ("PGBOUNCER_", "DATABASE_", "POSTGRES_", "API_", "METRICS_",
                       "WORKER_", "APP_POOL_", "VIDEO_", "ARK_", "STORAGE_", "S3_", "AWS_",
                       "SIMULATED_", "DOCTOR_")
# Derived from the ports when unset; passed on only when set to something else.
_DERIVED = ("database_url", "database_direct_url", "database_owner_url", "pgbouncer_admin_url",
            "public_base_url")


def settings_env(settings: Settings) -> dict[str, str]:
    """Settings as the environment variables that give them back (Settings.from_env)."""
    rederived = settings.replace(**dict.fromkeys(_DERIVED, ""))
    env = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        if f.name in _DERIVED and value == getattr(rederived, f.name):
            continue
        env[f.name.upper()] = str(value)
    return env


@dataclass
class Stack:
    root: Path
    settings: Settings
    # The environment the settings came from: PGBOUNCER_* for the renderer, and the base
    # of the API's and worker's environment.
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    python: str = sys.executable

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Stack:
        """The stack of `make up`: settings from the environment and .env, STACK_DIR."""
        environ = settings_module.load_environ() if environ is None else dict(environ)
        root = Path(environ.get("STACK_DIR") or DEFAULT_STACK_DIR)
        return cls(root=root, settings=Settings.from_env(environ), env=environ)

    @classmethod
    def on_free_ports(cls, root: Path, *, pgbouncer_env: Mapping[str, str],
                      **settings: object) -> Stack:
        """A private stack under root on free ports, for tests and benchmarks.

        The caller's own stack and app settings (a developer's .env, a running `make up`)
        must not leak in: they are dropped from the environment it passes on, and its
        processes read no .env.
        """
        values: dict[str, object] = {
            "postgres_port": free_port(), "pgbouncer_port": free_port(),
            "api_port": free_port(), "metrics_port": free_port(),
            "worker_metrics_port": free_port(),
            "media_dir": root / "media", "work_dir": root / "work",
        }
        values.update(settings)
        names = {f.name.upper() for f in fields(Settings)} | {"STACK_DIR"}
        env = {key: value for key, value in os.environ.items()
               if key not in names and not key.startswith(_STACK_ENV_PREFIXES)}
        env[settings_module.ENV_FILE_VARIABLE] = ""
        env.update(pgbouncer_env)
        return cls(root=root, settings=Settings(**values), env=env)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        self.layout = Layout(self.root)
        self.root = self.layout.root
        self.pgdata = self.layout.pgdata
        self.run_dir = self.layout.run_dir
        self.log_dir = self.layout.log_dir
        self.pgbouncer_dir = self.layout.pgbouncer_dir
        self.service_user = self.layout.service_user
        self.postgres = Postgres(self.layout, self.settings)
        self.pgbouncer = Bouncer(self.layout, self.settings, self.env)
        self.apps = AppProcesses(self.layout, self.settings, self.app_env, self.python)

    # --- the whole stack -------------------------------------------------------------

    def up(self, *, app: bool = True, log: Log = print) -> None:
        """Start what is not running (every port checked first), leave the rest alone."""
        self.check_ports(app=app)
        self.layout.prepare(self.settings.media_dir, self.settings.work_dir)
        self.start_postgres(log)
        self.provision()
        self.start_pgbouncer(log)
        applied = migrate.migrate(self.settings)
        if applied:
            log(f"migrations applied: {', '.join(applied)}")
        if app:
            self.start_app_process("api", log)
            self.start_app_process("worker", log)

    def down(self, log: Log = print) -> None:
        for name in ("worker", "api"):
            self.stop_app_process(name, log)
        self.stop_pgbouncer(log)
        self.stop_postgres(log)

    def status(self) -> dict[str, str]:
        s = self.settings
        api_pid = self.apps.pid("api")
        api_children = len(children(api_pid)) if api_pid else 0
        return {
            "postgres": _describe(self.postgres_pid(), f"127.0.0.1:{s.postgres_port}"),
            "pgbouncer": _describe(self.pgbouncer_pid(), f"127.0.0.1:{s.pgbouncer_port}"),
            "api": _describe(api_pid, f"{s.api_host}:{s.api_port}"
                             + (f", {api_children} processes" if api_children else "")),
            "worker": _describe(self.apps.pid("worker"),
                                f"metrics {s.metrics_host}:{s.worker_metrics_port}"
                                if s.worker_metrics_port else None),
        }

    def listeners(self, *, app: bool = True) -> list[ports.Listener]:
        return ports.stack_listeners(self.settings, api=app, worker=app)

    def check_ports(self, *, app: bool = True) -> None:
        """Before starting anything: no two settings name one port, and every part that
        is not running finds all its ports free. Every problem in one StackError."""
        planned = self.listeners(app=app)
        problems = ports.conflicts(planned)
        if not problems:
            wanted = ports.stack_listeners(
                self.settings, postgres=not self.postgres_pid(),
                pgbouncer=not self.pgbouncer_pid(), api=app and not self.apps.pid("api"),
                worker=app and not self.apps.pid("worker"))
            problems = ports.check_free(wanted, all_listeners=planned)
        if problems:
            raise StackError("\n".join(problems))

    def _check_free(self, listener: ports.Listener) -> None:
        problems = ports.check_free([listener], all_listeners=self.listeners())
        if problems:
            raise StackError("\n".join(problems))

    # --- PostgreSQL ------------------------------------------------------------------

    def postgres_pid(self) -> int | None:
        return self.postgres.pid()

    def start_postgres(self, log: Log = print) -> None:
        if not self.postgres_pid():
            self._check_free(self.listeners(app=False)[0])
        self.postgres.start(log)

    def stop_postgres(self, log: Log = print) -> None:
        self.postgres.stop(log)

    def superuser_url(self, dbname: str = "postgres") -> str:
        return self.postgres.superuser_url(dbname)

    def provision(self) -> None:
        self.postgres.provision(self.pgbouncer_values())

    # --- PgBouncer -------------------------------------------------------------------

    def pgbouncer_values(self) -> dict[str, str]:
        return self.pgbouncer.values()

    def pgbouncer_pid(self) -> int | None:
        return self.pgbouncer.pid()

    def start_pgbouncer(self, log: Log = print) -> None:
        if not self.pgbouncer_pid():
            self._check_free(self.listeners(app=False)[1])
        self.pgbouncer.start(log)

    def stop_pgbouncer(self, log: Log = print, *, sig: signal.Signals = signal.SIGINT) -> None:
        self.pgbouncer.stop(log, sig=sig)

    def render_pgbouncer(self, log: Log = print) -> None:
        self.pgbouncer.render(log)

    def restart_pgbouncer(self, log: Log = print) -> None:
        self.pgbouncer.restart(log)

    # --- API and worker --------------------------------------------------------------

    def app_env(self) -> dict[str, str]:
        """The environment of the stack's API and worker: every setting of the stack,
        explicit, and no .env to read again (what ops/rolling-restart copies)."""
        env = dict(self.env)
        env.update(settings_env(self.settings))
        env[settings_module.ENV_FILE_VARIABLE] = ""
        return env

    def start_app_process(self, name: str, log: Log = print) -> ServiceProcess | None:
        return self.apps.start(name, log)

    def stop_app_process(self, name: str, log: Log = print) -> None:
        self.apps.stop(name, log)


def _describe(pid: int | None, where: str | None) -> str:
    if pid is None:
        return "stopped"
    return f"running (pid {pid}" + (f", {where})" if where else ")")


if __name__ == "__main__":
    # `python -m ops.stack CMD` = `video-tasks stack CMD`, for the advice that still names it.
    from ops import cli
    sys.exit(cli.main(["stack", *sys.argv[1:]]))
