-- Every statement the service runs on video_generation_tasks, by name.
-- Loaded by service/queries.py; parameters are psycopg named placeholders.
-- Transaction pooling: each statement runs alone (autocommit), no session state.

-- create_task --
-- Idempotent, and fair (create_video_task in migration 006): a retried insert of the same
-- task_id, or a repeated Idempotency-Key, returns the existing row instead of a duplicate,
-- and is never charged; a new task is refused (refused, retry_after_s) when its requester
-- is over a limit. created is true when the row is this request's own task_id: also on
-- a retry whose first try committed but lost its answer.
SELECT task_id, status, total_parts, request_fingerprint, created, refused, retry_after_s
FROM create_video_task(
    %(task_id)s, %(product_name)s, %(theme)s, %(duration)s, %(type)s, %(total_parts)s,
    %(idempotency_key)s, %(request_fingerprint)s, %(owner_openid)s, %(requester)s,
    %(notice_template_id)s, %(creates_per_minute)s, %(max_unfinished)s,
    %(unfinished_retry_s)s);

-- get_progress --
SELECT task_id, status, progress, current_part, total_parts, video_url, video_key,
       error_message, error_code, created_at, updated_at, owner_openid
FROM video_generation_tasks
WHERE task_id = %(task_id)s;

-- get_progress_many --
-- The same row for many tasks at once: the API answers concurrent polls with one statement.
SELECT task_id, status, progress, current_part, total_parts, video_url, video_key,
       error_message, error_code, created_at, updated_at, owner_openid
FROM video_generation_tasks
WHERE task_id = ANY(%(task_ids)s);

