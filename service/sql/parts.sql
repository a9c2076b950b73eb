-- Every statement on the parts ledger (video_task_parts), by name.
-- Each write is one statement guarded by the task's claim: it changes nothing unless the
-- caller's claim token owns the task, the task is generating and the lease is live.
-- FOR SHARE on the task row makes the guard exact: a rescue committing meanwhile is seen
-- (the row is re-read), so a write can never land after the claim was taken away.

-- list_parts --
SELECT part_index, provider, state, remote_task_id, object_key, usage_tokens, creates
FROM video_task_parts
WHERE task_id = %(task_id)s
ORDER BY part_index;

-- record_part_intent --
-- Before a create call. Returns how many creates the part has had (this one included)
-- and the state it was in: "creating" means an earlier create's answer was never
-- recorded, so the provider may hold a task for it that nobody will poll.
WITH owner AS (
    SELECT task_id FROM video_generation_tasks
    WHERE task_id = %(task_id)s AND claim_token = %(claim_token)s
      AND status = 'generating' AND lease_expires_at > now()
    FOR SHARE
), previous AS (
    SELECT state FROM video_task_parts
    WHERE task_id = %(task_id)s AND part_index = %(part_index)s
)
INSERT INTO video_task_parts AS p (task_id, part_index, provider, state, creates, claim_token)
SELECT task_id, %(part_index)s, %(provider)s, 'creating', 1, %(claim_token)s FROM owner
ON CONFLICT (task_id, part_index) DO UPDATE
SET state = 'creating', provider = EXCLUDED.provider, remote_task_id = NULL,
    creates = p.creates + 1, claim_token = EXCLUDED.claim_token, error_message = NULL,
    updated_at = now()
WHERE p.state IN ('creating', 'failed')
RETURNING p.creates, (SELECT state FROM previous) AS previous_state;

-- record_part_created --
-- The provider's task id, recorded as soon as the create answers. A retry of this very
-- statement finds its own change.
UPDATE video_task_parts AS p
SET state = 'created', remote_task_id = %(remote_task_id)s, updated_at = now()
FROM (SELECT task_id FROM video_generation_tasks
      WHERE task_id = %(task_id)s AND claim_token = %(claim_token)s
        AND status = 'generating' AND lease_expires_at > now()
      FOR SHARE) AS owner
WHERE p.task_id = owner.task_id AND p.part_index = %(part_index)s
  AND (p.state = 'creating'
       OR (p.state = 'created' AND p.remote_task_id = %(remote_task_id)s))
RETURNING p.part_index;

-- record_part_failed --
-- The part's remote task can give no clip, or its create was refused: the next attempt
-- creates a new one (without counting a possible duplicate).
UPDATE video_task_parts AS p
SET state = 'failed', error_message = %(error_message)s, updated_at = now()
FROM (SELECT task_id FROM video_generation_tasks
      WHERE task_id = %(task_id)s AND claim_token = %(claim_token)s
        AND status = 'generating' AND lease_expires_at > now()
      FOR SHARE) AS owner
WHERE p.task_id = owner.task_id AND p.part_index = %(part_index)s
  AND p.state IN ('creating', 'created', 'failed')
RETURNING p.part_index;

-- record_part_stored --
-- The part's clip is an object in storage: the ledger row and the task's progress in one
-- statement. current_part and progress only ever grow.
WITH task AS (
    UPDATE video_generation_tasks
    SET current_part = greatest(current_part, %(parts_done)s),
        progress = greatest(progress, %(progress)s),
        lease_expires_at = now() + make_interval(secs => %(lease_s)s),
        updated_at = now()
    WHERE task_id = %(task_id)s AND claim_token = %(claim_token)s
      AND status = 'generating' AND lease_expires_at > now()
    RETURNING task_id
)
INSERT INTO video_task_parts AS p
    (task_id, part_index, provider, state, remote_task_id, object_key, usage_tokens,
     claim_token)
SELECT task_id, %(part_index)s, %(provider)s, 'stored', %(remote_task_id)s, %(object_key)s,
       %(usage_tokens)s, %(claim_token)s
FROM task
ON CONFLICT (task_id, part_index) DO UPDATE
SET state = 'stored', remote_task_id = EXCLUDED.remote_task_id,
    object_key = EXCLUDED.object_key, usage_tokens = EXCLUDED.usage_tokens,
    claim_token = EXCLUDED.claim_token, error_message = NULL, updated_at = now()
WHERE p.state <> 'stored' OR p.claim_token = EXCLUDED.claim_token
RETURNING p.part_index;
