-- What `python -m service doctor` reads from PostgreSQL, by name.
-- Run straight to PostgreSQL when it can be reached (no PgBouncer queue in the way),
-- otherwise through PgBouncer; every statement is read-only and cheap.
-- "Running" is `lease_expires_at IS NOT NULL`: the lease CHECK makes a task have a lease
-- exactly while it is generating, merging or uploading, and the lease index is partial on
-- that same condition, so no statement spells the running statuses.

-- doctor_pg_overview --
-- Connection limits and the timeouts of this role (the app's role: the doctor uses its URL).
SELECT current_setting('server_version') AS server_version,
       current_setting('max_connections')::int AS max_connections,
       current_setting('superuser_reserved_connections')::int AS superuser_reserved,
       -- PostgreSQL 16+ only; missing means none.
       coalesce(current_setting('reserved_connections', true), '0')::int AS reserved,
       (SELECT setting::bigint FROM pg_settings
        WHERE name = 'statement_timeout') AS statement_timeout_ms,
       (SELECT setting::bigint FROM pg_settings
        WHERE name = 'idle_in_transaction_session_timeout') AS idle_in_transaction_timeout_ms,
       (SELECT count(*) FROM pg_stat_activity
        WHERE backend_type = 'client backend')::int AS connections,
       pg_backend_pid() AS own_pid;

-- doctor_pg_sessions --
-- Client sessions by application and state. Sessions of other roles show state 'hidden'
-- unless the doctor's role has pg_read_all_stats.
SELECT coalesce(nullif(application_name, ''), '(none)') AS application_name,
       coalesce(usename::text, '') AS usename,
       coalesce(state, 'hidden') AS state,
       count(*)::int AS sessions,
       coalesce(max(extract(epoch FROM now() - query_start))
                FILTER (WHERE state = 'active'), 0)::float8 AS longest_active_s
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3;

-- doctor_idle_in_transaction --
-- Sessions that began a transaction and stopped talking: each pins a server connection
-- (and its locks) until it commits or a timeout ends it.
SELECT pid, usename::text AS usename, datname::text AS datname,
       coalesce(nullif(application_name, ''), '(none)') AS application_name,
       client_addr::text AS client_addr, state,
       extract(epoch FROM now() - state_change)::float8 AS idle_s,
       extract(epoch FROM now() - xact_start)::float8 AS xact_s,
       left(query, 120) AS last_query,
       count(*) OVER ()::int AS total
FROM pg_stat_activity
WHERE state IN ('idle in transaction', 'idle in transaction (aborted)')
  AND state_change < now() - make_interval(secs => %(older_than_s)s)
  AND pid <> pg_backend_pid()
ORDER BY state_change
LIMIT 10;

-- doctor_long_statements --
-- Statements running longer than %(longer_than_s)s (the statement timeout).
SELECT pid, usename::text AS usename, datname::text AS datname,
       coalesce(nullif(application_name, ''), '(none)') AS application_name,
       extract(epoch FROM now() - query_start)::float8 AS running_s,
       wait_event_type, wait_event,
       left(query, 120) AS query,
       count(*) OVER ()::int AS total
FROM pg_stat_activity
WHERE state = 'active' AND backend_type = 'client backend' AND pid <> pg_backend_pid()
  AND query_start < now() - make_interval(secs => %(longer_than_s)s)
ORDER BY query_start
LIMIT 10;

-- doctor_tasks_last_hour --
-- The original write-up's first monitoring query: tasks per status created in the last
-- hour.
SELECT status, count(*)::int AS tasks, max(created_at) AS latest
FROM video_generation_tasks
WHERE created_at > now() - interval '1 hour'
GROUP BY status
ORDER BY status;

-- doctor_tasks_running_too_long --
-- The original write-up's second query: tasks still running long after creation.
SELECT task_id, status, created_at,
       extract(epoch FROM now() - created_at)::float8 AS seconds_since_creation,
       worker_id, attempts, current_part, total_parts,
       count(*) OVER ()::int AS total
FROM video_generation_tasks
WHERE lease_expires_at IS NOT NULL
  AND created_at < now() - make_interval(secs => %(older_than_s)s)
ORDER BY created_at
LIMIT 10;

-- doctor_expired_leases --
-- Running tasks whose worker stopped renewing the lease (only running tasks have one); a
-- worker's rescuer (every few seconds) puts them back to pending, so rows that stay here
-- mean no rescuer runs.
SELECT task_id, status, worker_id, attempts,
       extract(epoch FROM now() - lease_expires_at)::float8 AS overdue_s,
       count(*) OVER ()::int AS total
FROM video_generation_tasks
WHERE lease_expires_at < now()
ORDER BY lease_expires_at
LIMIT 10;

-- doctor_queue_summary --
-- One row of queue figures; each subquery uses one of the table's partial indexes.
SELECT
    (SELECT count(*) FROM video_generation_tasks
     WHERE status = 'pending')::int AS pending,
    (SELECT count(*) FROM video_generation_tasks
     WHERE status = 'pending' AND run_after <= now())::int AS runnable,
    (SELECT coalesce(extract(epoch FROM now() - min(run_after)), 0) FROM video_generation_tasks
     WHERE status = 'pending' AND run_after <= now())::float8 AS oldest_pending_s,
    (SELECT count(*) FROM video_generation_tasks
     WHERE lease_expires_at IS NOT NULL)::int AS running,
    (SELECT count(*) FROM video_generation_tasks
     WHERE finished_at > now() - interval '10 minutes' AND status = 'completed')::int
        AS completed_10m,
    (SELECT count(*) FROM video_generation_tasks
     WHERE finished_at > now() - interval '10 minutes' AND status = 'failed')::int
        AS failed_10m,
    -- Pending tasks count their attempts at the claim, running ones already have.
    ((SELECT count(*) FROM video_generation_tasks
      WHERE status = 'pending' AND attempts >= %(max_attempts)s - 1)
     + (SELECT count(*) FROM video_generation_tasks
        WHERE lease_expires_at IS NOT NULL
          AND attempts >= %(max_attempts)s))::int AS on_last_attempt,
    (SELECT count(*) FROM video_generation_tasks
     WHERE finished_at > now() - interval '1 hour' AND status = 'failed'
       AND attempts >= %(max_attempts)s)::int AS failed_out_of_attempts_1h;

-- doctor_role_statement_timeout --
-- Read on the doctor's own direct session before it bounds itself (next statement), so
-- that the report shows the role's statement_timeout, not the doctor's.
SELECT setting::bigint AS statement_timeout_ms FROM pg_settings WHERE name = 'statement_timeout';

-- doctor_bound_session --
-- The doctor's direct session is its own (not PgBouncer's): a session setting is safe,
-- and bounds every later statement on the server too.
SELECT set_config('statement_timeout', %(timeout_ms)s, false) AS statement_timeout;