-- get_progress_changed --
-- Of the tasks polls are waiting on, those changed after what each poll last saw
-- (`since`: the earliest among a task's waiters). One statement a tick answers every
-- waiting poll of an API process; each element is a primary-key lookup.
SELECT t.task_id, t.status, t.progress, t.current_part, t.total_parts, t.video_url,
       t.video_key, t.error_message, t.error_code, t.created_at, t.updated_at,
       t.owner_openid
FROM unnest(%(task_ids)s::uuid[], %(since)s::timestamptz[]) AS waited(task_id, since)
JOIN video_generation_tasks AS t ON t.task_id = waited.task_id
WHERE t.updated_at > waited.since;

-- list_owner_tasks --
-- "My videos": one user's tasks, newest first, a page at a time. The page after one ends
-- where that one did (keyset: created_at, task_id), so pages never skip or repeat a task
-- while new ones arrive.
SELECT task_id, status, progress, current_part, total_parts, video_url, video_key,
       error_message, error_code, created_at, updated_at, owner_openid
FROM video_generation_tasks
WHERE owner_openid = %(owner_openid)s
  AND (%(before_created_at)s::timestamptz IS NULL
       OR (created_at, task_id) < (%(before_created_at)s, %(before_task_id)s::uuid))
ORDER BY created_at DESC, task_id DESC
LIMIT %(limit)s;

-- get_task_state --
-- What operators and tests see of one task's queue bookkeeping.
SELECT task_id, status, current_part, total_parts, attempts, worker_id, claim_token,
       lease_expires_at, run_after, video_url, video_key, error_message
FROM video_generation_tasks
WHERE task_id = %(task_id)s;

-- claim_tasks --
-- Lease up to %(limit)s runnable pending tasks in one statement, fairly across
-- requesters: a task's turn counts the tasks its requester already has running or ahead
-- of it in line, and lower turns go first (then run order). So one user's backlog of 200
-- never holds back another user's first task, and a requester's own tasks keep their
-- order. SKIP LOCKED lets many workers claim at once without waiting on each other's
-- rows; the lock ends at commit, and from then on the claim token says who owns the
-- task: every later statement about it must present the token while the lease is live.
-- Tasks this worker still runs (an old run that has not yet noticed its lease is gone)
-- are not claimed again.
WITH turns AS (
    SELECT task_id, status, run_after, created_at,
           row_number() OVER (PARTITION BY requester
                              ORDER BY status = 'pending', run_after, created_at) AS turn
    FROM video_generation_tasks
    WHERE status IN ('generating', 'merging', 'uploading')
       OR (status = 'pending' AND run_after <= now())
), claimable AS (
    SELECT t.task_id
    FROM video_generation_tasks AS t
    JOIN turns ON turns.task_id = t.task_id
    WHERE turns.status = 'pending'
      -- Again on the locked row: another worker may have claimed it meanwhile.
      AND t.status = 'pending' AND t.run_after <= now()
      AND t.task_id <> ALL(%(running)s::uuid[])
    ORDER BY turns.turn, turns.run_after, turns.created_at
    LIMIT %(limit)s
    FOR UPDATE OF t SKIP LOCKED
), claimed AS (
    UPDATE video_generation_tasks AS t
    SET status = 'generating',
        worker_id = %(worker_id)s,
        claim_token = gen_random_uuid(),
        lease_expires_at = now() + make_interval(secs => %(lease_s)s),
        attempts = t.attempts + 1,
        updated_at = now()
    FROM claimable
    WHERE t.task_id = claimable.task_id
    RETURNING t.task_id, t.claim_token, t.worker_id, t.product_name, t.theme, t.duration,
              t.total_parts, t.current_part, t.attempts
), audited AS (
    INSERT INTO video_task_attempts (claim_token, task_id, worker_id)
    SELECT claim_token, task_id, worker_id FROM claimed
)
SELECT task_id, claim_token, product_name, theme, duration, total_parts, current_part,
       attempts
FROM claimed;

-- heartbeat_tasks --
-- Extend the live leases of these claims; the claims missing from the result are lost.
-- An expired lease is never renewed: the rescuer may already have handed the task on.
-- (Only a running task has a lease: the lease CHECK. So "lease_expires_at > now()"
-- alone guards every statement below to running tasks.)
UPDATE video_generation_tasks
SET lease_expires_at = now() + make_interval(secs => %(lease_s)s)
WHERE claim_token = ANY(%(claim_tokens)s::uuid[]) AND lease_expires_at > now()
RETURNING claim_token;

-- set_stage --
-- Move a claimed task on to merging (after its parts) or uploading (after merging). The
-- stage it is already in matches too, so a retried statement finds its own change.
UPDATE video_generation_tasks
SET status = %(status)s,
    -- Never back: a run resumed after a retry from uploading merges again.
    progress = greatest(progress, %(progress)s),
    lease_expires_at = now() + make_interval(secs => %(lease_s)s),
    updated_at = now()
WHERE task_id = %(task_id)s AND claim_token = %(claim_token)s AND lease_expires_at > now()
  AND status = ANY(CASE %(status)s
                   WHEN 'merging' THEN ARRAY['generating', 'merging']
                   WHEN 'uploading' THEN ARRAY['merging', 'uploading']
                   END)
RETURNING task_id;

-- complete_task --
-- Finishing a task also counts it out of its requester's unfinished tasks and, when the
-- mini-program asked for one, puts its notice in the outbox: all in the one statement,
-- so a crash can split none of them.
WITH task AS (
    UPDATE video_generation_tasks
    SET status = 'completed', progress = 100, current_part = total_parts,
        video_url = %(video_url)s, video_key = %(video_key)s, error_message = NULL,
        error_code = NULL, worker_id = NULL, claim_token = NULL, lease_expires_at = NULL,
        finished_at = now(), updated_at = now()
    WHERE task_id = %(task_id)s AND claim_token = %(claim_token)s AND lease_expires_at > now()
      AND status = 'uploading'
    RETURNING task_id, requester, owner_openid, notice_template_id
), audited AS (
    UPDATE video_task_attempts SET outcome = 'completed', ended_at = now()
    WHERE claim_token = %(claim_token)s AND EXISTS (SELECT 1 FROM task)
), counted_out AS (
    UPDATE video_task_requesters AS r
    SET unfinished = greatest(r.unfinished - 1, 0), updated_at = now()
    FROM task WHERE r.requester = task.requester
), noticed AS (
    INSERT INTO video_task_notices (task_id, openid, template_id)
    SELECT task_id, owner_openid, notice_template_id FROM task
    WHERE notice_template_id IS NOT NULL AND owner_openid IS NOT NULL
    ON CONFLICT DO NOTHING
)
SELECT task_id FROM task;

-- fail_task --
WITH task AS (
    UPDATE video_generation_tasks
    SET status = 'failed', error_message = %(error_message)s, error_code = %(error_code)s,
        worker_id = NULL, claim_token = NULL, lease_expires_at = NULL, finished_at = now(),
        updated_at = now()
    WHERE task_id = %(task_id)s AND claim_token = %(claim_token)s AND lease_expires_at > now()
    RETURNING task_id, requester, owner_openid, notice_template_id
), audited AS (
    UPDATE video_task_attempts SET outcome = 'failed', ended_at = now()
    WHERE claim_token = %(claim_token)s AND EXISTS (SELECT 1 FROM task)
), counted_out AS (
    UPDATE video_task_requesters AS r
    SET unfinished = greatest(r.unfinished - 1, 0), updated_at = now()
    FROM task WHERE r.requester = task.requester
), noticed AS (
    INSERT INTO video_task_notices (task_id, openid, template_id)
    SELECT task_id, owner_openid, notice_template_id FROM task
    WHERE notice_template_id IS NOT NULL AND owner_openid IS NOT NULL
    ON CONFLICT DO NOTHING
)
SELECT task_id FROM task;

-- retry_task --
-- A transient failure: back to pending, runnable again after the backoff delay.
WITH task AS (
    UPDATE video_generation_tasks
    SET status = 'pending', error_message = %(error_message)s, worker_id = NULL,
        claim_token = NULL, lease_expires_at = NULL,
        run_after = now() + make_interval(secs => %(delay_s)s), updated_at = now()
    WHERE task_id = %(task_id)s AND claim_token = %(claim_token)s AND lease_expires_at > now()
    RETURNING task_id
), audited AS (
    UPDATE video_task_attempts SET outcome = 'retried', ended_at = now()
    WHERE claim_token = %(claim_token)s AND EXISTS (SELECT 1 FROM task)
)
SELECT task_id FROM task;

-- release_task --
-- Graceful shutdown hands a task back at once; the interrupted attempt is not counted.
WITH task AS (
    UPDATE video_generation_tasks
    SET status = 'pending', worker_id = NULL, claim_token = NULL, lease_expires_at = NULL,
        run_after = now(), attempts = greatest(attempts - 1, 0), updated_at = now()
    WHERE task_id = %(task_id)s AND claim_token = %(claim_token)s AND lease_expires_at > now()
    RETURNING task_id
), audited AS (
    UPDATE video_task_attempts SET outcome = 'released', ended_at = now()
    WHERE claim_token = %(claim_token)s AND EXISTS (SELECT 1 FROM task)
)
SELECT task_id FROM task;

-- rescue_expired_tasks --
-- Tasks whose worker died or froze: back to pending, or failed once out of attempts.
-- Bounded batches: a long outage must not become one huge statement. Only running tasks
-- have a lease (the lease CHECK), so an expired lease finds exactly the stranded ones.
-- A task failed here is counted out and noticed like one failed by its worker.
WITH expired AS (
    SELECT task_id, claim_token
    FROM video_generation_tasks
    WHERE lease_expires_at < now()
    ORDER BY lease_expires_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), rescued AS (
    UPDATE video_generation_tasks AS t
    SET status = CASE WHEN t.attempts >= %(max_attempts)s THEN 'failed' ELSE 'pending' END,
        error_message = CASE WHEN t.attempts >= %(max_attempts)s
            THEN 'The video could not be generated: the worker stopped responding '
                 || t.attempts || ' times.'
            ELSE t.error_message END,
        error_code = CASE WHEN t.attempts >= %(max_attempts)s THEN 'generation_failed' END,
        finished_at = CASE WHEN t.attempts >= %(max_attempts)s THEN now() END,
        worker_id = NULL, claim_token = NULL, lease_expires_at = NULL, run_after = now(),
        updated_at = now()
    FROM expired
    WHERE t.task_id = expired.task_id
    RETURNING t.task_id, t.status, t.requester, t.owner_openid, t.notice_template_id
), audited AS (
    UPDATE video_task_attempts SET outcome = 'expired', ended_at = now()
    WHERE claim_token IN (SELECT claim_token FROM expired) AND outcome IS NULL
), counted_out AS (
    UPDATE video_task_requesters AS r
    SET unfinished = greatest(r.unfinished - failed.tasks, 0), updated_at = now()
    FROM (SELECT requester, count(*)::integer AS tasks FROM rescued
          WHERE status = 'failed' GROUP BY requester) AS failed
    WHERE r.requester = failed.requester
), noticed AS (
    INSERT INTO video_task_notices (task_id, openid, template_id)
    SELECT task_id, owner_openid, notice_template_id FROM rescued
    WHERE status = 'failed' AND notice_template_id IS NOT NULL AND owner_openid IS NOT NULL
    ON CONFLICT DO NOTHING
)
SELECT task_id, status FROM rescued;

-- count_tasks_by_status --
SELECT status, count(*) AS tasks FROM video_generation_tasks GROUP BY status;

-- queue_lag --
-- Seconds the oldest runnable pending task has waited.
SELECT coalesce(extract(epoch FROM now() - min(run_after)), 0)::float8 AS lag_s
FROM video_generation_tasks
WHERE status = 'pending' AND run_after <= now();

-- ping --
SELECT 1 AS ok;
