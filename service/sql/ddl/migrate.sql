-- The statements `python -m service migrate` (service/migrate.py) runs itself, by name.
-- Straight to PostgreSQL, before the schema exists, each migration in an explicit
-- transaction under a transaction-level advisory lock. Kept apart from service/sql/*.sql:
-- those are the statements the service runs through service.db (and tests EXPLAIN them
-- against the migrated schema); these are DDL and bookkeeping for the migrator alone.
-- Names in {braces} are identifiers or literals that psycopg.sql fills in.

-- disable_statement_timeout --
-- Migrations may take longer than the role's statement timeout meant for requests.
SET statement_timeout = 0;

-- lock_migrations --
-- Held until the transaction ends: two processes migrating at once take turns.
SELECT pg_advisory_xact_lock(%(key)s);

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
