"""The local stack without Docker: a private PostgreSQL cluster, PgBouncer, API and worker.

    python -m ops.stack up       start what is not running (detached), leave the rest alone
    python -m ops.stack down     stop everything the stack started
    python -m ops.stack run      up, then follow the logs; Ctrl-C stops it all
    python -m ops.stack status   what runs where
    python -m ops.stack render-pgbouncer    rewrite pgbouncer.ini (then ops/pgbouncer-reload)
    python -m ops.stack restart-pgbouncer   stop and start PgBouncer

Data, logs and pid files live under STACK_DIR (default .stack/). The OS packages' own
PostgreSQL and PgBouncer services are never used or touched: the stack runs its own
instances on its own ports (POSTGRES_PORT, PGBOUNCER_PORT, API_PORT). PostgreSQL and
PgBouncer refuse to run as root, so as root they run as the `postgres` system user.
The tests use the same class on throwaway directories and free ports.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from ops import provision
from pgbouncer import render
from service import migrate
from service.settings import PROJECT_DIR, Settings

SUPERUSER = "postgres"
# Environment variables that configure a stack or the app, dropped for private stacks.
_STACK_ENV_PREFIXES = ("PGBOUNCER_", "DATABASE_", "POSTGRES_", "API_", "METRICS_",
                       "WORKER_", "APP_POOL_", "VIDEO_", "ARK_", "STORAGE_", "S3_", "AWS_")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0


class StackError(Exception):
    """Raised when a part of the stack cannot start; the message says what to do."""


def pg_bin(name: str) -> str:
    """A PostgreSQL server program: the newest installed major version, else PATH."""
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
                        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if candidates:
        return str(candidates[-1])
    found = shutil.which(name)
    if not found:
        raise StackError(f"{name} not found: run `make bootstrap` to install PostgreSQL")
    return found


def pgbouncer_bin() -> str:
    found = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer"
                                          if Path("/usr/sbin/pgbouncer").exists() else None)
    if not found:
        raise StackError("pgbouncer not found: run `make bootstrap` to install PgBouncer")
    return found


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.3)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is gone for our purposes.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z"):
            return False
    return True


def read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid_alive(pid) else None


def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise StackError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.05)


def load_dotenv(path: Path, environ: dict[str, str]) -> None:
    """KEY=VALUE lines of .env, without overriding what the environment already says."""
    if not path.exists():
        return
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        environ.setdefault(key.strip(), value.strip().strip("'\""))


@dataclass
class Stack:
    root: Path
    settings: Settings
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    python: str = sys.executable

    @classmethod
    def on_free_ports(cls, root: Path, *, pgbouncer_env: Mapping[str, str],
                      **settings: object) -> Stack:
        """A private stack under root on free ports, for tests and benchmarks.

        The caller's own stack and app settings (a developer's .env, a running `make up`)
        must not leak in, so they are dropped from the environment it passes on.
        """
        values: dict[str, object] = {
            "postgres_port": free_port(), "pgbouncer_port": free_port(),
            "api_port": free_port(), "metrics_port": free_port(),
            "worker_metrics_port": free_port(), "public_base_url": "http://127.0.0.1:0",
            "media_dir": root / "media", "work_dir": root / "work",
        }
        values.update(settings)
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(_STACK_ENV_PREFIXES)}
        env.update(pgbouncer_env)
        return cls(root=root, settings=Settings(**values), env=env)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        self.root = self.root.resolve()
        self.pgdata = self.root / "pgdata"
        self.run_dir = self.root / "run"
        self.log_dir = self.root / "logs"
        self.pgbouncer_dir = self.root / "pgbouncer"
        # PostgreSQL and PgBouncer refuse to run as root.
        self.service_user = SUPERUSER if os.geteuid() == 0 else None

    # --- the whole stack -------------------------------------------------------------

    def up(self, *, app: bool = True, log=print) -> None:
        self._check_ports(app=app)
        self._prepare_dirs()
        self.start_postgres(log)
        self.provision()
        self.start_pgbouncer(log)
        applied = migrate.migrate(self.settings)
        if applied:
            log(f"migrations applied: {', '.join(applied)}")
        if app:
            self.start_app_process("api", log)
            self.start_app_process("worker", log)

    def down(self, log=print) -> None:
        for name in ("worker", "api"):
            self.stop_app_process(name, log)
        self.stop_pgbouncer(log)
        self.stop_postgres(log)

    def status(self) -> dict[str, str]:
        return {
            "postgres": self._describe(self.postgres_pid(), self.settings.postgres_port),
            "pgbouncer": self._describe(self.pgbouncer_pid(), self.settings.pgbouncer_port),
            "api": self._describe(read_pid(self._pidfile("api")), self.settings.api_port),
            "worker": self._describe(read_pid(self._pidfile("worker")), None),
        }

    @staticmethod
    def _describe(pid: int | None, port: int | None) -> str:
        if pid is None:
            return "stopped"
        return f"running (pid {pid}" + (f", 127.0.0.1:{port})" if port else ")")

    def _prepare_dirs(self) -> None:
        for path in (self.root, self.run_dir, self.log_dir, self.pgbouncer_dir,
                     self.settings.media_dir, self.settings.work_dir):
            path.mkdir(parents=True, exist_ok=True)
        if self.service_user:
            account = pwd.getpwnam(self.service_user)
            for path in (self.root, self.run_dir, self.log_dir, self.pgbouncer_dir):
                os.chown(path, account.pw_uid, account.pw_gid)
            # The service user must be able to reach the stack directory.
            for parent in self.root.parents:
                if parent.stat().st_mode & 0o001 == 0 and parent != Path("/"):
                    raise StackError(
                        f"{parent} is not searchable by {self.service_user}: "
                        f"chmod o+x {parent}, or set STACK_DIR to a directory outside it")
        os.chmod(self.run_dir, 0o700)

    def _as_service_user(self, argv: list[str]) -> list[str]:
        if self.service_user:
            return ["runuser", "-u", self.service_user, "--", *argv]
        return argv

    def _check_ports(self, *, app: bool) -> None:
        """Before starting anything: every part that is not running needs its port free."""
        s = self.settings
        if not self.postgres_pid():
            self._check_port_free(s.postgres_port, "PostgreSQL", "POSTGRES_PORT")
        if not self.pgbouncer_pid():
            self._check_port_free(s.pgbouncer_port, "PgBouncer", "PGBOUNCER_PORT")
        if app and not read_pid(self._pidfile("api")):
            self._check_port_free(s.api_port, "the API", "API_PORT")

    def _check_port_free(self, port: int, what: str, setting: str) -> None:
        if port_open(port):
            raise StackError(
                f"port {port} wanted by {what} is already in use by another program "
                f"(the OS package's own service?). Choose another port: "
                f"{setting}={port + 1} make up  (or put {setting} in .env)")

    # --- PostgreSQL ------------------------------------------------------------------

    def postgres_pid(self) -> int | None:
        return read_pid(self.pgdata / "postmaster.pid")

    def start_postgres(self, log=print) -> None:
        if self.postgres_pid():
            log(f"postgres: already running on 127.0.0.1:{self.settings.postgres_port}")
            return
        self._check_port_free(self.settings.postgres_port, "PostgreSQL", "POSTGRES_PORT")
        if not (self.pgdata / "PG_VERSION").exists():
            self._init_cluster()
        self._write_postgres_conf()
        logfile = self.log_dir / "postgres.log"
        result = subprocess.run(
            self._as_service_user([pg_bin("pg_ctl"), "start", "-w", "-t", "60",
                                   "-D", str(self.pgdata), "-l", str(logfile)]),
            capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StackError(f"PostgreSQL did not start: {result.stderr.strip()} "
                             f"(see {logfile})")
        log(f"postgres: started on 127.0.0.1:{self.settings.postgres_port} (data {self.pgdata})")

    def _init_cluster(self) -> None:
        self.pgdata.mkdir(parents=True, exist_ok=True)
        if self.service_user:
            account = pwd.getpwnam(self.service_user)
            os.chown(self.pgdata, account.pw_uid, account.pw_gid)
        os.chmod(self.pgdata, 0o700)
        result = subprocess.run(
            self._as_service_user([
                pg_bin("initdb"), "-D", str(self.pgdata), "-U", SUPERUSER, "-E", "UTF8",
                "--locale=C.UTF-8", "--auth-local=trust", "--auth-host=scram-sha-256"]),
            capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StackError(f"initdb failed: {result.stderr.strip()}")

    def _write_postgres_conf(self) -> None:
        # Rewritten on every start so that a changed port takes effect.
        conf = self.pgdata / "postgresql.stack.conf"
        conf.write_text(
            "# Written by ops/stack.py on every start.\n"
            "listen_addresses = '127.0.0.1'\n"
            f"port = {self.settings.postgres_port}\n"
            f"unix_socket_directories = '{self.run_dir}'\n"
            "max_connections = 100\n"
            "superuser_reserved_connections = 3\n"
            "shared_buffers = 128MB\n"
            "password_encryption = 'scram-sha-256'\n"
            "log_min_duration_statement = 1000\n"
            "log_line_prefix = '%m [%p] %q%u@%d/%a '\n")
        main_conf = self.pgdata / "postgresql.conf"
        include = "include_if_exists = 'postgresql.stack.conf'"
        if include not in main_conf.read_text():
            with main_conf.open("a") as f:
                f.write(f"\n{include}\n")
        if self.service_user:
            account = pwd.getpwnam(self.service_user)
            os.chown(conf, account.pw_uid, account.pw_gid)

    def superuser_url(self, dbname: str = "postgres") -> str:
        # Over the Unix socket, which only the stack's user can reach (run_dir is 0700):
        # no superuser password exists.
        return f"host={self.run_dir} port={self.settings.postgres_port} user={SUPERUSER} " \
               f"dbname={dbname}"

    def provision(self) -> None:
        provision.provision(self.superuser_url(), self.settings,
                            auth_user=self.pgbouncer_values()["auth_user"],
                            auth_password=self.pgbouncer_values()["auth_password"])

    def stop_postgres(self, log=print) -> None:
        if not self.postgres_pid():
            return
        subprocess.run(self._as_service_user([pg_bin("pg_ctl"), "stop", "-w", "-m", "fast",
                                              "-D", str(self.pgdata)]),
                       capture_output=True, check=False)
        log("postgres: stopped")

    # --- PgBouncer -------------------------------------------------------------------

    def pgbouncer_values(self) -> dict[str, str]:
        values = render.settings_from_env(self.env)
        values.update(
            listen_addr="127.0.0.1",
            listen_port=str(self.settings.pgbouncer_port),
            db_host="127.0.0.1",
            db_port=str(self.settings.postgres_port),
            run_dir=str(self.run_dir),
            unix_socket_dir="",
        )
        admin = psycopg.conninfo.conninfo_to_dict(self.settings.pgbouncer_admin_url)
        values["admin_user"] = admin.get("user", values["admin_user"])
        values["admin_password"] = admin.get("password", values["admin_password"])
        return values

    def pgbouncer_pid(self) -> int | None:
        return read_pid(self.run_dir / "pgbouncer.pid")

    def start_pgbouncer(self, log=print) -> None:
        if self.pgbouncer_pid():
            log(f"pgbouncer: already running on 127.0.0.1:{self.settings.pgbouncer_port}")
            return
        self._check_port_free(self.settings.pgbouncer_port, "PgBouncer", "PGBOUNCER_PORT")
        # Left by a PgBouncer that was killed (or is a zombie): it would refuse to start.
        (self.run_dir / "pgbouncer.pid").unlink(missing_ok=True)
        self.render_pgbouncer(log=lambda _msg: None)
        ini = self.pgbouncer_dir / "pgbouncer.ini"
        result = subprocess.run(self._as_service_user([pgbouncer_bin(), "-d", str(ini)]),
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StackError(f"PgBouncer did not start: {result.stderr.strip()} "
                             f"(see {self.run_dir / 'pgbouncer.log'})")
        wait_until(lambda: port_open(self.settings.pgbouncer_port), START_TIMEOUT_S,
                   f"PgBouncer on port {self.settings.pgbouncer_port}")
        log(f"pgbouncer: started on 127.0.0.1:{self.settings.pgbouncer_port} (transaction mode)")

    def stop_pgbouncer(self, log=print, *, sig: signal.Signals = signal.SIGINT) -> None:
        """SIGINT is PgBouncer's safe shutdown on every version (SIGTERM changed in 1.23)."""
        pid = self.pgbouncer_pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        try:
            wait_until(lambda: not pid_alive(pid), 10, "PgBouncer to stop")
        except StackError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # The port can outlive the process for a moment; wait for it to close. A killed
        # PgBouncer leaves its pid file, which would stop the next start.
        wait_until(lambda: not port_open(self.settings.pgbouncer_port), 10,
                   "PgBouncer's port to close")
        (self.run_dir / "pgbouncer.pid").unlink(missing_ok=True)
        log("pgbouncer: stopped")

    def render_pgbouncer(self, log=print) -> None:
        """Rewrite pgbouncer.ini from the current settings; RELOAD applies it online."""
        ini, auth = render.render(self.pgbouncer_values(), self.pgbouncer_dir)
        if self.service_user:
            account = pwd.getpwnam(self.service_user)
            for path in (ini, auth):
                os.chown(path, account.pw_uid, account.pw_gid)
        log(f"pgbouncer: rendered {ini}; apply with ops/pgbouncer-reload")

    def restart_pgbouncer(self, log=print) -> None:
        self.stop_pgbouncer(log, sig=signal.SIGQUIT)
        self.start_pgbouncer(log)

    # --- API and worker --------------------------------------------------------------

    def _pidfile(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def app_env(self) -> dict[str, str]:
        env = dict(self.env)
        env.update(
            POSTGRES_PORT=str(self.settings.postgres_port),
            PGBOUNCER_PORT=str(self.settings.pgbouncer_port),
            DATABASE_URL=self.settings.database_url,
            DATABASE_DIRECT_URL=self.settings.database_direct_url,
            PGBOUNCER_ADMIN_URL=self.settings.pgbouncer_admin_url,
            API_PORT=str(self.settings.api_port),
            MEDIA_DIR=str(self.settings.media_dir),
            WORK_DIR=str(self.settings.work_dir),
            PYTHONUNBUFFERED="1",
        )
        return env

    def start_app_process(self, name: str, log=print) -> subprocess.Popen | None:
        pidfile = self._pidfile(name)
        if read_pid(pidfile):
            log(f"{name}: already running")
            return None
        if name == "api":
            self._check_port_free(self.settings.api_port, "the API", "API_PORT")
        logfile = (self.log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen([self.python, "-m", "service", name], env=self.app_env(),
                                stdout=logfile, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                cwd=PROJECT_DIR)
        logfile.close()
        pidfile.write_text(str(proc.pid))
        if name == "api":
            def api_ready() -> bool:
                if proc.poll() is not None:
                    raise StackError(f"the API exited at start: see {self.log_dir / 'api.log'}")
                return port_open(self.settings.api_port)
            wait_until(api_ready, START_TIMEOUT_S, f"the API on port {self.settings.api_port}")
            log(f"api: listening on {self.settings.public_base_url}")
        else:
            log(f"{name}: started (pid {proc.pid})")
        return proc

    def stop_app_process(self, name: str, log=print) -> None:
        pidfile = self._pidfile(name)
        pid = read_pid(pidfile)
        if pid is not None:
            # SIGTERM: the API drains requests, the worker hands unfinished tasks back.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            try:
                wait_until(lambda: not pid_alive(pid), STOP_TIMEOUT_S, f"{name} to stop")
            except StackError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            log(f"{name}: stopped")
        pidfile.unlink(missing_ok=True)


def stack_from_env() -> Stack:
    environ = dict(os.environ)
    load_dotenv(PROJECT_DIR / ".env", environ)
    os.environ.update(environ)
    settings = Settings.from_env(environ)
    root = Path(environ.get("STACK_DIR", PROJECT_DIR / ".stack"))
    return Stack(root=root, settings=settings, env=environ)


def _follow(paths: list[Path]) -> None:
    """Print what the processes log until interrupted."""
    handles = []
    for path in paths:
        f = path.open("r", errors="replace")
        f.seek(0, os.SEEK_END)
        handles.append((path.stem, f))
    while True:
        quiet = True
        for name, f in handles:
            for line in f.readlines():
                quiet = False
                print(f"{name:>6} | {line}", end="")
        if quiet:
            time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The local stack without Docker.")
    parser.add_argument("command", choices=["up", "down", "run", "status", "render-pgbouncer",
                                            "restart-pgbouncer"])
    args = parser.parse_args(argv)
    try:
        stack = stack_from_env()
        if args.command == "up":
            stack.up()
            _print_urls(stack)
        elif args.command == "down":
            stack.down()
        elif args.command == "status":
            for part, state in stack.status().items():
                print(f"{part:>9}: {state}")
        elif args.command == "render-pgbouncer":
            stack.render_pgbouncer()
        elif args.command == "restart-pgbouncer":
            stack.restart_pgbouncer()
        else:
            return _run_foreground(stack)
    except StackError as exc:
        print(f"stack: {exc}", file=sys.stderr)
        return 1
    return 0


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _run_foreground(stack: Stack) -> int:
    # Explicit: a shell that starts us in the background leaves SIGINT ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        stack.up()
        _print_urls(stack)
        print("Ctrl-C stops the whole stack.\n")
        _follow([stack.log_dir / "api.log", stack.log_dir / "worker.log"])
    except KeyboardInterrupt:
        print()
    except StackError as exc:
        print(f"stack: {exc}", file=sys.stderr)
        stack.down()
        return 1
    stack.down()
    return 0


def _print_urls(stack: Stack) -> None:
    s = stack.settings
    print(f"""
  API          {s.public_base_url}/api/generate-video   (POST)
               {s.public_base_url}/api/progress/<task_id>
  health       {s.public_base_url}/healthz  {s.public_base_url}/readyz
  metrics      http://{s.metrics_host}:{s.metrics_port}/metrics
  PgBouncer    127.0.0.1:{s.pgbouncer_port}  (console: psql "{_redacted(s.pgbouncer_admin_url)}")
  PostgreSQL   127.0.0.1:{s.postgres_port}
  doctor       .venv/bin/python -m service doctor
  logs         {stack.log_dir}/
""")


def _redacted(url: str) -> str:
    from service.settings import redact_url
    return redact_url(url)


if __name__ == "__main__":
    sys.exit(main())
