-- What /metrics reads from the tasks table on every scrape, by name. Every API process
-- and worker is scraped every few seconds, so none of these scans the whole table.

-- count_tasks_for_metrics --
-- Tasks by status, cheaply: the unfinished ones (few, whatever the table's size) through
-- the claim and lease partial indexes; the finished ones only over the last
-- %(finished_window_s)s seconds, through the finished_at index. finished is true for the
-- latter. Running is `lease_expires_at IS NOT NULL` (the lease CHECK).
SELECT 'pending' AS status, false AS finished, count(*)::int AS tasks
FROM video_generation_tasks
WHERE status = 'pending'
UNION ALL
SELECT status, false AS finished, count(*)::int AS tasks
FROM video_generation_tasks
WHERE lease_expires_at IS NOT NULL
GROUP BY status
UNION ALL
SELECT status, true AS finished, count(*)::int AS tasks
FROM video_generation_tasks
WHERE finished_at > now() - make_interval(secs => %(finished_window_s)s)
GROUP BY status;
