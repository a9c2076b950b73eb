#!/usr/bin/env python3
"""Render pgbouncer.ini and its auth file from PGBOUNCER_* settings.

The one renderer for the native stack (ops/stack.py) and the compose image. Standard
library only. Every bad value is reported in one error; secrets are never printed.

    python3 pgbouncer/render.py --out DIR      # reads the environment
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import os
import re
import secrets
import string
import sys
from collections.abc import Mapping
from pathlib import Path

TEMPLATE_DIR = Path(__file__).resolve().parent
SCRAM_ITERATIONS = 4096

# name -> (default, kind). Kinds: int (>= 0), name (identifier), text (no quotes/newlines).
SETTINGS: dict[str, tuple[str, str]] = {
    "listen_addr": ("127.0.0.1", "text"),
    "listen_port": ("6432", "int"),
    "db_host": ("127.0.0.1", "text"),
    "db_port": ("55432", "int"),
    "db_name": ("videotasks", "name"),
    "auth_user": ("pgbouncer_auth", "name"),
    "auth_password": ("auth-local-password", "secret"),
    "admin_user": ("pgbouncer_admin", "name"),
    "admin_password": ("admin-local-password", "secret"),
    "stats_user": ("pgbouncer_stats", "name"),
    "stats_password": ("stats-local-password", "secret"),
    "default_pool_size": ("10", "int"),
    "min_pool_size": ("0", "int"),
    "reserve_pool_size": ("2", "int"),
    "reserve_pool_timeout": ("3", "int"),
    "max_db_connections": ("20", "int"),
    "max_client_conn": ("500", "int"),
    "query_wait_timeout": ("10", "int"),
    "idle_transaction_timeout": ("30", "int"),
    "server_idle_timeout": ("60", "int"),
    "server_lifetime": ("3600", "int"),
    "server_connect_timeout": ("5", "int"),
    "server_login_retry": ("1", "int"),
    "stats_period": ("10", "int"),
    # Where PgBouncer keeps its files; empty unix_socket_dir disables the socket.
    "run_dir": ("/var/run/pgbouncer", "text"),
    "unix_socket_dir": ("", "text"),
    # Set when started as root: PgBouncer refuses to run as root and switches to this user.
    "run_as": ("", "text"),
    # 1: any database name is routed to the same PostgreSQL (the tests' database per test).
    "any_database": ("0", "int"),
}


def settings_from_env(environ: Mapping[str, str]) -> dict[str, str]:
    return {name: environ.get(f"PGBOUNCER_{name.upper()}", default)
            for name, (default, _) in SETTINGS.items()}


def validate(values: Mapping[str, str]) -> list[str]:
    problems = []
    for name, (_, kind) in SETTINGS.items():
        value = str(values.get(name, ""))
        label = f"PGBOUNCER_{name.upper()}"
        if kind == "int" and not value.isdigit():
            problems.append(f"{label} must be a whole number >= 0")
        elif kind == "name" and not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", value):
            problems.append(f"{label} must be a lower-case identifier")
        elif kind == "secret" and (not value or re.search(r'["\n\r]', value)):
            problems.append(f"{label} must be non-empty, without quotes or newlines")
        elif kind == "text" and re.search(r'["\n\r;]', value):
            problems.append(f"{label} must not contain quotes, ';' or newlines")
    if not problems:
        ints = {name: int(values[name]) for name, (_, kind) in SETTINGS.items() if kind == "int"}
        if ints["any_database"] not in (0, 1):
            problems.append("PGBOUNCER_ANY_DATABASE must be 0 or 1")
        if ints["default_pool_size"] < 1:
            problems.append("PGBOUNCER_DEFAULT_POOL_SIZE must be at least 1")
        if ints["max_db_connections"] and ints["max_db_connections"] < ints["default_pool_size"]:
            problems.append("PGBOUNCER_MAX_DB_CONNECTIONS must be 0 (no cap) or at least "
                            "PGBOUNCER_DEFAULT_POOL_SIZE")
        if ints["min_pool_size"] > ints["default_pool_size"]:
            problems.append("PGBOUNCER_MIN_POOL_SIZE must not exceed PGBOUNCER_DEFAULT_POOL_SIZE")
    return problems


def scram_secret(password: str, *, salt: bytes | None = None,
                 iterations: int = SCRAM_ITERATIONS) -> str:
    """A SCRAM-SHA-256 verifier as PostgreSQL stores it (RFC 5802, RFC 7677)."""
    salt = salt or secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = base64.b64encode
    return (f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}"
            f"${b64(stored_key).decode()}:{b64(server_key).decode()}")


def render(values: Mapping[str, str], out_dir: Path) -> tuple[Path, Path]:
    """Write pgbouncer.ini and userlist.txt into out_dir; returns their paths."""
    problems = validate(values)
    if problems:
        raise ValueError("invalid PgBouncer settings: " + "; ".join(problems))
    out_dir.mkdir(parents=True, exist_ok=True)
    run_dir = values["run_dir"]
    ini_path, auth_path = out_dir / "pgbouncer.ini", out_dir / "userlist.txt"
    fields = dict(values)
    fields.update(
        auth_file=str(auth_path),
        pidfile=f"{run_dir}/pgbouncer.pid",
        logfile=f"{run_dir}/pgbouncer.log",
        run_as_user=f"user = {values['run_as']}" if values["run_as"] else "",
        any_database_entry=(f"* = host={values['db_host']} port={values['db_port']}"
                            if values["any_database"] == "1" else ""),
        # The console users only authenticate clients, so a SCRAM verifier is enough for
        # them. The auth user logs into PostgreSQL itself and needs its password.
        admin_secret=scram_secret(values["admin_password"]),
        stats_secret=scram_secret(values["stats_password"]),
    )
    ini = string.Template((TEMPLATE_DIR / "pgbouncer.ini.template").read_text()).substitute(fields)
    auth = string.Template((TEMPLATE_DIR / "userlist.txt.template").read_text()).substitute(fields)
    _write_private(ini_path, ini)
    _write_private(auth_path, auth)
    return ini_path, auth_path


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory to write into")
    args = parser.parse_args(argv)
    try:
        ini_path, auth_path = render(settings_from_env(os.environ), args.out)
    except ValueError as exc:
        print(f"render.py: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {ini_path} and {auth_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
