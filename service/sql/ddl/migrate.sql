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

-- set_database_timeout --
-- A default of the database reaches every server connection PgBouncer opens to it (the
-- owner may set it; a role default would need CREATEROLE). Migrations SET their own.
ALTER DATABASE {database} SET {setting} = {value};

-- grant_app --
-- Least privilege: the app's role reads and writes the task tables, reads which
-- migrations ran, and calls the create function; no DDL, no other table.
GRANT SELECT, INSERT, UPDATE, DELETE
    ON video_generation_tasks, video_task_parts, video_task_attempts,
       video_task_requesters, video_task_notices
    TO {app_user};
GRANT SELECT ON schema_migrations TO {app_user};
REVOKE ALL ON FUNCTION create_video_task FROM PUBLIC;
GRANT EXECUTE ON FUNCTION create_video_task TO {app_user};
