"""Progress that waits for a change: `GET /api/progress/{id}?wait=S&since=T`.

A mini-program user polling once a second for the minutes a video takes is mostly told
"no change". A waiting poll is instead held until its task changes after `T` (the
`updated_at` the client last saw) or `S` seconds pass. Held polls cost no connection, no
statement and no timer each: one loop per API process wakes every PROGRESS_WAIT_TICK_S,
answers the polls whose deadline passed with the row they already have (the last tick
saw no change), and asks about every other waited-on task in one statement
(`get_progress_changed`), through PgBouncer like everything else. No LISTEN: transaction
pooling has no session to hold it.

Bounded: beyond PROGRESS_WAITERS_MAX polls in a process, or PROGRESS_WAITERS_PER_USER of
one user, a poll is answered at once like a plain one; the API's graceful stop answers
every held poll at once (`release_all`).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from psycopg_pool import AsyncConnectionPool

from service import tasks

logger = logging.getLogger(__name__)
Row = dict[str, Any]
# Tasks per statement: bounds one statement's array and time.
MAX_TASKS_PER_STATEMENT = 5000


class Outcome(StrEnum):
    CHANGED = "changed"  # the task changed while the poll waited
    TIMEOUT = "timeout"  # nothing changed within its wait
    CAPPED = "capped"  # too many waiting polls: answered at once
    STOPPING = "stopping"  # the API is stopping: answered at once


@dataclass(eq=False)
class _Waiter:
    task_id: uuid.UUID
    since: datetime
    deadline: float
    user: str
    row: Row
    future: asyncio.Future[tuple[Row, Outcome]] = field(repr=False)


class ProgressWaits:
    def __init__(self, pool: AsyncConnectionPool, *, tick_s: float, max_waiting: int,
                 max_per_user: int) -> None:
        self.pool = pool
        self.tick_s = tick_s
        self.max_waiting = max_waiting
        self.max_per_user = max_per_user  # 0: no limit
        self._by_task: dict[uuid.UUID, list[_Waiter]] = {}
        self._deadlines: list[tuple[float, int, _Waiter]] = []
        self._order = itertools.count()
        self._per_user: Counter[str] = Counter()
        self._waiting = 0
        self._ticker: asyncio.Task[None] | None = None
        self._stopping = False
        # Set while the tick's statement fails: logged when it starts and when it ends,
        # not four times a second.
        self._failing = False

    @property
    def waiting(self) -> int:
        return self._waiting

    async def wait(self, row: Row, *, since: datetime, wait_s: float,
                   user: str) -> tuple[Row, Outcome]:
        """The task's row once it changed after `since`, or `row` after wait_s."""
        if (self._stopping or self._waiting >= self.max_waiting
                or (self.max_per_user and self._per_user[user] >= self.max_per_user)):
            return row, Outcome.CAPPED
        loop = asyncio.get_running_loop()
        waiter = _Waiter(row["task_id"], since, time.monotonic() + wait_s, user, row,
                         loop.create_future())
        self._add(waiter)
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.create_task(self._tick_while_waiting())
        try:
            return await waiter.future
        finally:
            self._remove(waiter)  # also when the client went away meanwhile

    def release_all(self) -> None:
        """Answer every held poll now with the row it has: the API is stopping."""
        self._stopping = True
        for waiters in list(self._by_task.values()):
            for waiter in list(waiters):
                self._answer(waiter, waiter.row, Outcome.STOPPING)

    async def close(self) -> None:
        self.release_all()
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)

    def _add(self, waiter: _Waiter) -> None:
        self._by_task.setdefault(waiter.task_id, []).append(waiter)
        heapq.heappush(self._deadlines, (waiter.deadline, next(self._order), waiter))
        self._per_user[waiter.user] += 1
        self._waiting += 1

    def _remove(self, waiter: _Waiter) -> None:
        waiters = self._by_task.get(waiter.task_id)
        if waiters is None or waiter not in waiters:
            return
        waiters.remove(waiter)
        if not waiters:
            del self._by_task[waiter.task_id]
        self._per_user[waiter.user] -= 1
        if not self._per_user[waiter.user]:
            del self._per_user[waiter.user]
        self._waiting -= 1
        # Its heap entry stays until its deadline comes up: skipped there as answered.

    def _answer(self, waiter: _Waiter, row: Row, outcome: Outcome) -> None:
        self._remove(waiter)
        if not waiter.future.done():
            waiter.future.set_result((row, outcome))

    async def _tick_while_waiting(self) -> None:
        while self._by_task:
            await asyncio.sleep(self.tick_s)
            since: dict[uuid.UUID, datetime] = {
                task_id: min(w.since for w in waiters)
                for task_id, waiters in self._by_task.items()}
            ids = list(since)
            for start in range(0, len(ids), MAX_TASKS_PER_STATEMENT):
                chunk = {task_id: since[task_id]
                         for task_id in ids[start:start + MAX_TASKS_PER_STATEMENT]}
                try:
                    rows = await tasks.get_progress_changed(self.pool, chunk)
                except Exception as exc:  # the database is away: polls wait on, then time out
                    if not self._failing:
                        logger.warning("progress waits: checking %d tasks failed: %s",
                                       len(chunk), exc)
                    self._failing = True
                    continue
                if self._failing:
                    logger.info("progress waits: checking tasks works again")
                    self._failing = False
                for row in rows:
                    for waiter in list(self._by_task.get(row["task_id"], ())):
                        if row["updated_at"] > waiter.since:
                            self._answer(waiter, row, Outcome.CHANGED)
            # After the check: a poll due now was just told of no change.
            self._expire(time.monotonic())

    def _expire(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            _deadline, _order, waiter = heapq.heappop(self._deadlines)
            if not waiter.future.done():
                # This tick saw no change: the row it has is the current one.
                self._answer(waiter, waiter.row, Outcome.TIMEOUT)
