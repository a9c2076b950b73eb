-- PgBouncer's auth_query runs this as the auth role in the app database: it returns the
-- SCRAM secret of a login role, so PgBouncer needs no copy of the app's password.
-- SECURITY DEFINER (owned by a superuser) because pg_shadow is not readable otherwise;
-- superusers and expired roles are never returned.
CREATE SCHEMA IF NOT EXISTS pgbouncer;

CREATE OR REPLACE FUNCTION pgbouncer.user_lookup(i_username text, OUT uname text, OUT phash text)
RETURNS record
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT usename::text, passwd::text
    FROM pg_catalog.pg_shadow
    WHERE usename = i_username
      AND NOT usesuper
      AND (valuntil IS NULL OR valuntil > now())
$$;

REVOKE ALL ON FUNCTION pgbouncer.user_lookup(text) FROM PUBLIC;
DO $grant$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA pgbouncer TO %I', current_setting('provision.auth_user'));
    EXECUTE format('GRANT EXECUTE ON FUNCTION pgbouncer.user_lookup(text) TO %I',
                   current_setting('provision.auth_user'));
END
$grant$;
