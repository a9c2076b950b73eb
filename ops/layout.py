"""Where a stack keeps its files, and the user its servers run as.

Under the stack's directory (STACK_DIR, default `.stack/` in the project directory):
`pgdata/` (the cluster), `run/` (pid files, PgBouncer's log and PostgreSQL's socket, 0700),
`logs/` (PostgreSQL, API, worker), `pgbouncer/` (the rendered ini and auth file).
PostgreSQL and PgBouncer refuse to run as root, so as root they run as `postgres`.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from ops.procs import StackError

SERVICE_USER = "postgres"


class Layout:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.pgdata = self.root / "pgdata"
        self.run_dir = self.root / "run"
        self.log_dir = self.root / "logs"
        self.pgbouncer_dir = self.root / "pgbouncer"
        # PostgreSQL and PgBouncer refuse to run as root.
        self.service_user = SERVICE_USER if os.geteuid() == 0 else None

    def prepare(self, *extra: Path) -> None:
        """Create the directories (and `extra` ones, e.g. MEDIA_DIR), owned by the service
        user where the servers write."""
        for path in (self.root, self.run_dir, self.log_dir, self.pgbouncer_dir, *extra):
            path.mkdir(parents=True, exist_ok=True)
        if self.service_user:
            for path in (self.root, self.run_dir, self.log_dir, self.pgbouncer_dir):
                self.give_to_service_user(path)
            # The service user must be able to reach the stack directory.
            for parent in self.root.parents:
                if parent.stat().st_mode & 0o001 == 0 and parent != Path("/"):
                    raise StackError(
                        f"{parent} is not searchable by {self.service_user}: "
                        f"chmod o+x {parent}, or set STACK_DIR to a directory outside it")
        os.chmod(self.run_dir, 0o700)

    def give_to_service_user(self, *paths: Path) -> None:
        if not self.service_user:
            return
        account = pwd.getpwnam(self.service_user)
        for path in paths:
            os.chown(path, account.pw_uid, account.pw_gid)

    def as_service_user(self, argv: list[str]) -> list[str]:
        if self.service_user:
            return ["runuser", "-u", self.service_user, "--", *argv]
        return argv
