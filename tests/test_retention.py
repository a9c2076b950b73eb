"""Retention: the worker's maintenance loop deletes tasks finished more than RETENTION_DAYS
ago, with their parts, a bounded batch per statement; everything else stays."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import psycopg

from service import db, queries
from service.worker import runner

OLD = "40 days"


def insert(direct: psycopg.Connection, status: str, *, finished_ago: str | None,
           parts: int = 0) -> uuid.UUID:
    """A task in `status` that finished `finished_ago` (None: not finished), with
    `parts` stored parts in the ledger."""
    task_id = uuid.uuid4()
    running = status in ("generating", "merging", "uploading")
    direct.execute(
        "INSERT INTO video_generation_tasks (task_id, product_name, theme, duration, "
        "total_parts, status, worker_id, claim_token, lease_expires_at, video_url, "
        "error_message, created_at, finished_at) VALUES (%(id)s, 'bolt', 'quality', 5, 2, "
        "%(status)s, %(worker)s, %(token)s, %(lease)s, %(url)s, %(error)s, "
        "now() - interval '60 days', now() - %(ago)s::interval)",
        {"id": task_id, "status": status, "worker": "w" if running else None,
         "token": uuid.uuid4() if running else None,
         "lease": "infinity" if running else None,
         "url": "http://x/v.mp4" if status == "completed" else None,
         "error": "no" if status == "failed" else None, "ago": finished_ago})
    for index in range(parts):
        direct.execute(
            "INSERT INTO video_task_parts (task_id, part_index, provider, state, object_key, "
            "claim_token) VALUES (%s, %s, 'ffmpeg', 'stored', %s, gen_random_uuid())",
            [task_id, index, f"parts/{task_id}/part-{index:03d}.mp4"])
    return task_id


def remaining(direct: psycopg.Connection) -> tuple[set[uuid.UUID], set[uuid.UUID]]:
    """(task ids, task ids that still have parts)."""
    tasks = {r[0] for r in direct.execute("SELECT task_id FROM video_generation_tasks")}
    with_parts = {r[0] for r in direct.execute("SELECT DISTINCT task_id FROM video_task_parts")}
    return tasks, with_parts


async def test_the_loop_deletes_old_finished_tasks_and_their_parts_in_batches(
        settings, pool, direct, caplog):
    old = ([insert(direct, "completed", finished_ago=OLD, parts=2) for _ in range(3)]
           + [insert(direct, "failed", finished_ago=OLD, parts=1) for _ in range(2)])
    kept = {insert(direct, "completed", finished_ago="1 day", parts=2),
            insert(direct, "failed", finished_ago="29 days"),
            # Created 60 days ago but never finished: not retention's business.
            insert(direct, "pending", finished_ago=None),
            insert(direct, "generating", finished_ago=None, parts=1)}
    # The loop needs neither a provider nor storage: it deletes no object (see below).
    worker = runner.Worker(settings.replace(retention_days=30, retention_batch=2), pool,
                           provider=None, store=None)  # type: ignore[arg-type]
    caplog.set_level(logging.INFO, logger=runner.__name__)
    done = "retention: deleted 5 tasks finished more than 30 days ago"
    loop = asyncio.create_task(worker._retention_loop())
    try:
        deadline = time.monotonic() + 20
        while done not in caplog.text:
            assert time.monotonic() < deadline, (remaining(direct), caplog.text)
            assert not loop.done(), loop
            await asyncio.sleep(0.05)
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    tasks_left, parts_left = remaining(direct)
    assert tasks_left == kept
    assert not parts_left & set(old)  # ON DELETE CASCADE
    assert len(parts_left) == 2  # the kept tasks' parts are untouched
    # One pass took all five, in batches of two (2 + 2 + 1), without waiting for the
    # next interval (RETENTION_INTERVAL_S): that pass logged them together.
    assert caplog.text.count("retention: deleted") == 1


async def test_one_statement_deletes_one_bounded_batch_oldest_first(pool, direct):
    oldest = [insert(direct, "completed", finished_ago=f"{40 + n} days") for n in (9, 8)]
    newer = insert(direct, "failed", finished_ago="40 days")
    rows = await db.fetch_all(pool, "delete_finished_tasks", {"older_than_days": 30, "limit": 2})
    assert {row["task_id"] for row in rows} == set(oldest)
    assert newer in remaining(direct)[0]


async def test_a_locked_task_is_skipped_not_waited_for(settings, pool, direct):
    busy, free = (insert(direct, "completed", finished_ago=OLD) for _ in range(2))
    with psycopg.connect(settings.database_direct_url) as other:
        other.execute("SELECT 1 FROM video_generation_tasks WHERE task_id = %s FOR UPDATE",
                      [busy])
        started = time.monotonic()
        rows = await db.fetch_all(pool, "delete_finished_tasks",
                                  {"older_than_days": 30, "limit": 10})
        assert time.monotonic() - started < 1.0
        other.rollback()
    assert [row["task_id"] for row in rows] == [free]
    assert busy in remaining(direct)[0]


async def test_retention_days_0_keeps_finished_tasks_forever(settings, pool, direct):
    task_id = insert(direct, "completed", finished_ago="3650 days")
    worker = runner.Worker(settings.replace(retention_days=0), pool, provider=None,
                           store=None)  # type: ignore[arg-type]
    await asyncio.wait_for(worker._retention_loop(), 5)  # returns at once: nothing to do
    assert task_id in remaining(direct)[0]


async def test_a_retention_batch_reads_the_finished_at_index(direct):
    with direct.transaction(force_rollback=True):
        direct.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(row[0] for row in direct.execute(
            "EXPLAIN " + queries.get("delete_finished_tasks"),
            {"older_than_days": 30, "limit": 500}))
    assert "video_generation_tasks_finished_idx" in plan, plan
    assert "Seq Scan" not in plan, plan
