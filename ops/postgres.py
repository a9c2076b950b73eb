"""The stack's own PostgreSQL cluster: initdb once, pg_ctl start/stop, provisioning.

Never the OS package's cluster: its own data directory (STACK_DIR/pgdata), its own port
(POSTGRES_PORT, on 127.0.0.1) and its socket in the 0700 run directory, so the
superuser needs no password.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

from ops import provision
from ops.layout import Layout
from ops.procs import StackError, read_pid
from service.settings import Settings

SUPERUSER = "postgres"
Log = Callable[[str], object]


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


class Postgres:
    def __init__(self, layout: Layout, settings: Settings) -> None:
        self.layout = layout
        self.settings = settings
        self.pgdata = layout.pgdata

    def pid(self) -> int | None:
        return read_pid(self.pgdata / "postmaster.pid")

    def start(self, log: Log = print) -> None:
        port = self.settings.postgres_port
        if self.pid():
            log(f"postgres: already running on 127.0.0.1:{port}")
            return
        if not (self.pgdata / "PG_VERSION").exists():
            self._init_cluster()
        self._write_conf()
        logfile = self.layout.log_dir / "postgres.log"
        result = subprocess.run(
            self.layout.as_service_user([pg_bin("pg_ctl"), "start", "-w", "-t", "60",
                                         "-D", str(self.pgdata), "-l", str(logfile)]),
            capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StackError(f"PostgreSQL did not start: {result.stderr.strip()} "
                             f"(see {logfile})")
        log(f"postgres: started on 127.0.0.1:{port} (data {self.pgdata})")

    def stop(self, log: Log = print) -> None:
        if not self.pid():
            return
        subprocess.run(self.layout.as_service_user([pg_bin("pg_ctl"), "stop", "-w", "-m",
                                                    "fast", "-D", str(self.pgdata)]),
                       capture_output=True, check=False)
        log("postgres: stopped")

    def superuser_url(self, dbname: str = "postgres") -> str:
        # Over the Unix socket, which only the stack's user can reach (run_dir is 0700):
        # no superuser password exists.
        return (f"host={self.layout.run_dir} port={self.settings.postgres_port} "
                f"user={SUPERUSER} dbname={dbname}")

    def provision(self, pgbouncer_values: Mapping[str, str]) -> None:
        """Roles, database and PgBouncer's auth lookup (idempotent)."""
        provision.provision(self.superuser_url(), self.settings,
                            auth_user=pgbouncer_values["auth_user"],
                            auth_password=pgbouncer_values["auth_password"])

    def _init_cluster(self) -> None:
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self.layout.give_to_service_user(self.pgdata)
        self.pgdata.chmod(0o700)
        result = subprocess.run(
            self.layout.as_service_user([
                pg_bin("initdb"), "-D", str(self.pgdata), "-U", SUPERUSER, "-E", "UTF8",
                "--locale=C.UTF-8", "--auth-local=trust", "--auth-host=scram-sha-256"]),
            capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StackError(f"initdb failed: {result.stderr.strip()}")

    def _write_conf(self) -> None:
        # Rewritten on every start so that a changed port takes effect.
        conf = self.pgdata / "postgresql.stack.conf"
        conf.write_text(
            "# Written by ops/postgres.py on every start.\n"
            "listen_addresses = '127.0.0.1'\n"
            f"port = {self.settings.postgres_port}\n"
            f"unix_socket_directories = '{self.layout.run_dir}'\n"
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
        self.layout.give_to_service_user(conf)
