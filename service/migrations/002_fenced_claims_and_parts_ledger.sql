-- Fenced claims: every claim gets its own token, and every later statement about the task
-- must present it. A worker whose lease expired (the database was away longer than
-- LEASE_S) can no longer write, even if the same worker claims the task again.
ALTER TABLE video_generation_tasks
    ADD COLUMN claim_token uuid,
    -- The finished video's object key (storage.video_key); its URL can be signed anew.
    ADD COLUMN video_key text;

-- Rows running under an old worker get a token no worker holds: their lease expires and
-- the rescuer hands them on.
UPDATE video_generation_tasks SET claim_token = gen_random_uuid()
WHERE status IN ('generating', 'merging', 'uploading');

ALTER TABLE video_generation_tasks
    DROP CONSTRAINT video_generation_tasks_lease_check,
    ADD CONSTRAINT video_generation_tasks_lease_check CHECK (
        (status IN ('generating', 'merging', 'uploading'))
        = (worker_id IS NOT NULL AND lease_expires_at IS NOT NULL AND claim_token IS NOT NULL));

-- The parts ledger: what each part of a task is and where it stands, so any worker on any
-- host resumes a task without generating a finished part again or creating a remote task
-- it already paid for.
--   creating: a create call is (or was) under way; no remote id recorded yet. A worker
--             that finds a part here cannot know whether the provider started a task,
--             creates again and counts a possible duplicate.
--   created:  the provider's task id is recorded; a resumed task polls it.
--   stored:   the clip is an object in storage; never generated again.
--   failed:   the remote task can give no clip (or the create was refused); the next
--             attempt creates a new one.
CREATE TABLE video_task_parts (
    task_id        uuid        NOT NULL
                   REFERENCES video_generation_tasks (task_id) ON DELETE CASCADE,
    part_index     integer     NOT NULL CHECK (part_index >= 0),
    provider       text        NOT NULL,
    state          text        NOT NULL,
    remote_task_id text,
    object_key     text,
    -- What the clip cost: Ark's usage.completion_tokens (NULL for local renderers).
    usage_tokens   bigint      CHECK (usage_tokens >= 0),
    -- Create calls made for this part, across all attempts.
    creates        integer     NOT NULL DEFAULT 0 CHECK (creates >= 0),
    -- The claim that last wrote the row.
    claim_token    uuid        NOT NULL,
    error_message  text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, part_index),
    CONSTRAINT video_task_parts_state_check CHECK (
        state IN ('creating', 'created', 'stored', 'failed')),
    CONSTRAINT video_task_parts_created_check CHECK (
        state <> 'created' OR remote_task_id IS NOT NULL),
    CONSTRAINT video_task_parts_stored_check CHECK ((state = 'stored') = (object_key IS NOT NULL))
);
