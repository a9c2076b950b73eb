-- Who asked for each task: the caller's WeChat openid (NULL for an anonymous caller on a
-- stack with AUTH_REQUIRED off). "My videos" reads a user's tasks newest first, by keyset.
ALTER TABLE video_generation_tasks ADD COLUMN owner_openid text;
CREATE INDEX video_generation_tasks_owner_idx
    ON video_generation_tasks (owner_openid, created_at DESC, task_id DESC)
    WHERE owner_openid IS NOT NULL;
