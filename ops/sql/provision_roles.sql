-- Roles of the stack, created or brought up to date (passwords included). Run as a
-- superuser with the names and passwords in provision.* settings of the session.
DO $provision$
DECLARE
    owner_user text := current_setting('provision.owner_user');
    app_user   text := current_setting('provision.app_user');
    auth_user  text := current_setting('provision.auth_user');
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = app_user) THEN
        EXECUTE format('CREATE ROLE %I LOGIN', app_user);
    END IF;
    EXECUTE format('ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB PASSWORD %L',
                   app_user, current_setting('provision.app_password'));
    -- The timeouts are the database's defaults now (set by migrate as the owner); a role
    -- default left by an older stack would override them.
    EXECUTE format('ALTER ROLE %I RESET statement_timeout', app_user);
    EXECUTE format('ALTER ROLE %I RESET idle_in_transaction_session_timeout', app_user);
    EXECUTE format('ALTER ROLE %I RESET lock_timeout', app_user);

    -- Owns the database and its schema; logs in only to migrate.
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = owner_user) THEN
        EXECUTE format('CREATE ROLE %I LOGIN', owner_user);
    END IF;
    EXECUTE format('ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB PASSWORD %L',
                   owner_user, current_setting('provision.owner_password'));

    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = auth_user) THEN
        EXECUTE format('CREATE ROLE %I LOGIN', auth_user);
    END IF;
    EXECUTE format('ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEROLE PASSWORD %L',
                   auth_user, current_setting('provision.auth_password'));
END
$provision$;
