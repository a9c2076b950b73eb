"""Apply the numbered SQL migrations in order, once each, and the app role's timeouts.

Runs straight against PostgreSQL (DATABASE_DIRECT_URL), never through PgBouncer: it uses
an explicit transaction per migration and a transaction-level advisory lock, so two
processes migrating at once apply each file exactly once. Its own statements are named
in sql/ddl/migrate.sql; the migrations are the numbered files in migrations/.
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from service import queries
from service.settings import Settings

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
MIGRATE_SQL = Path(__file__).parent / "sql" / "ddl" / "migrate.sql"
# Any constant both processes agree on; the lock lives until each transaction ends.
MIGRATION_LOCK_KEY = 7_406_111


@cache
def statements() -> dict[str, str]:
    """The migrator's own named statements (not service.queries': they are not the app's)."""
    return queries.parse(MIGRATE_SQL.read_text(encoding="utf-8"))


def migration_files() -> list[Path]:
    return sorted(MIGRATIONS_DIR.glob("*.sql"))


def migrate(settings: Settings) -> list[str]:
    """Apply pending migrations; returns the versions applied by this call."""
    applied = []
    named = statements()
    lock = {"key": MIGRATION_LOCK_KEY}
    with psycopg.connect(settings.database_owner_url, autocommit=True,
                         application_name="video-tasks-migrate") as conn:
        conn.execute(named["disable_statement_timeout"])
        # One lock for the whole run, not one per file: with a lock per file, two runs
        # at once would interleave and each apply some of the files. Under it too the
        # ALTER ROLEs, which fail with "tuple concurrently updated" when run at once.
        conn.execute(named["lock_migrations"], lock)
        try:
            for path in migration_files():
                version = path.stem
                with conn.transaction():
                    conn.execute(named["create_schema_migrations"])
                    if conn.execute(named["find_migration"],
                                    {"version": version}).fetchone():
                        continue
                    logger.info("applying migration %s", version)
                    conn.execute(path.read_text(encoding="utf-8"))
                    conn.execute(named["record_migration"], {"version": version})
                    applied.append(version)
            with conn.transaction():
                set_timeouts(conn, settings)
                grant_app(conn, settings)
        finally:
            conn.execute(named["unlock_migrations"], lock)
    return applied


def grant_app(conn: psycopg.Connection, settings: Settings) -> None:
    """What the app's role may do: DML on the task tables, nothing more."""
    app_user = conninfo_to_dict(settings.database_direct_url)["user"]
    conn.execute(sql.SQL(statements()["grant_app"]).format(
        app_user=sql.Identifier(str(app_user))))


def set_timeouts(conn: psycopg.Connection, settings: Settings) -> None:
    """Timeouts as the database's defaults reach every server connection PgBouncer opens.

    PgBouncer does not pass a client's startup `options` on, and a session `SET` would
    leak to other clients in transaction mode; a database default does neither.
    """
    database = sql.Identifier(str(conninfo_to_dict(settings.database_owner_url)["dbname"]))
    timeouts = {
        "statement_timeout": settings.db_statement_timeout_ms,
        "idle_in_transaction_session_timeout": settings.db_idle_in_transaction_timeout_ms,
        "lock_timeout": settings.db_lock_timeout_ms,
    }
    for name, value_ms in timeouts.items():
        conn.execute(sql.SQL(statements()["set_database_timeout"]).format(
            database=database, setting=sql.Identifier(name),
            value=sql.Literal(f"{int(value_ms)}ms")))
