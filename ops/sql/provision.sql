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

-- own_database --
-- The owner role owns the database (an older stack's database was the app's).
ALTER DATABASE {database} OWNER TO {owner_user};

-- reassign_app_objects --
-- Tables an older stack's app role created (it ran the migrations then) go to the owner.
REASSIGN OWNED BY {app_user} TO {owner_user};

-- own_schema --
-- The owner creates in the schema; the app may only use what is granted to it
-- (service/sql/ddl/migrate.sql grants DML on the task tables after each migration).
ALTER SCHEMA public OWNER TO {owner_user};

-- limit_app_on_schema --
REVOKE ALL ON SCHEMA public FROM PUBLIC, {app_user};
GRANT USAGE ON SCHEMA public TO {app_user};
