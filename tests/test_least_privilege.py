"""Least privilege: the API's and worker's role reads and writes the task tables and can
change nothing else; the owner role runs the migrations; PgBouncer's auth role can only
call its lookup function."""

from __future__ import annotations

import uuid

import psycopg
import psycopg.sql
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

# Each would change the schema, or read what the app has no business reading.
FORBIDDEN = {
    "create a table": "CREATE TABLE t (x int)",
    "add a column": "ALTER TABLE video_generation_tasks ADD COLUMN x int",
    "drop a table": "DROP TABLE video_task_parts",
    "drop a constraint": "ALTER TABLE video_generation_tasks "
                         "DROP CONSTRAINT video_generation_tasks_status_check",
    "create an index": "CREATE INDEX i ON video_generation_tasks (theme)",
    "truncate": "TRUNCATE video_task_attempts",
    "replace the create function": "CREATE OR REPLACE FUNCTION create_video_task() "
                                   "RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "create a function": "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "create a schema": "CREATE SCHEMA s",
    "write the migrations": "DELETE FROM schema_migrations",
    "read password hashes": "SELECT * FROM pg_catalog.pg_authid",
    "call the auth lookup": "SELECT * FROM pgbouncer.user_lookup('app')",
}


@pytest.mark.parametrize("what", sorted(FORBIDDEN))
def test_the_app_role_cannot(what, direct: psycopg.Connection):
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        direct.execute(FORBIDDEN[what])


def test_the_app_role_cannot_change_the_databases_defaults(direct, settings):
    name = conninfo_to_dict(settings.database_direct_url)["dbname"]
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        direct.execute(psycopg.sql.SQL("ALTER DATABASE {} SET statement_timeout = 0").format(
            psycopg.sql.Identifier(name)))


def test_the_app_role_reads_and_writes_the_tasks(direct: psycopg.Connection):
    task_id = uuid.uuid4()
    direct.execute("INSERT INTO video_generation_tasks (task_id, product_name, theme, "
                   "duration, total_parts) VALUES (%s, 'p', 't', 5, 1)", [task_id])
    direct.execute("UPDATE video_generation_tasks SET theme = 'u' WHERE task_id = %s",
                   [task_id])
    assert direct.execute("SELECT theme FROM video_generation_tasks WHERE task_id = %s",
                          [task_id]).fetchone() == ("u",)
    direct.execute("DELETE FROM video_generation_tasks WHERE task_id = %s", [task_id])
    # Its timeouts reach it as the database's defaults, set by migrate.
    assert direct.execute("SHOW statement_timeout").fetchone() == ("5s",)


def test_the_owner_owns_every_table_and_the_app_owns_nothing(direct, settings):
    app = conninfo_to_dict(settings.database_direct_url)["user"]
    owned = direct.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner "
        "WHERE r.rolname = %s", [app]).fetchall()
    assert owned == []
    flags = direct.execute("SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles "
                           "WHERE rolname = current_user").fetchone()
    assert flags == (False, False, False)


def test_the_auth_role_can_only_look_up_secrets(stack, settings):
    values = stack.pgbouncer_values()
    auth_url = make_conninfo(settings.database_direct_url, user=values["auth_user"],
                             password=values["auth_password"])
    with psycopg.connect(auth_url, autocommit=True) as auth:
        (_name, secret) = auth.execute("SELECT * FROM pgbouncer.user_lookup(%s)",
                                      [conninfo_to_dict(settings.database_url)["user"]]
                                      ).fetchone()
        assert secret.startswith("SCRAM-SHA-256$")
        for statement in ("SELECT * FROM public.video_generation_tasks",
                          "CREATE TABLE public.t (x int)",
                          "SELECT * FROM pg_catalog.pg_authid"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                auth.execute(statement)


def test_the_console_is_for_the_admin_and_stats_users_only(stack, settings):
    """PgBouncer's console: the app's role is refused, the stats user may look (SHOW)
    but not act (PAUSE, RELOAD, SET), the admin may do both."""
    values = stack.pgbouncer_values()
    console = make_conninfo(settings.pgbouncer_admin_url, dbname="pgbouncer")
    app = conninfo_to_dict(settings.database_url)
    # Refused, or never answered: PgBouncer looks a non-console user up with auth_query in
    # the database asked for, and "pgbouncer" has no server to run it in.
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(make_conninfo(console, user=app["user"], password=app["password"],
                                      connect_timeout=3), autocommit=True).close()
    stats_url = make_conninfo(console, user=values["stats_user"],
                              password=values["stats_password"])
    with psycopg.connect(stats_url, autocommit=True, prepare_threshold=None) as stats:
        stats.cursor().execute("SHOW POOLS")
        for command in ("PAUSE", "RELOAD", "SET default_pool_size = 100", "SHUTDOWN"):
            with pytest.raises(psycopg.Error, match="admin access needed"):
                stats.cursor().execute(command)
    with psycopg.connect(console, autocommit=True, prepare_threshold=None) as admin:
        admin.cursor().execute("SHOW CONFIG")
        admin.cursor().execute("RELOAD")
