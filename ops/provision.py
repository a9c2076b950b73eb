"""Create the stack's roles, database and PgBouncer's auth lookup, as a superuser.

Idempotent: run it on every start. Used by the native stack (ops/postgres.py) and, as
`video-tasks provision`, by the compose `migrate` service before `video-tasks migrate`.

    video-tasks provision --superuser-url postgresql://postgres:...@db:5432/postgres
    python -m ops.provision ...     # the same (what compose.yaml runs)
"""

from __future__ import annotations

import sys
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from service import queries
from service.settings import Settings

SQL_DIR = Path(__file__).resolve().parent / "sql"
# Named single statements; the two scripts below run whole.
STATEMENTS = queries.parse((SQL_DIR / "provision.sql").read_text())
DEFAULT_AUTH_USER = "pgbouncer_auth"
DEFAULT_AUTH_PASSWORD = "auth-local-password"


def provision(superuser_url: str, settings: Settings, *, auth_user: str,
              auth_password: str) -> None:
    app = conninfo_to_dict(settings.database_direct_url)
    app_user, app_password, db_name = (str(app["user"]), str(app.get("password", "")),
                                       str(app["dbname"]))
    owner = conninfo_to_dict(settings.database_owner_url)
    owner_user = str(owner["user"])
    names = {
        "provision.owner_user": owner_user,
        "provision.owner_password": str(owner.get("password", "")),
        "provision.app_user": app_user,
        "provision.app_password": app_password,
        "provision.auth_user": auth_user,
        "provision.auth_password": auth_password,
    }
    with psycopg.connect(superuser_url, autocommit=True) as conn:
        _set_names(conn, names)
        conn.execute((SQL_DIR / "provision_roles.sql").read_text())
        exists = conn.execute(STATEMENTS["find_database"], {"name": db_name}).fetchone()
        identifiers = {"database": sql.Identifier(db_name),
                       "owner_user": sql.Identifier(owner_user),
                       "app_user": sql.Identifier(app_user)}
        if not exists:
            conn.execute(sql.SQL(STATEMENTS["create_database"]).format(
                database=identifiers["database"], owner=identifiers["owner_user"]))
        conn.execute(sql.SQL(STATEMENTS["own_database"]).format(**identifiers))
    with psycopg.connect(make_conninfo(superuser_url, dbname=db_name), autocommit=True) as conn:
        _set_names(conn, names)
        conn.execute((SQL_DIR / "provision_auth_lookup.sql").read_text())
        for name in ("reassign_app_objects", "own_schema", "limit_app_on_schema"):
            conn.execute(sql.SQL(STATEMENTS[name]).format(**identifiers))


def _set_names(conn: psycopg.Connection, names: dict[str, str]) -> None:
    for key, value in names.items():
        conn.execute(STATEMENTS["set_provision_name"], {"key": key, "value": value})


def main(argv: list[str] | None = None) -> int:
    """`python -m ops.provision ARGS` = `video-tasks provision ARGS`."""
    from ops import cli
    return cli.main(["provision", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
