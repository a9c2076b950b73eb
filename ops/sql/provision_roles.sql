-- Roles of the stack, created or brought up to date (passwords included). Run as a
-- superuser with the names and passwords in provision.* settings of the session.
DO $provision$
DECLARE
    app_user   text := current_setting('provision.app_user');
    auth_user  text := current_setting('provision.auth_user');
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = app_user) THEN
        EXECUTE format('CREATE ROLE %I LOGIN', app_user);
    END IF;
    EXECUTE format('ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEROLE PASSWORD %L',
                   app_user, current_setting('provision.app_password'));

    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = auth_user) THEN
        EXECUTE format('CREATE ROLE %I LOGIN', auth_user);
    END IF;
    EXECUTE format('ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEROLE PASSWORD %L',
                   auth_user, current_setting('provision.auth_password'));
END
$provision$;
