-- Retention, run by every worker's maintenance loop (service/worker/runner.py), by name.

-- delete_finished_tasks --
-- One batch: up to %(limit)s tasks that finished more than %(older_than_days)s days ago,
-- oldest first, through the finished_at index. Their parts ledger rows go with them
-- (video_task_parts' foreign key is ON DELETE CASCADE). SKIP LOCKED: workers running
-- this at once take different rows and never wait on each other.
-- The objects in storage (videos/<task_id>.mp4, parts/<task_id>/...) are NOT deleted:
-- expire them with a lifecycle rule on the bucket, or a cron job on MEDIA_DIR.
DELETE FROM video_generation_tasks
WHERE task_id IN (
    SELECT task_id
    FROM video_generation_tasks
    WHERE finished_at < now() - make_interval(days => %(older_than_days)s)
    ORDER BY finished_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
RETURNING task_id;

-- delete_idle_requesters --
-- The fairness rows of requesters with nothing unfinished whose rate limit has long run
-- out: a user who comes back starts afresh, exactly as the row's absence means.
DELETE FROM video_task_requesters
WHERE requester IN (
    SELECT requester
    FROM video_task_requesters
    WHERE unfinished = 0 AND updated_at < now() - interval '1 hour'
      AND next_create_at < now()
    ORDER BY updated_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
RETURNING requester;
