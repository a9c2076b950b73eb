-- The statements `python -m service migrate` (service/migrate.py) runs itself, by name.
-- Straight to PostgreSQL, before the schema exists, each migration in an explicit
-- transaction, the whole run under a session-level advisory lock. Kept apart from service/sql/*.sql:
-- those are the statements the service runs through service.db (and tests EXPLAIN them
-- against the migrated schema); these are DDL and bookkeeping for the migrator alone.
-- Names in {braces} are identifiers or literals that psycopg.sql fills in.

-- disable_statement_timeout --
-- Migrations may take longer than the role's statement timeout meant for requests.
SET statement_timeout = 0;

-- lock_migrations --
-- Held for the whole run (a direct session, never through PgBouncer): two processes
-- migrating at once take turns, the second finding every file applied by the first.
SELECT pg_advisory_lock(%(key)s);

-- unlock_migrations --
SELECT pg_advisory_unlock(%(key)s);

-- create_schema_migrations --
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- find_migration --
SELECT 1 FROM schema_migrations WHERE version = %(version)s;

-- record_migration --
INSERT INTO schema_migrations (version) VALUES (%(version)s);

-- set_role_timeout --
-- A default of the app's role reaches every server connection PgBouncer opens for it.
ALTER ROLE CURRENT_USER SET {setting} = {value};
