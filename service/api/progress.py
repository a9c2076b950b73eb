"""Progress reads coalesced: concurrent polls share one statement.

Thousands of mini-program users poll every second. Each poll alone would cost a pool
checkout and a round trip through PgBouncer, and the API's CPU per statement, not the
database, is what limits the read path on a small machine. Polls that arrive while
earlier ones are being read wait for the next statement, which reads all their rows at
once (`task_id = ANY(...)`): under load, batches grow by themselves; when quiet, a poll
is read in the next loop iteration on its own. Rows are never cached: every answer comes
from a statement that started after the request arrived.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from psycopg_pool import AsyncConnectionPool

from service import tasks

# Rows per statement; beyond this the next batch starts in parallel.
MAX_BATCH = 256

Row = dict[str, Any] | None


class ProgressReader:
    def __init__(self, pool: AsyncConnectionPool, *, max_in_flight: int) -> None:
        self.pool = pool
        # At most this many statements at once: more would only queue for the pool.
        self.max_in_flight = max_in_flight
        self._waiting: dict[uuid.UUID, list[asyncio.Future[Row]]] = {}
        self._in_flight = 0
        self._scheduled = False
        self._reads: set[asyncio.Task[None]] = set()

    async def get(self, task_id: uuid.UUID) -> Row:
        """The task's progress row, or None for an unknown id."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Row] = loop.create_future()
        self._waiting.setdefault(task_id, []).append(future)
        self._schedule(loop)
        return await future

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        # call_soon: polls that arrive in the same loop iteration join the same batch.
        if not self._scheduled and self._in_flight < self.max_in_flight:
            self._scheduled = True
            loop.call_soon(self._start_reads)

    def _start_reads(self) -> None:
        self._scheduled = False
        while self._waiting and self._in_flight < self.max_in_flight:
            batch = dict(list(self._waiting.items())[:MAX_BATCH])
            for task_id in batch:
                del self._waiting[task_id]
            self._in_flight += 1
            read = asyncio.create_task(self._read(batch))
            self._reads.add(read)
            read.add_done_callback(self._reads.discard)

    async def _read(self, batch: dict[uuid.UUID, list[asyncio.Future[Row]]]) -> None:
        try:
            rows = await tasks.get_progress_many(self.pool, list(batch))
        except asyncio.CancelledError:
            for futures in batch.values():
                for future in futures:
                    future.cancel()
            raise
        except Exception as exc:
            # The statement failed for every poll in it: each answers as it would alone.
            for futures in batch.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
        else:
            for task_id, futures in batch.items():
                for future in futures:
                    if not future.done():  # the client may have gone away meanwhile
                        future.set_result(rows.get(task_id))
        finally:
            self._in_flight -= 1
            if self._waiting:
                self._schedule(asyncio.get_running_loop())
