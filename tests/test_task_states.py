"""The status vocabulary: every statement, run against a task in every status, makes only
the moves in tasks.TRANSITIONS, and only for the worker holding the lease.

More than a hundred small cases, each in one transaction rolled back at the end: they
share one copy of the template database for the module (a copy per case would add its
creation and drop to every one of them), and each starts by checking that the copy is
still empty, so no case can see another's rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from psycopg import sql

from service import queries, tasks
from service.tasks import Status
from tests.conftest import DatabaseCopy, Databases


@pytest.fixture(scope="module")
def database(databases: Databases) -> Iterator[DatabaseCopy]:
    with databases.copy(__name__.rsplit(".", 1)[-1]) as module_db:
        yield module_db


@pytest.fixture(autouse=True)
def empty_queue(direct) -> None:
    """Every case rolls back, so each finds the module's database as the template made it:
    alone in the queue, claim and rescue see only the case's own task."""
    for table in ("video_generation_tasks", "video_task_parts", "video_task_attempts"):
        count = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
        assert direct.execute(count).fetchone() == (0,), table

WORKER = "worker-under-test"
# The claim under test; rows "owned by another claim" carry a different token.
TOKEN = uuid.UUID("00000000-0000-4000-8000-000000000001")
OTHER_TOKEN = uuid.UUID("00000000-0000-4000-8000-000000000002")
PART = {"claim_token": TOKEN, "part_index": 0, "provider": "ark"}

# Each state-changing statement with parameters a worker would send.
STATEMENTS = {
    "claim_tasks": {"worker_id": WORKER, "limit": 100, "lease_s": 30, "running": []},
    "heartbeat_tasks": {"claim_tokens": [TOKEN], "lease_s": 30},
    "set_stage/merging": {"claim_token": TOKEN, "status": "merging", "progress": 85,
                          "lease_s": 30},
    "set_stage/uploading": {"claim_token": TOKEN, "status": "uploading", "progress": 95,
                            "lease_s": 30},
    "complete_task": {"claim_token": TOKEN, "video_url": "http://x/v.mp4",
                      "video_key": "videos/v.mp4"},
    "fail_task": {"claim_token": TOKEN, "error_message": "no", "error_code": "generation_failed"},
    "retry_task": {"claim_token": TOKEN, "error_message": "again", "delay_s": 0},
    "release_task": {"claim_token": TOKEN},
    "rescue_expired_tasks": {"max_attempts": 3, "limit": 100},
    "record_part_intent": PART,
    "record_part_stored": {**PART, "remote_task_id": "cgt-1", "object_key": "parts/p0.mp4",
                           "usage_tokens": 10, "parts_done": 1, "progress": 40,
                           "lease_s": 30},
}
# The status each statement leaves a task in, from each status it changes.
EXPECTED = {
    "claim_tasks": {Status.PENDING: Status.GENERATING},
    "set_stage/merging": {Status.GENERATING: Status.MERGING, Status.MERGING: Status.MERGING},
    "set_stage/uploading": {Status.MERGING: Status.UPLOADING,
                            Status.UPLOADING: Status.UPLOADING},
    "complete_task": {Status.UPLOADING: Status.COMPLETED},
    "fail_task": dict.fromkeys(tasks.RUNNING, Status.FAILED),
    "retry_task": dict.fromkeys(tasks.RUNNING, Status.PENDING),
    "release_task": dict.fromkeys(tasks.RUNNING, Status.PENDING),
    # The rows under test have an expired lease and attempts left.
    "rescue_expired_tasks": dict.fromkeys(tasks.RUNNING, Status.PENDING),
}


def insert(direct, status: Status, *, token: uuid.UUID = TOKEN, attempts: int = 1,
           lease: str = "1 minute") -> uuid.UUID:
    """A task in `status`; a running one is claimed by `token` with a lease `lease` from
    now (negative: expired)."""
    task_id = uuid.uuid4()
    running = status in tasks.RUNNING
    direct.execute(
        "INSERT INTO video_generation_tasks (task_id, product_name, theme, duration, "
        "total_parts, status, worker_id, claim_token, lease_expires_at, video_url, "
        "error_message, attempts, run_after) VALUES (%s, 'p', 't', 10, 2, %s, %s, %s, "
        "CASE WHEN %s THEN now() + %s::interval END, %s, %s, %s, "
        "now() - interval '1 minute')",
        [task_id, status.value, WORKER if running else None, token if running else None,
         running, lease, "http://x/old.mp4" if status is Status.COMPLETED else None,
         "old" if status is Status.FAILED else None, attempts])
    return task_id


def status_of(direct, task_id: uuid.UUID) -> Status:
    return Status(direct.execute("SELECT status FROM video_generation_tasks WHERE task_id = %s",
                                 [task_id]).fetchone()[0])


