-- The outbox of subscribe messages (video_task_notices, migration 006), by name. Rows
-- are written by the statements that finish a task (complete_task, fail_task,
-- rescue_expired_tasks); the workers' notifier sends them one at a time.

-- claim_notice --
-- The oldest due message, claimed right before it is sent: its claim lasts
-- %(claim_s)s seconds, longer than one send can take. With the task it is about.
WITH due AS (
    SELECT task_id
    FROM video_task_notices
    WHERE state = 'pending' AND send_after <= now()
    ORDER BY send_after
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
UPDATE video_task_notices AS n
SET state = 'sending', attempts = n.attempts + 1, claim_token = gen_random_uuid(),
    claimed_until = now() + make_interval(secs => %(claim_s)s)
FROM due, video_generation_tasks AS t
WHERE n.task_id = due.task_id AND t.task_id = n.task_id
RETURNING n.task_id, n.claim_token, n.openid, n.template_id, n.attempts, t.status,
          t.product_name, t.theme, t.finished_at, t.error_code;

-- settle_notice --
-- The send's outcome, by the claim that sent it: sent, failed, skipped (the user has no
-- subscription left) or unknown (the answer was lost). A claim that ran out was already
-- settled as unknown; a late "sent" still corrects that.
UPDATE video_task_notices
SET state = %(state)s, last_error = %(last_error)s, claim_token = NULL,
    claimed_until = NULL,
    sent_at = CASE WHEN %(state)s = 'sent' THEN now() END
WHERE (task_id = %(task_id)s AND claim_token = %(claim_token)s)
   OR (task_id = %(task_id)s AND state = 'unknown' AND %(state)s = 'sent')
RETURNING task_id;

-- retry_notice --
-- WeChat did not carry the message out (unreachable before sending, busy, rate
-- limited): pending again after the backoff.
UPDATE video_task_notices
SET state = 'pending', last_error = %(last_error)s, claim_token = NULL,
    claimed_until = NULL, send_after = now() + make_interval(secs => %(delay_s)s)
WHERE task_id = %(task_id)s AND claim_token = %(claim_token)s
RETURNING task_id;

-- expire_notice_claims --
-- Messages whose sender stopped (kill -9, a lost host) between claim and record: WeChat
-- may have delivered them, so they are never sent again.
UPDATE video_task_notices
SET state = 'unknown', claim_token = NULL, claimed_until = NULL,
    last_error = 'the sender stopped before recording the outcome; not sent again'
WHERE task_id IN (
    SELECT task_id FROM video_task_notices
    WHERE state = 'sending' AND claimed_until < now()
    ORDER BY claimed_until
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
RETURNING task_id;

-- get_notice --
SELECT task_id, openid, template_id, state, attempts, send_after, last_error, created_at,
       sent_at
FROM video_task_notices
WHERE task_id = %(task_id)s;
