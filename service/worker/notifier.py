"""The notifier: sends the outbox's subscribe messages (service.notices), one at a time.

Every worker with WECHAT_APPID runs one. It claims the oldest due notice (SKIP LOCKED, so
workers share the outbox), sends it through WeChat holding no connection, and settles it
by the same claim. It wakes when its own worker finishes a task, else every
NOTICE_POLL_S; each pass first settles as unknown the claims of senders that stopped.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from psycopg_pool import AsyncConnectionPool

from service import errors, notices, wechat
from service.notices import Notice, NoticeState
from service.settings import Settings

logger = logging.getLogger(__name__)

NOTICE_POLL_S = 2.0
# Transient failures wait about 5 s, 10 s, 20 s... (with jitter) before the next try.
RETRY_BASE_S = 5.0
RETRY_MAX_S = 300.0
# Settling retries this long while the database is unreachable, well inside the claim.
SETTLE_RETRY_S = notices.CLAIM_S / 2
DB_RETRY_DELAY_S = 0.5
# Failures WeChat did not carry out and may not repeat: try again later.
TRANSIENT_KINDS = frozenset({"unreachable", "busy", "rate_limited", "misconfigured",
                             "upstream_error"})


class Notifier:
    def __init__(self, settings: Settings, pool: AsyncConnectionPool,
                 client: wechat.WeChat) -> None:
        self.settings = settings
        self.pool = pool
        self.client = client
        self.fields = settings.notice_fields()
        self.wake = asyncio.Event()
        self.stopping = asyncio.Event()
        # Settled notices by outcome (sent, retried, skipped, failed, unknown): metrics.
        self.outcomes: collections.Counter[str] = collections.Counter()

    def stop(self) -> None:
        """Finish the send in progress, claim no more."""
        self.stopping.set()
        self.wake.set()

    async def run(self) -> None:
        while not self.stopping.is_set():
            try:
                for task_id in await notices.expire_claims(self.pool):
                    self.outcomes["unknown"] += 1
                    logger.warning("notice of task %s: its sender stopped mid-send; not "
                                   "sent again", task_id)
                while not self.stopping.is_set():
                    # The token first, before any claim: from claim to request only
                    # microseconds pass, so a stop in between (settled as unknown, never
                    # sent) almost never costs a message that was not sent.
                    await self.client.access_token()
                    notice = await notices.claim_next(self.pool)
                    if notice is None:
                        break
                    await self._send(notice)
            except (errors.DatabaseUnavailable, wechat.WeChatError) as exc:
                logger.warning("notifier: %s", exc)
            except Exception:
                logger.exception("notifier failed")
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(),
                                       NOTICE_POLL_S * random.uniform(0.8, 1.2))

    async def _send(self, notice: Notice) -> None:
        try:
            await self.client.send_subscribe_message(
                openid=notice.openid, template_id=notice.template_id,
                page=notices.page(self.settings.wechat_notice_page, notice.task_id),
                data=notices.message_data(notice, self.fields),
                miniprogram_state=self.settings.wechat_miniprogram_state)
        except wechat.WeChatError as exc:
            await self._failed(notice, exc)
            return
        logger.info("notice of task %s: sent", notice.task_id)
        await self._settle(notice, NoticeState.SENT)

    async def _failed(self, notice: Notice, exc: wechat.WeChatError) -> None:
        if exc.outcome_unknown:
            logger.warning("notice of task %s: %s; WeChat may have delivered it, not sent "
                           "again", notice.task_id, exc.message)
            await self._settle(notice, NoticeState.UNKNOWN, exc.message)
        elif exc.kind == "not_subscribed":
            logger.info("notice of task %s: the user has no subscription left (43101)",
                        notice.task_id)
            await self._settle(notice, NoticeState.SKIPPED, exc.message)
        elif exc.kind in TRANSIENT_KINDS and notice.attempts < self.settings.notice_max_attempts:
            delay = min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (notice.attempts - 1)) \
                * random.uniform(0.5, 1.0)
            logger.warning("notice of task %s: %s; try %d in %.0f s", notice.task_id,
                           exc.message, notice.attempts + 1, delay)
            await self._write(notices.retry_later, notice, "retried", last_error=exc.message,
                              delay_s=delay)
        else:
            logger.warning("notice of task %s: given up: %s", notice.task_id, exc.message)
            await self._settle(notice, NoticeState.FAILED, exc.message)

    async def _settle(self, notice: Notice, state: NoticeState,
                      last_error: str | None = None) -> None:
        await self._write(notices.settle, notice, state.value, state=state,
                          last_error=last_error)

    async def _write(self, statement: Callable[..., Awaitable[bool]], notice: Notice,
                     outcome: str, **params: Any) -> None:
        """Record the outcome, retrying while the database is unreachable; a claim that
        runs out first is settled as unknown by the next pass (never sent twice)."""
        deadline = asyncio.get_running_loop().time() + SETTLE_RETRY_S
        while True:
            try:
                recorded = await statement(self.pool, notice, **params)
                break
            except errors.DatabaseUnavailable:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(DB_RETRY_DELAY_S)
        if recorded:
            self.outcomes[outcome] += 1
        else:
            logger.warning("notice of task %s: its claim ran out before the outcome (%s) "
                           "was recorded", notice.task_id, outcome)
