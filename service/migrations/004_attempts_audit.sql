-- An audit of attempts: one row per claim, and how it ended. Operators see who ran a task
-- and what became of each run; tests prove "completed exactly once" from it.
CREATE TABLE video_task_attempts (
    claim_token  uuid        PRIMARY KEY,
    task_id      uuid        NOT NULL
                 REFERENCES video_generation_tasks (task_id) ON DELETE CASCADE,
    worker_id    text        NOT NULL,
    claimed_at   timestamptz NOT NULL DEFAULT now(),
    ended_at     timestamptz,
    -- NULL while the claim runs. completed / failed / retried (back to pending after a
    -- transient failure) / released (handed back on shutdown) / expired (the rescuer
    -- found its lease run out: the worker died, froze or lost the database).
    outcome      text,
    CONSTRAINT video_task_attempts_outcome_check CHECK (
        outcome IN ('completed', 'failed', 'retried', 'released', 'expired')),
    CONSTRAINT video_task_attempts_ended_check CHECK ((outcome IS NULL) = (ended_at IS NULL))
);
CREATE INDEX video_task_attempts_task_idx ON video_task_attempts (task_id);

-- "Running" has one definition, the lease CHECK (a running task has a lease and nothing
-- else has one), so the rescuer's index says lease_expires_at IS NOT NULL instead of
-- spelling the running statuses again.
DROP INDEX video_generation_tasks_lease_idx;
CREATE INDEX video_generation_tasks_lease_idx
    ON video_generation_tasks (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
