-- The single statements ops/provision.py runs as a superuser, by name (the scripts
-- provision_roles.sql and provision_auth_lookup.sql run whole). Names in {braces} are
-- identifiers that psycopg.sql fills in: CREATE DATABASE and GRANT take no parameters.

-- set_provision_name --
-- The names and passwords the scripts read with current_setting('provision.*').
SELECT set_config(%(key)s, %(value)s, false);

-- find_database --
SELECT 1 FROM pg_database WHERE datname = %(name)s;

-- create_database --
-- Not in a script: CREATE DATABASE cannot run inside a transaction block or a DO.
CREATE DATABASE {database} OWNER {owner};

-- grant_schema_to_app --
-- The app owns its schema objects; PostgreSQL 15 no longer lets everyone create there.
GRANT ALL ON SCHEMA public TO {app_user};
