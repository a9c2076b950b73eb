"""Video-generation tasks: the status vocabulary and every operation on the tasks table.

Each function is one short statement through the pool (see service.db); a state change
is guarded in its WHERE by the claim's token and a live lease, so a stale run (a worker
that froze, or lost the database for longer than the lease) changes nothing.
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
    """The progress bar once `done` of `total` parts are stored."""
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
    # The caller's openid; None for an anonymous caller (AUTH_REQUIRED off).
    owner_openid: str | None = None
    # Whom the fairness limits count the task against (see requester_key).
    requester: str = ""
    # The subscribe-message template to notify the owner with when the task finishes.
    notice_template_id: str | None = None


@dataclass(frozen=True)
class Limits:
    """The fairness limits of one requester; 0: none."""

    creates_per_minute: int = 0
    max_unfinished: int = 0
    # Retry-After for a requester at its unfinished cap: tasks take a while to finish.
    unfinished_retry_s: int = 30


def requester_key(owner_openid: str | None, client_address: str | None) -> str:
    """Who a create counts against: the user, else (anonymous) the client's address."""
    if owner_openid:
        return f"openid:{owner_openid}"
    return f"addr:{client_address or 'unknown'}"


class Refusal(StrEnum):
    RATE_LIMITED = "rate_limited"
    TOO_MANY_UNFINISHED = "too_many_unfinished"


@dataclass(frozen=True)
class Refused:
    """A create the fairness limits turned away; nothing was stored."""

    reason: Refusal
    retry_after_s: float


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
    # Set by this claim; every later statement about the task presents it.
    claim_token: uuid.UUID
    product_name: str
    theme: str
    duration: int
    total_parts: int
    current_part: int
    attempts: int


async def create(pool: AsyncConnectionPool, new: NewTask,
                 limits: Limits = Limits()) -> CreatedTask | Refused:
    """Insert a pending task, or return the one an earlier try or Idempotency-Key made;
    or, when the requester is over a fairness limit, store nothing and say why."""
    params = {"task_id": uuid.uuid4(), **new.__dict__,
              "creates_per_minute": limits.creates_per_minute,
              "max_unfinished": limits.max_unfinished,
              "unfinished_retry_s": limits.unfinished_retry_s}
    row = await db.fetch_one(pool, "create_task", params)
    assert row is not None, "create_task answers one row"
    if row["refused"] is not None:
        return Refused(Refusal(row["refused"]), retry_after_s=row["retry_after_s"])
    return CreatedTask(task_id=row["task_id"], status=Status(row["status"]),
                       total_parts=row["total_parts"],
                       request_fingerprint=row["request_fingerprint"], created=row["created"])


async def get_progress(pool: AsyncConnectionPool, task_id: uuid.UUID) -> dict[str, Any] | None:
    return await db.fetch_one(pool, "get_progress", {"task_id": task_id})


