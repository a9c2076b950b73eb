"""The status vocabulary: every statement, run against a task in every status, makes only
the moves in tasks.TRANSITIONS, and only for the worker holding the lease."""

from __future__ import annotations

import uuid

import pytest

from service import queries, tasks
from service.tasks import Status

WORKER = "worker-under-test"

# Each state-changing statement with parameters a worker would send.
STATEMENTS = {
    "claim_tasks": {"worker_id": WORKER, "limit": 100, "lease_s": 30},
    "finish_part": {"worker_id": WORKER, "part": 1, "progress": 40, "lease_s": 30},
    "set_stage/merging": {"worker_id": WORKER, "status": "merging", "progress": 85,
                          "lease_s": 30},
    "set_stage/uploading": {"worker_id": WORKER, "status": "uploading", "progress": 95,
                            "lease_s": 30},
    "complete_task": {"worker_id": WORKER, "video_url": "http://x/v.mp4"},
    "fail_task": {"worker_id": WORKER, "error_message": "no"},
    "retry_task": {"worker_id": WORKER, "error_message": "again", "delay_s": 0},
    "release_task": {"worker_id": WORKER},
    "rescue_expired_tasks": {"max_attempts": 3},
}


def insert(direct, status: Status, *, worker_id: str = WORKER, attempts: int = 1) -> uuid.UUID:
    task_id = uuid.uuid4()
    running = status in tasks.RUNNING
    direct.execute(
        "INSERT INTO video_generation_tasks (task_id, product_name, theme, duration, "
        "total_parts, status, worker_id, lease_expires_at, video_url, error_message, "
        "attempts, run_after) VALUES (%s, 'p', 't', 10, 2, %s, %s, "
        "CASE WHEN %s THEN now() - interval '1 minute' END, %s, %s, %s, "
        "now() - interval '1 minute')",
        [task_id, status.value, worker_id if running else None, running,
         "http://x/old.mp4" if status is Status.COMPLETED else None,
         "old" if status is Status.FAILED else None, attempts])
    return task_id


def status_of(direct, task_id: uuid.UUID) -> Status:
    return Status(direct.execute("SELECT status FROM video_generation_tasks WHERE task_id = %s",
                                 [task_id]).fetchone()[0])


@pytest.mark.parametrize("statement", list(STATEMENTS))
@pytest.mark.parametrize("start", list(Status))
def test_statements_make_only_allowed_moves(direct, statement, start):
    name = statement.split("/")[0]
    with direct.transaction(force_rollback=True):
        # Alone in the queue, so claim and rescue see only this task.
        direct.execute("DELETE FROM video_generation_tasks")
        task_id = insert(direct, start)
        direct.execute(queries.get(name), {"task_id": task_id, **STATEMENTS[statement]})
        end = status_of(direct, task_id)
    assert end == start or tasks.can_move(start, end), f"{name}: {start} -> {end}"


@pytest.mark.parametrize("statement", [s for s in STATEMENTS
                                       if s not in {"claim_tasks", "rescue_expired_tasks"}])
@pytest.mark.parametrize("start", sorted(tasks.RUNNING))
def test_a_worker_without_the_lease_changes_nothing(direct, statement, start):
    name = statement.split("/")[0]
    with direct.transaction(force_rollback=True):
        task_id = insert(direct, start, worker_id="another-worker")
        before = direct.execute("SELECT * FROM video_generation_tasks WHERE task_id = %s",
                                [task_id]).fetchone()
        cur = direct.execute(queries.get(name), {"task_id": task_id, **STATEMENTS[statement]})
        assert cur.fetchall() == []
        after = direct.execute("SELECT * FROM video_generation_tasks WHERE task_id = %s",
                               [task_id]).fetchone()
    assert after == before


def test_terminal_states_are_final():
    assert tasks.TRANSITIONS[Status.COMPLETED] == frozenset()
    assert tasks.TRANSITIONS[Status.FAILED] == frozenset()
    # Every non-terminal status can still reach a terminal one.
    for status in set(Status) - tasks.TERMINAL:
        reachable, frontier = set(), {status}
        while frontier:
            step = frontier.pop()
            for nxt in tasks.TRANSITIONS[step] - reachable:
                reachable.add(nxt)
                frontier.add(nxt)
        assert reachable & tasks.TERMINAL, status
