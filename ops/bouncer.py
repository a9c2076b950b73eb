"""The stack's own PgBouncer: its ini rendered from the settings, start, safe stop, restart.

The ini comes from pgbouncer/render.py (the one renderer, also used by the compose
image) with the PGBOUNCER_* variables of the same environment the settings were read
from, and the stack's own ports and run directory.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

from ops import ports
from ops.layout import Layout
from ops.procs import START_TIMEOUT_S, StackError, read_pid, stop_pid, wait_until
from pgbouncer import render
from service.settings import Settings

Log = Callable[[str], object]
# PgBouncer's safe shutdown (SIGINT) waits for transactions; this long, then SIGKILL.
STOP_TIMEOUT_S = 10.0


def pgbouncer_bin() -> str:
    found = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer"
                                          if Path("/usr/sbin/pgbouncer").exists() else None)
    if not found:
        raise StackError("pgbouncer not found: run `make bootstrap` to install PgBouncer")
    return found


class Bouncer:
    def __init__(self, layout: Layout, settings: Settings, env: Mapping[str, str]) -> None:
        self.layout = layout
        self.settings = settings
        self.env = env
        self.pidfile = layout.run_dir / "pgbouncer.pid"

    def values(self) -> dict[str, str]:
        """The renderer's values: PGBOUNCER_* from the environment, the stack's own ports,
        run directory and console user."""
        values = render.settings_from_env(self.env)
        values.update(
            listen_addr="127.0.0.1",
            listen_port=str(self.settings.pgbouncer_port),
            db_host="127.0.0.1",
            db_port=str(self.settings.postgres_port),
            run_dir=str(self.layout.run_dir),
            unix_socket_dir="",
        )
        admin = conninfo_to_dict(self.settings.pgbouncer_admin_url)
        values["admin_user"] = str(admin.get("user", values["admin_user"]))
        values["admin_password"] = str(admin.get("password", values["admin_password"]))
        return values

    def pid(self) -> int | None:
        return read_pid(self.pidfile)

    def start(self, log: Log = print) -> None:
        port = self.settings.pgbouncer_port
        if self.pid():
            log(f"pgbouncer: already running on 127.0.0.1:{port}")
            return
        # Left by a PgBouncer that was killed (or is a zombie): it would refuse to start.
        self.pidfile.unlink(missing_ok=True)
        self.render(log=lambda _msg: None)
        ini = self.layout.pgbouncer_dir / "pgbouncer.ini"
        result = subprocess.run(self.layout.as_service_user([pgbouncer_bin(), "-d", str(ini)]),
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StackError(f"PgBouncer did not start: {result.stderr.strip()} "
                             f"(see {self.layout.run_dir / 'pgbouncer.log'})")
        wait_until(lambda: ports.port_open(port), START_TIMEOUT_S, f"PgBouncer on port {port}")
        log(f"pgbouncer: started on 127.0.0.1:{port} (transaction mode)")

    def stop(self, log: Log = print, *, sig: signal.Signals = signal.SIGINT) -> None:
        """SIGINT is PgBouncer's safe shutdown on every version (SIGTERM changed in 1.23)."""
        pid = self.pid()
        if pid is None:
            return
        stop_pid(pid, timeout_s=STOP_TIMEOUT_S, sig=sig)
        # The port can outlive the process for a moment; wait for it to close. A killed
        # PgBouncer leaves its pid file, which would stop the next start.
        wait_until(lambda: not ports.port_open(self.settings.pgbouncer_port), 10,
                   "PgBouncer's port to close")
        self.pidfile.unlink(missing_ok=True)
        log("pgbouncer: stopped")

    def restart(self, log: Log = print) -> None:
        self.stop(log, sig=signal.SIGQUIT)
        self.start(log)

    def render(self, log: Log = print) -> None:
        """Rewrite pgbouncer.ini from the current settings; RELOAD applies it online."""
        try:
            ini, auth = render.render(self.values(), self.layout.pgbouncer_dir)
        except ValueError as exc:
            raise StackError(str(exc)) from None
        self.layout.give_to_service_user(ini, auth)
        log(f"pgbouncer: rendered {ini}; apply with `video-tasks pgbouncer reload` "
            "(ops/pgbouncer-reload)")