async def get_progress_many(pool: AsyncConnectionPool,
                            task_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
    rows = await db.fetch_all(pool, "get_progress_many", {"task_ids": task_ids})
    return {row["task_id"]: row for row in rows}


async def get_progress_changed(pool: AsyncConnectionPool, since: dict[uuid.UUID, datetime]
                               ) -> list[dict[str, Any]]:
    """The rows of these tasks that changed after their `since`."""
    return await db.fetch_all(pool, "get_progress_changed", {
        "task_ids": list(since), "since": list(since.values())})


async def list_for_owner(pool: AsyncConnectionPool, *, owner_openid: str, limit: int,
                         before: tuple[datetime, uuid.UUID] | None) -> list[dict[str, Any]]:
    """One page of the owner's tasks, newest first, after the (created_at, task_id) key."""
    return await db.fetch_all(pool, "list_owner_tasks", {
        "owner_openid": owner_openid, "limit": limit,
        "before_created_at": before[0] if before else None,
        "before_task_id": before[1] if before else None})


async def get_state(pool: AsyncConnectionPool, task_id: uuid.UUID) -> dict[str, Any] | None:
    return await db.fetch_one(pool, "get_task_state", {"task_id": task_id})


async def claim(pool: AsyncConnectionPool, *, worker_id: str, limit: int, lease_s: float,
                running: list[uuid.UUID]) -> list[ClaimedTask]:
    """Lease up to `limit` tasks, none of those in `running` (this worker's own runs)."""
    rows = await db.fetch_all(pool, "claim_tasks", {
        "worker_id": worker_id, "limit": limit, "lease_s": lease_s, "running": running})
    return [ClaimedTask(**row) for row in rows]


async def heartbeat(pool: AsyncConnectionPool, *, claim_tokens: list[uuid.UUID],
                    lease_s: float) -> set[uuid.UUID]:
    """Extend the live leases; returns the claim tokens that still own their task."""
    rows = await db.fetch_all(pool, "heartbeat_tasks",
                              {"claim_tokens": claim_tokens, "lease_s": lease_s})
    return {row["claim_token"] for row in rows}


async def set_stage(pool: AsyncConnectionPool, *, task_id: uuid.UUID, claim_token: uuid.UUID,
                    status: Status, lease_s: float) -> bool:
    progress = {Status.MERGING: MERGING_PROGRESS, Status.UPLOADING: UPLOADING_PROGRESS}[status]
    return await db.changed(pool, "set_stage", {
        "task_id": task_id, "claim_token": claim_token, "status": status.value,
        "progress": progress, "lease_s": lease_s})


async def complete(pool: AsyncConnectionPool, *, task_id: uuid.UUID, claim_token: uuid.UUID,
                   video_url: str, video_key: str) -> bool:
    return await db.changed(pool, "complete_task", {
        "task_id": task_id, "claim_token": claim_token, "video_url": video_url,
        "video_key": video_key})


class FailureCode(StrEnum):
    """Why a failed task failed, for the client (progress answers it as error_code)."""

    # The provider's moderation refused the text or the video it made.
    CONTENT_REJECTED = "content_rejected"
    GENERATION_FAILED = "generation_failed"


async def fail(pool: AsyncConnectionPool, *, task_id: uuid.UUID, claim_token: uuid.UUID,
               error_message: str,
               error_code: FailureCode = FailureCode.GENERATION_FAILED) -> bool:
    return await db.changed(pool, "fail_task", {
        "task_id": task_id, "claim_token": claim_token, "error_message": error_message,
        "error_code": error_code.value})


async def retry_later(pool: AsyncConnectionPool, *, task_id: uuid.UUID,
                      claim_token: uuid.UUID, error_message: str, delay_s: float) -> bool:
    return await db.changed(pool, "retry_task", {
        "task_id": task_id, "claim_token": claim_token, "error_message": error_message,
        "delay_s": delay_s})


async def release(pool: AsyncConnectionPool, *, task_id: uuid.UUID,
                  claim_token: uuid.UUID) -> bool:
    return await db.changed(pool, "release_task",
                            {"task_id": task_id, "claim_token": claim_token})


# Tasks one rescue statement hands on at most; the rescuer repeats while batches are full.
RESCUE_BATCH = 100


async def rescue_expired(pool: AsyncConnectionPool, *, max_attempts: int,
                         limit: int = RESCUE_BATCH) -> list[dict[str, Any]]:
    return await db.fetch_all(pool, "rescue_expired_tasks",
                              {"max_attempts": max_attempts, "limit": limit})


async def delete_finished(pool: AsyncConnectionPool, *, older_than_days: int,
                          limit: int) -> int:
    """Retention: delete one batch of tasks finished that long ago; how many went."""
    rows = await db.fetch_all(pool, "delete_finished_tasks",
                              {"older_than_days": older_than_days, "limit": limit})
    return len(rows)


async def delete_idle_requesters(pool: AsyncConnectionPool, *, limit: int) -> int:
    """Retention of fairness rows: one batch of requesters with nothing left to count."""
    rows = await db.fetch_all(pool, "delete_idle_requesters", {"limit": limit})
    return len(rows)


async def count_for_metrics(pool: AsyncConnectionPool, *,
                            finished_window_s: float) -> list[dict[str, Any]]:
    """Unfinished tasks by status, and tasks finished in the last window (no full scan)."""
    return await db.fetch_all(pool, "count_tasks_for_metrics",
                              {"finished_window_s": finished_window_s})


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
        "error_code": row.get("error_code"),
        "created_at": _iso(row["created_at"]),
        "updated_at": _iso(row["updated_at"]),
    }


def _iso(value: datetime) -> str:
    return value.isoformat()