@pytest.mark.parametrize("statement", list(STATEMENTS))
@pytest.mark.parametrize("start", list(Status))
def test_statements_make_exactly_the_expected_moves(direct, statement, start):
    name = statement.split("/")[0]
    # Rescue acts on expired leases; every other statement on a live one.
    lease = "-1 minute" if name == "rescue_expired_tasks" else "1 minute"
    with direct.transaction(force_rollback=True):
        task_id = insert(direct, start, lease=lease)
        direct.execute(queries.get(name), {"task_id": task_id, **STATEMENTS[statement]})
        end = status_of(direct, task_id)
    expected = EXPECTED.get(statement, {}).get(start, start)
    assert end == expected, f"{name}: {start} -> {end}, expected {expected}"
    assert end == start or tasks.can_move(start, end), f"{name}: {start} -> {end}"


GUARDED = [s for s in STATEMENTS if s not in {"claim_tasks", "rescue_expired_tasks"}]


def snapshot(direct, task_id: uuid.UUID) -> tuple:
    task = direct.execute("SELECT * FROM video_generation_tasks WHERE task_id = %s",
                          [task_id]).fetchone()
    task_parts = direct.execute("SELECT * FROM video_task_parts WHERE task_id = %s",
                                [task_id]).fetchall()
    return task, task_parts


@pytest.mark.parametrize("statement", GUARDED)
@pytest.mark.parametrize("start", sorted(tasks.RUNNING))
def test_another_claim_changes_nothing(direct, statement, start):
    name = statement.split("/")[0]
    with direct.transaction(force_rollback=True):
        task_id = insert(direct, start, token=OTHER_TOKEN)
        before = snapshot(direct, task_id)
        cur = direct.execute(queries.get(name), {"task_id": task_id, **STATEMENTS[statement]})
        assert cur.fetchall() == []
        assert snapshot(direct, task_id) == before


@pytest.mark.parametrize("statement", GUARDED)
@pytest.mark.parametrize("start", sorted(tasks.RUNNING))
def test_an_expired_lease_is_dead_even_for_its_own_claim(direct, statement, start):
    """The database was away longer than the lease: the claim may already be handed on,
    so nothing it says counts any more, a heartbeat included."""
    name = statement.split("/")[0]
    with direct.transaction(force_rollback=True):
        task_id = insert(direct, start, lease="-1 second")
        before = snapshot(direct, task_id)
        cur = direct.execute(queries.get(name), {"task_id": task_id, **STATEMENTS[statement]})
        assert cur.fetchall() == []
        assert snapshot(direct, task_id) == before


def test_a_claim_never_takes_a_task_the_worker_still_runs(direct):
    with direct.transaction(force_rollback=True):
        mine, other = insert(direct, Status.PENDING), insert(direct, Status.PENDING)
        params = {**STATEMENTS["claim_tasks"], "running": [mine]}
        claimed = direct.execute(queries.get("claim_tasks"), params).fetchall()
        tokens = direct.execute("SELECT claim_token FROM video_generation_tasks "
                                "WHERE task_id = %s", [other]).fetchone()
    assert [row[0] for row in claimed] == [other]
    assert tokens[0] is not None


def test_every_non_terminal_status_can_reach_a_terminal_one():
    for status in set(Status) - tasks.TERMINAL:
        reachable, frontier = set(), {status}
        while frontier:
            step = frontier.pop()
            for nxt in tasks.TRANSITIONS[step] - reachable:
                reachable.add(nxt)
                frontier.add(nxt)
        assert reachable & tasks.TERMINAL, status


# How each statement that ends a claim records it in the attempts audit.
AUDITED = {"complete_task": "completed", "fail_task": "failed", "retry_task": "retried",
           "release_task": "released", "rescue_expired_tasks": "expired"}


@pytest.mark.parametrize("statement", list(AUDITED))
def test_a_claim_that_ends_records_how_in_the_attempts_audit(direct, statement):
    start = Status.UPLOADING  # every one of these statements ends a claim from here
    lease = "-1 minute" if statement == "rescue_expired_tasks" else "1 minute"
    with direct.transaction(force_rollback=True):
        task_id = insert(direct, start, lease=lease)
        direct.execute("INSERT INTO video_task_attempts (claim_token, task_id, worker_id) "
                       "VALUES (%s, %s, %s)", [TOKEN, task_id, WORKER])
        direct.execute(queries.get(statement), {"task_id": task_id, **STATEMENTS[statement]})
        outcome, ended = direct.execute(
            "SELECT outcome, ended_at IS NOT NULL FROM video_task_attempts "
            "WHERE claim_token = %s", [TOKEN]).fetchone()
    assert (outcome, ended) == (AUDITED[statement], True)


def test_a_claim_opens_an_attempt(direct):
    with direct.transaction(force_rollback=True):
        task_id = insert(direct, Status.PENDING)
        (row,) = direct.execute(queries.get("claim_tasks"), STATEMENTS["claim_tasks"]).fetchall()
        audit = direct.execute("SELECT task_id, worker_id, outcome FROM video_task_attempts "
                               "WHERE claim_token = %s", [row[1]]).fetchone()
    assert audit == (task_id, WORKER, None)
