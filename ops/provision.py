"""Create the stack's roles, database and PgBouncer's auth lookup, as a superuser.

Idempotent: run it on every start. Used by the native stack (ops/stack.py) and by the
compose `migrate` service, before `python -m service migrate`.

    python -m ops.provision --superuser-url postgresql://postgres:...@db:5432/postgres
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from service.settings import Settings

SQL_DIR = Path(__file__).resolve().parent / "sql"
DEFAULT_AUTH_USER = "pgbouncer_auth"
DEFAULT_AUTH_PASSWORD = "auth-local-password"


def provision(superuser_url: str, settings: Settings, *, auth_user: str,
              auth_password: str) -> None:
    app = conninfo_to_dict(settings.database_direct_url)
    app_user, app_password, db_name = app["user"], app.get("password", ""), app["dbname"]
    names = {
        "provision.app_user": app_user,
        "provision.app_password": app_password,
        "provision.auth_user": auth_user,
        "provision.auth_password": auth_password,
    }
    with psycopg.connect(superuser_url, autocommit=True) as conn:
        _set_names(conn, names)
        conn.execute((SQL_DIR / "provision_roles.sql").read_text())
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [db_name]).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(db_name), sql.Identifier(app_user)))
    with psycopg.connect(make_conninfo(superuser_url, dbname=db_name), autocommit=True) as conn:
        _set_names(conn, names)
        conn.execute((SQL_DIR / "provision_auth_lookup.sql").read_text())
        # The app owns its schema objects; PostgreSQL 15 no longer lets everyone create there.
        conn.execute(sql.SQL("GRANT ALL ON SCHEMA public TO {}").format(sql.Identifier(app_user)))


def _set_names(conn: psycopg.Connection, names: dict[str, str]) -> None:
    for key, value in names.items():
        conn.execute("SELECT set_config(%s, %s, false)", [key, value])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Provision roles and database for the stack.")
    parser.add_argument("--superuser-url", default=os.environ.get("POSTGRES_SUPERUSER_URL"),
                        required="POSTGRES_SUPERUSER_URL" not in os.environ)
    args = parser.parse_args(argv)
    provision(args.superuser_url, Settings.from_env(),
              auth_user=os.environ.get("PGBOUNCER_AUTH_USER", DEFAULT_AUTH_USER),
              auth_password=os.environ.get("PGBOUNCER_AUTH_PASSWORD", DEFAULT_AUTH_PASSWORD))
    print("provisioned roles, database and PgBouncer auth lookup")
    return 0


if __name__ == "__main__":
    sys.exit(main())
