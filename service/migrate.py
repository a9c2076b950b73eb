"""Apply the numbered SQL migrations in order, once each, and the app role's timeouts.

Runs straight against PostgreSQL (DATABASE_DIRECT_URL), never through PgBouncer: it uses
an explicit transaction per migration and a transaction-level advisory lock, so two
processes migrating at once apply each file exactly once.
"""

from __future__ import annotations

import logging
from pathlib import Path

import psycopg
from psycopg import sql

from service.settings import Settings

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Any constant both processes agree on; the lock lives until each transaction ends.
MIGRATION_LOCK_KEY = 7_406_111

CREATE_SCHEMA_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""
LOCK = "SELECT pg_advisory_xact_lock(%(key)s)"
IS_APPLIED = "SELECT 1 FROM schema_migrations WHERE version = %(version)s"
RECORD = "INSERT INTO schema_migrations (version) VALUES (%(version)s)"


def migration_files() -> list[Path]:
    return sorted(MIGRATIONS_DIR.glob("*.sql"))


def migrate(settings: Settings) -> list[str]:
    """Apply pending migrations; returns the versions applied by this call."""
    applied = []
    with psycopg.connect(settings.database_direct_url, autocommit=True,
                         application_name="video-tasks-migrate") as conn:
        # Migrations may take longer than the role's statement timeout meant for requests.
        conn.execute("SET statement_timeout = 0")
        for path in migration_files():
            version = path.stem
            with conn.transaction():
                conn.execute(LOCK, {"key": MIGRATION_LOCK_KEY})
                conn.execute(CREATE_SCHEMA_MIGRATIONS)
                if conn.execute(IS_APPLIED, {"version": version}).fetchone():
                    continue
                logger.info("applying migration %s", version)
                conn.execute(path.read_text(encoding="utf-8"))
                conn.execute(RECORD, {"version": version})
                applied.append(version)
        # Under the same lock: two concurrent ALTER ROLEs fail with "tuple concurrently
        # updated".
        with conn.transaction():
            conn.execute(LOCK, {"key": MIGRATION_LOCK_KEY})
            set_role_timeouts(conn, settings)
    return applied


def set_role_timeouts(conn: psycopg.Connection, settings: Settings) -> None:
    """Timeouts on the role reach every server connection PgBouncer opens for it.

    PgBouncer does not pass a client's startup `options` on, and a session `SET` would
    leak to other clients in transaction mode; a role default does neither.
    """
    timeouts = {
        "statement_timeout": settings.db_statement_timeout_ms,
        "idle_in_transaction_session_timeout": settings.db_idle_in_transaction_timeout_ms,
        "lock_timeout": settings.db_lock_timeout_ms,
    }
    for name, value_ms in timeouts.items():
        conn.execute(sql.SQL("ALTER ROLE CURRENT_USER SET {} = {}").format(
            sql.Identifier(name), sql.Literal(f"{int(value_ms)}ms")))
