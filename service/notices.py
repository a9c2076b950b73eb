"""The outbox of "your video is ready" subscribe messages: what a message says, and every
statement on video_task_notices (sql/notices.sql).

A notice is written by the statement that finishes its task, so finishing and the
promise to notify commit together. The worker's notifier (service.worker.notifier) sends
one at a time: claim, send, settle. The states:

- pending: due at send_after; claimed by one worker (SKIP LOCKED) right before its send.
- sending: claimed; settled by the same claim when WeChat answers.
- sent; skipped (43101: the user has no subscription left, or refused); failed (WeChat
  refused the message itself, or NOTICE_MAX_ATTEMPTS transient failures).
- unknown: the request went out and its answer was lost, or the sender stopped between
  claim and settle. WeChat has no idempotency key, so it is never resent: a duplicate
  message is worse than a missing one, and the video is in "my videos" either way.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from psycopg_pool import AsyncConnectionPool

from service import db

# A claim lasts well beyond one send (WECHAT_TIMEOUT_S, a token fetch, one retry after a
# rejected token); past it the notice is settled as unknown.
CLAIM_S = 60.0
# WeChat shows times in China's time.
MESSAGE_TIMEZONE = ZoneInfo("Asia/Shanghai")
# Subscribe-message value limits by the key's type (its name without the digits).
THING_MAX_CHARS = 20
PHRASE_MAX_CHARS = 5
CHARACTER_STRING_MAX_CHARS = 32


class NoticeState(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    SKIPPED = "skipped"
    FAILED = "failed"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Notice:
    """A claimed notice, with what its message says about the task."""

    task_id: uuid.UUID
    claim_token: uuid.UUID
    openid: str
    template_id: str
    attempts: int
    status: str
    product_name: str
    theme: str
    finished_at: datetime | None
    error_code: str | None


def values(notice: Notice) -> dict[str, str]:
    """What each source of WECHAT_NOTICE_DATA says for this notice."""
    completed = notice.status == "completed"
    if completed:
        note = "视频已生成，点击查看"
    elif notice.error_code == "content_rejected":
        note = "内容未通过审核，请修改后重试"
    else:
        note = "视频生成失败，请稍后重试"
    finished = notice.finished_at or datetime.now(MESSAGE_TIMEZONE)
    return {
        "product_name": notice.product_name,
        "theme": notice.theme,
        "status": "已完成" if completed else "生成失败",
        "finished_at": finished.astimezone(MESSAGE_TIMEZONE).strftime("%Y年%m月%d日 %H:%M"),
        "task_id": notice.task_id.hex,
        "note": note,
    }


def message_data(notice: Notice, fields: dict[str, str]) -> dict[str, str]:
    """The template's data, {key: value}, each value cut to what its key's type takes
    (a thing at most 20 characters, a phrase 5, ...): WeChat refuses a whole message
    with 47003 for one value too long."""
    said = values(notice)
    return {key: fit(key, said[source]) for key, source in fields.items()}


def fit(key: str, value: str) -> str:
    kind = key.rstrip("0123456789")
    limit = {"thing": THING_MAX_CHARS, "phrase": PHRASE_MAX_CHARS,
             "character_string": CHARACTER_STRING_MAX_CHARS}.get(kind)
    if limit is None or len(value) <= limit:
        return value
    return value[:limit - 1] + "…" if kind == "thing" else value[:limit]


def page(template: str, task_id: uuid.UUID) -> str:
    """The mini-program page the message opens: WECHAT_NOTICE_PAGE with {task_id}."""
    return template.replace("{task_id}", str(task_id))


async def claim_next(pool: AsyncConnectionPool) -> Notice | None:
    row = await db.fetch_one(pool, "claim_notice", {"claim_s": CLAIM_S})
    return Notice(**row) if row else None


async def settle(pool: AsyncConnectionPool, notice: Notice, state: NoticeState, *,
                 last_error: str | None = None) -> bool:
    return await db.changed(pool, "settle_notice", {
        "task_id": notice.task_id, "claim_token": notice.claim_token, "state": state.value,
        "last_error": last_error})


async def retry_later(pool: AsyncConnectionPool, notice: Notice, *, last_error: str,
                      delay_s: float) -> bool:
    return await db.changed(pool, "retry_notice", {
        "task_id": notice.task_id, "claim_token": notice.claim_token,
        "last_error": last_error, "delay_s": delay_s})


async def expire_claims(pool: AsyncConnectionPool, *, limit: int = 100) -> list[uuid.UUID]:
    rows = await db.fetch_all(pool, "expire_notice_claims", {"limit": limit})
    return [row["task_id"] for row in rows]


async def get(pool: AsyncConnectionPool, task_id: uuid.UUID) -> dict[str, Any] | None:
    return await db.fetch_one(pool, "get_notice", {"task_id": task_id})
