"""The parts ledger: what each part of a task is and where it stands (video_task_parts).

A worker reads it when it starts a run and writes it at every step of a part (intent
before a create call, the remote id as soon as it answers, the stored object at the end),
each write one statement guarded by the claim. Another worker on another host resumes a
task from it: a stored part is never generated again, a created one is polled again.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum

from psycopg_pool import AsyncConnectionPool

from service import db


class PartState(StrEnum):
    # A create call is or was under way and its answer is not recorded.
    CREATING = "creating"
    # The provider's task id is recorded: poll it.
    CREATED = "created"
    # The clip is an object in storage.
    STORED = "stored"
    # The remote task can give no clip, or the create was refused: create a new one.
    FAILED = "failed"


@dataclass(frozen=True)
class Part:
    part_index: int
    provider: str
    state: PartState
    remote_task_id: str | None
    object_key: str | None
    usage_tokens: int | None
    creates: int


@dataclass(frozen=True)
class Intent:
    creates: int
    # An earlier create of this part never had its answer recorded (a crash or a lost
    # answer): the provider may have started a task that nobody polls.
    possible_duplicate: bool


async def list_for(pool: AsyncConnectionPool, task_id: uuid.UUID) -> dict[int, Part]:
    rows = await db.fetch_all(pool, "list_parts", {"task_id": task_id})
    return {row["part_index"]: Part(**{**row, "state": PartState(row["state"])})
            for row in rows}


async def record_intent(pool: AsyncConnectionPool, *, task_id: uuid.UUID,
                        claim_token: uuid.UUID, part_index: int,
                        provider: str) -> Intent | None:
    """None: the claim no longer owns the task."""
    row = await db.fetch_one(pool, "record_part_intent", {
        "task_id": task_id, "claim_token": claim_token, "part_index": part_index,
        "provider": provider})
    if row is None:
        return None
    return Intent(creates=row["creates"],
                  possible_duplicate=row["previous_state"] == PartState.CREATING)


async def record_created(pool: AsyncConnectionPool, *, task_id: uuid.UUID,
                         claim_token: uuid.UUID, part_index: int, remote_task_id: str) -> bool:
    return await db.changed(pool, "record_part_created", {
        "task_id": task_id, "claim_token": claim_token, "part_index": part_index,
        "remote_task_id": remote_task_id})


async def record_failed(pool: AsyncConnectionPool, *, task_id: uuid.UUID,
                        claim_token: uuid.UUID, part_index: int, error_message: str) -> bool:
    return await db.changed(pool, "record_part_failed", {
        "task_id": task_id, "claim_token": claim_token, "part_index": part_index,
        "error_message": error_message})


async def record_stored(pool: AsyncConnectionPool, *, task_id: uuid.UUID,
                        claim_token: uuid.UUID, part_index: int, provider: str,
                        remote_task_id: str | None, object_key: str,
                        usage_tokens: int | None, parts_done: int, progress: int,
                        lease_s: float) -> bool:
    """Also moves the task's current_part and progress forward (never back)."""
    return await db.changed(pool, "record_part_stored", {
        "task_id": task_id, "claim_token": claim_token, "part_index": part_index,
        "provider": provider, "remote_task_id": remote_task_id, "object_key": object_key,
        "usage_tokens": usage_tokens, "parts_done": parts_done, "progress": progress,
        "lease_s": lease_s})
