"""Video-generation tasks: the status vocabulary and every operation on the tasks table.

Each function is one short statement through the pool (see service.db); a state change
is guarded in its WHERE by the worker's lease, so a stale worker changes nothing.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from psycopg_pool import AsyncConnectionPool

from service import db


class Status(StrEnum):
    # The API creates a task as pending; a worker claims it (-> generating); a retry, a
    # graceful hand-back or the lease rescuer puts it back.
    PENDING = "pending"
    # A worker renders the parts one by one; current_part counts the finished ones.
    GENERATING = "generating"
    # The worker joins the parts into one video.
    MERGING = "merging"
    # The worker stores the video where its URL is served.
    UPLOADING = "uploading"
    # Terminal: video_url is set. Only the worker holding the lease moves a task here.
    COMPLETED = "completed"
    # Terminal: error_message says why. The worker (permanent error, attempts used up)
    # or the rescuer (lease expired on the last attempt) moves a task here.
    FAILED = "failed"


RUNNING = frozenset({Status.GENERATING, Status.MERGING, Status.UPLOADING})
TERMINAL = frozenset({Status.COMPLETED, Status.FAILED})

# Every move a task can make; the statements in queries.sql make no others
# (tests/test_task_states.py runs each statement against every status to check).
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset({Status.GENERATING}),
    Status.GENERATING: frozenset({Status.GENERATING, Status.MERGING, Status.FAILED,
                                  Status.PENDING}),
    Status.MERGING: frozenset({Status.MERGING, Status.UPLOADING, Status.FAILED,
                               Status.PENDING}),
    Status.UPLOADING: frozenset({Status.UPLOADING, Status.COMPLETED, Status.FAILED,
                                 Status.PENDING}),
    Status.COMPLETED: frozenset(),
    Status.FAILED: frozenset(),
}

# Share of the progress bar each stage reaches; parts fill up to GENERATED_PROGRESS.
GENERATED_PROGRESS = 80
MERGING_PROGRESS = 85
UPLOADING_PROGRESS = 95


def can_move(current: Status, new: Status) -> bool:
    return new in TRANSITIONS[current]


def part_count(duration_s: int, part_seconds: int) -> int:
    return math.ceil(duration_s / part_seconds)


def part_lengths(duration_s: int, part_seconds: int) -> list[int]:
    """Seconds of each part: full parts, then the remainder."""
    full, rest = divmod(duration_s, part_seconds)
    return [part_seconds] * full + ([rest] if rest else [])


def progress_after_parts(done: int, total: int) -> int:
    return GENERATED_PROGRESS * done // total


@dataclass(frozen=True)
class NewTask:
    product_name: str
    theme: str
    duration: int
    type: str
    total_parts: int
    idempotency_key: str | None = None
    request_fingerprint: str | None = None


@dataclass(frozen=True)
class CreatedTask:
    task_id: uuid.UUID
    status: Status
    total_parts: int
    request_fingerprint: str | None
    created: bool


@dataclass(frozen=True)
class ClaimedTask:
    task_id: uuid.UUID
    product_name: str
    theme: str
    duration: int
    total_parts: int
    current_part: int
    attempts: int


async def create(pool: AsyncConnectionPool, new: NewTask) -> CreatedTask:
    """Insert a pending task, or return the one an earlier try or Idempotency-Key made."""
    params = {"task_id": uuid.uuid4(), **new.__dict__}
    row = await db.fetch_one(pool, "create_task", params)
    if row is None:
        # A concurrent request with the same key committed after this statement's snapshot:
        # the insert saw the conflict, the select could not yet see the row. Ask again.
        row = await db.fetch_one(pool, "create_task", params)
    assert row is not None, "create_task returns the inserted or the existing row"
    return CreatedTask(task_id=row["task_id"], status=Status(row["status"]),
                       total_parts=row["total_parts"],
                       request_fingerprint=row["request_fingerprint"], created=row["created"])


async def get_progress(pool: AsyncConnectionPool, task_id: uuid.UUID) -> dict[str, Any] | None:
    return await db.fetch_one(pool, "get_progress", {"task_id": task_id})


async def get_progress_many(pool: AsyncConnectionPool,
                            task_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
    rows = await db.fetch_all(pool, "get_progress_many", {"task_ids": task_ids})
    return {row["task_id"]: row for row in rows}


async def get_state(pool: AsyncConnectionPool, task_id: uuid.UUID) -> dict[str, Any] | None:
    return await db.fetch_one(pool, "get_task_state", {"task_id": task_id})


async def claim(pool: AsyncConnectionPool, *, worker_id: str, limit: int,
                lease_s: float) -> list[ClaimedTask]:
    rows = await db.fetch_all(pool, "claim_tasks",
                              {"worker_id": worker_id, "limit": limit, "lease_s": lease_s})
    return [ClaimedTask(**row) for row in rows]


async def heartbeat(pool: AsyncConnectionPool, *, worker_id: str, task_ids: list[uuid.UUID],
                    lease_s: float) -> set[uuid.UUID]:
    """Extend the leases; returns the ids this worker still holds."""
    rows = await db.fetch_all(pool, "heartbeat_tasks",
                              {"worker_id": worker_id, "task_ids": task_ids, "lease_s": lease_s})
    return {row["task_id"] for row in rows}


async def finish_part(pool: AsyncConnectionPool, *, task_id: uuid.UUID, worker_id: str,
                      part: int, total_parts: int, lease_s: float) -> bool:
    row = await db.fetch_one(pool, "finish_part", {
        "task_id": task_id, "worker_id": worker_id, "part": part,
        "progress": progress_after_parts(part, total_parts), "lease_s": lease_s})
    return row is not None


async def set_stage(pool: AsyncConnectionPool, *, task_id: uuid.UUID, worker_id: str,
                    status: Status, lease_s: float) -> bool:
    progress = {Status.MERGING: MERGING_PROGRESS, Status.UPLOADING: UPLOADING_PROGRESS}[status]
    row = await db.fetch_one(pool, "set_stage", {
        "task_id": task_id, "worker_id": worker_id, "status": status.value,
        "progress": progress, "lease_s": lease_s})
    return row is not None


async def complete(pool: AsyncConnectionPool, *, task_id: uuid.UUID, worker_id: str,
                   video_url: str) -> bool:
    row = await db.fetch_one(pool, "complete_task",
                             {"task_id": task_id, "worker_id": worker_id, "video_url": video_url})
    return row is not None


async def fail(pool: AsyncConnectionPool, *, task_id: uuid.UUID, worker_id: str,
               error_message: str) -> bool:
    row = await db.fetch_one(pool, "fail_task", {
        "task_id": task_id, "worker_id": worker_id, "error_message": error_message})
    return row is not None


async def retry_later(pool: AsyncConnectionPool, *, task_id: uuid.UUID, worker_id: str,
                      error_message: str, delay_s: float) -> bool:
    row = await db.fetch_one(pool, "retry_task", {
        "task_id": task_id, "worker_id": worker_id, "error_message": error_message,
        "delay_s": delay_s})
    return row is not None


async def release(pool: AsyncConnectionPool, *, task_id: uuid.UUID, worker_id: str) -> bool:
    row = await db.fetch_one(pool, "release_task", {"task_id": task_id, "worker_id": worker_id})
    return row is not None


async def rescue_expired(pool: AsyncConnectionPool, *, max_attempts: int) -> list[dict[str, Any]]:
    return await db.fetch_all(pool, "rescue_expired_tasks", {"max_attempts": max_attempts})


async def count_by_status(pool: AsyncConnectionPool) -> dict[str, int]:
    rows = await db.fetch_all(pool, "count_tasks_by_status")
    counts = {status.value: 0 for status in Status}
    counts.update({row["status"]: row["tasks"] for row in rows})
    return counts


async def queue_lag_s(pool: AsyncConnectionPool) -> float:
    row = await db.fetch_one(pool, "queue_lag")
    return float(row["lag_s"]) if row else 0.0


def progress_json(row: dict[str, Any]) -> dict[str, Any]:
    """The progress row as the API returns it."""
    return {
        "task_id": str(row["task_id"]),
        "status": row["status"],
        "progress": row["progress"],
        "current_part": row["current_part"],
        "total_parts": row["total_parts"],
        "video_url": row["video_url"],
        "error_message": row["error_message"],
        "created_at": _iso(row["created_at"]),
        "updated_at": _iso(row["updated_at"]),
    }


def _iso(value: datetime) -> str:
    return value.isoformat()
