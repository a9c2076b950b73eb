-- The mini-program's users: fairness between them, why a task failed, and the outbox of
-- "your video is ready" messages.

ALTER TABLE video_generation_tasks
    -- Whom the fairness rules count the task against: 'openid:<openid>' or
    -- 'addr:<client address>'. NULL for tasks made before this migration.
    ADD COLUMN requester text,
    -- Why a failed task failed, for the client: content_rejected, generation_failed.
    ADD COLUMN error_code text,
    -- The subscribe-message template the mini-program was granted for this task.
    ADD COLUMN notice_template_id text;

-- One row per requester: the create statement reads and changes it under its row lock,
-- so the limits hold across API processes and hosts. The finishing statements
-- (complete, fail, rescue) count a task out in the same statement that finishes it.
CREATE TABLE video_task_requesters (
    requester      text        PRIMARY KEY,
    -- Tasks not yet finished (pending or running).
    unfinished     integer     NOT NULL DEFAULT 0 CHECK (unfinished >= 0),
    -- The rate limit as GCRA (a token bucket in one timestamp): the theoretical time of
    -- the next create. A create is allowed while it is at most the burst ahead of now.
    next_create_at timestamptz NOT NULL DEFAULT '-infinity',
    updated_at     timestamptz NOT NULL DEFAULT now()
);
-- Retention drops the rows of requesters with nothing unfinished.
CREATE INDEX video_task_requesters_idle_idx ON video_task_requesters (updated_at)
    WHERE unfinished = 0;

-- The claim counts each requester's running tasks and runnable pending tasks.
CREATE INDEX video_generation_tasks_requester_idx
    ON video_generation_tasks (requester, run_after, created_at)
    WHERE status IN ('pending', 'generating', 'merging', 'uploading');

-- Creates a task unless a fairness limit refuses it, as one statement. A function, not
-- a CTE: the quota may only be charged when the task row really goes in, and a
-- concurrent create with the same Idempotency-Key is only seen by the insert itself
-- (unique_violation), after the quota was read. The insert runs in its own
-- subtransaction; when it loses that race, the other request's task is returned and
-- nothing is charged.
--
-- refused: NULL (created, or an existing task returned), 'rate_limited' or
-- 'too_many_unfinished'; retry_after_s then says when to try again.
CREATE FUNCTION create_video_task(
    p_task_id uuid, p_product_name text, p_theme text, p_duration integer, p_type text,
    p_total_parts integer, p_idempotency_key text, p_request_fingerprint text,
    p_owner_openid text, p_requester text, p_notice_template_id text,
    p_creates_per_minute integer, p_max_unfinished integer, p_unfinished_retry_s integer)
RETURNS TABLE (task_id uuid, status text, total_parts integer, request_fingerprint text,
               created boolean, refused text, retry_after_s double precision)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    quota video_task_requesters%ROWTYPE;
    emission_s double precision;
    burst_s double precision;
    wait_s double precision;
BEGIN
    -- A retried create, or a repeated Idempotency-Key: the existing task, free.
    RETURN QUERY
        SELECT t.task_id, t.status, t.total_parts, t.request_fingerprint,
               t.task_id = p_task_id, NULL::text, NULL::double precision
        FROM video_generation_tasks t
        WHERE t.task_id = p_task_id OR t.idempotency_key = p_idempotency_key
        LIMIT 1;
    IF FOUND THEN
        RETURN;
    END IF;

    INSERT INTO video_task_requesters (requester) VALUES (p_requester)
    ON CONFLICT DO NOTHING;
    -- Concurrent creates of one requester queue here, for microseconds.
    SELECT * INTO quota FROM video_task_requesters r
    WHERE r.requester = p_requester FOR UPDATE;

    IF p_max_unfinished > 0 AND quota.unfinished >= p_max_unfinished THEN
        RETURN QUERY SELECT NULL::uuid, NULL::text, NULL::integer, NULL::text, false,
                            'too_many_unfinished'::text, p_unfinished_retry_s::double precision;
        RETURN;
    END IF;
    IF p_creates_per_minute > 0 THEN
        emission_s := 60.0 / p_creates_per_minute;
        burst_s := emission_s * (p_creates_per_minute - 1);
        wait_s := extract(epoch FROM greatest(quota.next_create_at, now()) - now()) - burst_s;
        IF wait_s > 0 THEN
            RETURN QUERY SELECT NULL::uuid, NULL::text, NULL::integer, NULL::text, false,
                                'rate_limited'::text, wait_s;
            RETURN;
        END IF;
    END IF;

    BEGIN
        INSERT INTO video_generation_tasks
            (task_id, product_name, theme, duration, type, total_parts, idempotency_key,
             request_fingerprint, owner_openid, requester, notice_template_id)
        VALUES
            (p_task_id, p_product_name, p_theme, p_duration, p_type, p_total_parts,
             p_idempotency_key, p_request_fingerprint, p_owner_openid, p_requester,
             p_notice_template_id);
    EXCEPTION WHEN unique_violation THEN
        -- The same Idempotency-Key committed by a concurrent request: its task.
        RETURN QUERY
            SELECT t.task_id, t.status, t.total_parts, t.request_fingerprint, false,
                   NULL::text, NULL::double precision
            FROM video_generation_tasks t
            WHERE t.task_id = p_task_id OR t.idempotency_key = p_idempotency_key
            LIMIT 1;
        RETURN;
    END;

    UPDATE video_task_requesters r
    SET unfinished = r.unfinished + 1,
        next_create_at = CASE WHEN p_creates_per_minute > 0
            THEN greatest(r.next_create_at, now()) + make_interval(secs => emission_s)
            ELSE r.next_create_at END,
        updated_at = now()
    WHERE r.requester = p_requester;

    RETURN QUERY SELECT p_task_id, 'pending'::text, p_total_parts, p_request_fingerprint,
                        true, NULL::text, NULL::double precision;
END;
$$;

-- The outbox of subscribe messages: written by the statement that finishes a task (so a
-- crash between finishing and sending loses nothing), sent by a worker. A message is
-- claimed right before its send and recorded right after: one whose sender stopped in
-- between is 'unknown' and never sent again (WeChat has no idempotency key; a second
-- message is worse than a missing one, and the user sees the task in "my videos").
CREATE TABLE video_task_notices (
    task_id       uuid        PRIMARY KEY
                              REFERENCES video_generation_tasks (task_id) ON DELETE CASCADE,
    openid        text        NOT NULL,
    template_id   text        NOT NULL,
    state         text        NOT NULL DEFAULT 'pending',
    attempts      integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    send_after    timestamptz NOT NULL DEFAULT now(),
    -- Set by the claim that sends it; only that claim records the outcome.
    claim_token   uuid,
    claimed_until timestamptz,
    last_error    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    sent_at       timestamptz,
    CONSTRAINT video_task_notices_state_check CHECK (
        state IN ('pending', 'sending', 'sent', 'unknown', 'failed', 'skipped')),
    CONSTRAINT video_task_notices_claim_check CHECK (
        (state = 'sending') = (claim_token IS NOT NULL AND claimed_until IS NOT NULL))
);
CREATE INDEX video_task_notices_due_idx ON video_task_notices (send_after)
    WHERE state = 'pending';
CREATE INDEX video_task_notices_sending_idx ON video_task_notices (claimed_until)
    WHERE state = 'sending';
