-- The task table is also the durable work queue: the API inserts pending rows, workers
-- lease them with FOR UPDATE SKIP LOCKED, and every state change is one short statement.
CREATE TABLE video_generation_tasks (
    task_id          uuid PRIMARY KEY,
    product_name     text        NOT NULL,
    theme            text        NOT NULL,
    duration         integer     NOT NULL CHECK (duration > 0),
    type             text        NOT NULL DEFAULT 'video',
    status           text        NOT NULL DEFAULT 'pending',
    progress         smallint    NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    -- Parts finished so far; a reclaimed task resumes at current_part + 1.
    current_part     integer     NOT NULL DEFAULT 0,
    total_parts      integer     NOT NULL CHECK (total_parts > 0),
    video_url        text,
    error_message    text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),

    -- Queue bookkeeping.
    attempts         integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    run_after        timestamptz NOT NULL DEFAULT now(),
    worker_id        text,
    lease_expires_at timestamptz,
    finished_at      timestamptz,

    -- Idempotency-Key of the create request and a digest of its body.
    idempotency_key     text UNIQUE,
    request_fingerprint text,

    CONSTRAINT video_generation_tasks_status_check CHECK (
        status IN ('pending', 'generating', 'merging', 'uploading', 'completed', 'failed')),
    CONSTRAINT video_generation_tasks_part_check CHECK (current_part BETWEEN 0 AND total_parts),
    -- A running task always has an owner and a lease; a waiting or finished one has neither.
    CONSTRAINT video_generation_tasks_lease_check CHECK (
        (status IN ('generating', 'merging', 'uploading'))
        = (worker_id IS NOT NULL AND lease_expires_at IS NOT NULL)),
    CONSTRAINT video_generation_tasks_completed_check CHECK (
        (status = 'completed') = (video_url IS NOT NULL)),
    CONSTRAINT video_generation_tasks_failed_check CHECK (
        status <> 'failed' OR error_message IS NOT NULL)
);

-- The claim reads pending rows in run order; a partial index keeps it small.
CREATE INDEX video_generation_tasks_claim_idx
    ON video_generation_tasks (run_after, created_at) WHERE status = 'pending';
-- The rescuer looks for running rows whose lease ran out.
CREATE INDEX video_generation_tasks_lease_idx
    ON video_generation_tasks (lease_expires_at)
    WHERE status IN ('generating', 'merging', 'uploading');
-- Operators' queries: tasks per status in the last hour, recently finished tasks.
CREATE INDEX video_generation_tasks_created_idx ON video_generation_tasks (created_at);
CREATE INDEX video_generation_tasks_finished_idx
    ON video_generation_tasks (finished_at) WHERE finished_at IS NOT NULL;
