"""The progress coalescer, as a property: however polls interleave (the same task polled
many times, unknown ids, polls arriving while statements are in flight, clients that go
away mid-read), every poll that stays gets its own task's row from a statement that
started after it arrived, and nothing is left waiting. Against the real database through
PgBouncer: the reader batches real statements."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import db
from service.api.progress import ProgressReader
from service.settings import Settings

TASKS = 4
UNKNOWN = TASKS  # an index that names no task


@dataclass(frozen=True)
class Poll:
    task: int  # 0..TASKS-1, or UNKNOWN
    arrive_after: int  # loop iterations after the previous poll
    leave_after: int | None  # the client goes away this many iterations after it polled


polls = st.lists(st.builds(Poll, task=st.integers(0, UNKNOWN), arrive_after=st.integers(0, 3),
                           leave_after=st.none() | st.integers(0, 4)),
                 min_size=1, max_size=40)


@pytest.fixture
def task_ids(direct: psycopg.Connection) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(TASKS)]
    for index, task_id in enumerate(ids):
        direct.execute(
            "INSERT INTO video_generation_tasks (task_id, product_name, theme, duration, "
            "total_parts) VALUES (%s, 'product', 'theme', 5, %s)", (task_id, index + 1))
    return ids


async def iterations(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def run(settings_: Settings, ids: list[uuid.UUID], script: list[Poll],
              max_in_flight: int) -> None:
    pool = db.create_pool(settings_, name="coalescer-test")
    await pool.open(wait=True, timeout=15)
    try:
        reader = ProgressReader(pool, max_in_flight=max_in_flight)
        started: list[tuple[Poll, uuid.UUID, asyncio.Task[object]]] = []
        leaving: list[asyncio.Task[None]] = []

        async def leave(task: asyncio.Task[object], after: int) -> None:
            await iterations(after)
            task.cancel()

        for poll in script:
            await iterations(poll.arrive_after)
            task_id = ids[poll.task] if poll.task < TASKS else uuid.uuid4()
            task = asyncio.ensure_future(reader.get(task_id))
            started.append((poll, task_id, task))
            if poll.leave_after is not None:
                leaving.append(asyncio.ensure_future(leave(task, poll.leave_after)))
        await asyncio.gather(*leaving)
        for poll, task_id, task in started:
            with contextlib.suppress(asyncio.CancelledError):
                row = await asyncio.wait_for(task, timeout=10)
                if poll.task == UNKNOWN:
                    assert row is None
                else:
                    assert row is not None
                    # total_parts tells the tasks apart (the row has no name).
                    assert (row["task_id"], row["total_parts"]) == (task_id, poll.task + 1)
            if poll.leave_after is None:
                assert not task.cancelled(), "a poll that stayed was answered"
        # A statement whose every poll went away still runs to its end.
        while reader._reads:
            await asyncio.gather(*list(reader._reads), return_exceptions=True)
        assert not reader._waiting, "nothing is left waiting"
        assert reader._in_flight == 0
    finally:
        await pool.close()


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=polls, max_in_flight=st.integers(1, 3))
def test_every_poll_gets_its_own_row_however_polls_interleave(settings: Settings, task_ids,
                                                              script, max_in_flight):
    asyncio.run(run(settings, task_ids, script, max_in_flight))
