"""GET /api/progress/{id}?wait=S&since=T: a poll held until its task changes.

It answers at once when the task changed after T or is finished, else when the row
changes (within a tick) or S passes; held polls cost no statement each (one a tick for
all of them, counted in PgBouncer's SHOW STATS); the caps answer at once; a graceful stop
answers every held poll at once."""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import psycopg
import pytest
from aiohttp import web

from ops.stack import free_port
from service.api import protocol
from service.api.app import create_app
from service.settings import Settings
from tests.helpers import WRITE_UP_REQUEST, create_task
from tests.test_api import pgbouncer_queries
from tests.test_faults import wait_exit

TICK_S = 0.2
WAIT_MAX_S = 3.0


@pytest.fixture
async def waiting_api(settings: Settings) -> AsyncIterator[str]:
    """The API served here with a short tick and a short longest wait."""
    settings = settings.replace(metrics_port=0, progress_wait_tick_s=TICK_S,
                                progress_wait_max_s=WAIT_MAX_S, progress_waiters_max=500,
                                progress_waiters_per_user=0)
    runner = protocol.ApiRunner(create_app(settings), settings)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


def query(wait: float | str, since: str | None = None) -> str:
    params = {"wait": str(wait)} | ({"since": since} if since else {})
    return "?" + urllib.parse.urlencode(params)


async def poll(http: aiohttp.ClientSession, base: str, task_id: str,
               suffix: str = "") -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    async with http.get(f"{base}/api/progress/{task_id}{suffix}") as resp:
        return resp.status, await resp.json(), time.monotonic() - started


def touch(direct: psycopg.Connection, task_id: str, progress: int) -> None:
    """What a worker's statement does to a task: a change and a new updated_at."""
    direct.execute("UPDATE video_generation_tasks SET progress = %s, updated_at = now() "
                   "WHERE task_id = %s", (progress, task_id))


async def test_a_change_is_answered_within_a_tick(http, waiting_api, direct):
    task_id = (await create_task(http, waiting_api))["task_id"]
    _, first, _ = await poll(http, waiting_api, task_id)
    held = asyncio.ensure_future(poll(http, waiting_api, task_id,
                                      query(WAIT_MAX_S, first["updated_at"])))
    await asyncio.sleep(0.5)
    assert not held.done(), "nothing changed yet: the poll is held"
    changed_at = time.monotonic()
    touch(direct, task_id, 42)
    status, answer, _ = await held
    seen_after = time.monotonic() - changed_at
    assert status == 200
    assert answer["progress"] == 42 and answer["updated_at"] > first["updated_at"]
    assert seen_after < TICK_S + 0.5, seen_after


async def test_without_a_change_it_answers_the_same_row_when_the_wait_ends(http, waiting_api):
    task_id = (await create_task(http, waiting_api))["task_id"]
    _, first, _ = await poll(http, waiting_api, task_id)
    status, answer, took = await poll(http, waiting_api, task_id,
                                      query(1, first["updated_at"]))
    assert status == 200 and answer == first
    assert 1 <= took < 1 + TICK_S + 0.5, took
    # A wait over the server's limit is cut to it.
    _, _, took = await poll(http, waiting_api, task_id, query(600, first["updated_at"]))
    assert WAIT_MAX_S <= took < WAIT_MAX_S + TICK_S + 0.5, took


async def test_it_answers_at_once_when_there_is_news_or_nothing_to_compare(
        http, waiting_api, direct):
    task_id = (await create_task(http, waiting_api))["task_id"]
    _, first, _ = await poll(http, waiting_api, task_id)
    # No since: the client has seen nothing yet.
    _, answer, took = await poll(http, waiting_api, task_id, query(WAIT_MAX_S))
    assert answer == first and took < 1
    # Changed after what the client saw.
    touch(direct, task_id, 10)
    _, answer, took = await poll(http, waiting_api, task_id,
                                 query(WAIT_MAX_S, first["updated_at"]))
    assert answer["progress"] == 10 and took < 1
    # Finished: it will not change again.
    direct.execute("UPDATE video_generation_tasks SET status = 'failed', "
                   "error_message = 'x', finished_at = now() WHERE task_id = %s", (task_id,))
    _, done, _ = await poll(http, waiting_api, task_id)
    _, answer, took = await poll(http, waiting_api, task_id,
                                 query(WAIT_MAX_S, done["updated_at"]))
    assert answer["status"] == "failed" and took < 1
    # An unencoded "+" of the offset (a space once decoded) is read as meant.
    suffix = f"?wait=1&since={done['updated_at']}"
    status, _, _ = await poll(http, waiting_api, task_id, suffix)
    assert status == 200


@pytest.mark.parametrize(("suffix", "field"), [
    ("?wait=abc", "wait"), ("?wait=-1", "wait"), ("?wait=1e9", "wait"),
    ("?wait=NaN", "wait"), ("?wait=1&since=yesterday", "since"),
    ("?wait=1&since=2026-12-02T01:02:03", "since"), ("?wait=1&since=" + "9" * 100, "since")])
async def test_a_bad_wait_or_since_is_a_400_naming_it(http, waiting_api, suffix, field):
    task_id = (await create_task(http, waiting_api))["task_id"]
    status, answer, _ = await poll(http, waiting_api, task_id, suffix)
    assert status == 400 and answer["error"]["field"] == field, answer


async def test_an_unknown_task_is_a_404_at_once(http, waiting_api):
    status, _, took = await poll(http, waiting_api, "00000000-0000-4000-8000-000000000000",
                                      query(WAIT_MAX_S, "2026-01-01T00:00:00+00:00"))
    assert status == 404 and took < 1


async def test_held_polls_cost_one_statement_a_tick_not_one_each(http, waiting_api,
                                                                 settings):
    created = [await create_task(http, waiting_api, {**WRITE_UP_REQUEST, "duration": 5})
               for _ in range(20)]
    firsts = [(await poll(http, waiting_api, c["task_id"]))[1] for c in created]
    held = 200  # ten polls on each of 20 tasks, none of which changes
    before = pgbouncer_queries(settings)
    answers = await asyncio.gather(*(
        poll(http, waiting_api, first["task_id"], query(2, first["updated_at"]))
        for first in firsts for _ in range(held // len(firsts))))
    statements = pgbouncer_queries(settings) - before
    assert all(status == 200 for status, _, _ in answers)
    # The first reads are coalesced (a few statements), then one a tick for 2 s.
    assert statements <= 2 / TICK_S + 15, statements


async def test_beyond_the_caps_a_poll_is_answered_at_once(http, settings):
    capped = settings.replace(metrics_port=0, progress_wait_tick_s=TICK_S,
                              progress_waiters_max=3, progress_waiters_per_user=2)
    runner = protocol.ApiRunner(create_app(capped), capped)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base = f"http://127.0.0.1:{port}"
    try:
        task_id = (await create_task(http, base))["task_id"]
        _, first, _ = await poll(http, base, task_id)
        since = first["updated_at"]
        # One user (one address): two held, the third answered at once.
        held = [asyncio.ensure_future(poll(http, base, task_id, query(2, since)))
                for _ in range(2)]
        await asyncio.sleep(0.3)
        _, answer, took = await poll(http, base, task_id, query(2, since))
        assert answer == first and took < 1
        assert [took >= 2 for _, _, took in await asyncio.gather(*held)] == [True, True]
    finally:
        await runner.cleanup()


async def test_a_graceful_stop_answers_every_held_poll_at_once(processes, http, direct):
    api = processes.start_api(progress_wait_max_s=25.0, progress_waiters_per_user=0)
    task_id = (await create_task(http, api.url))["task_id"]
    _, first, _ = await poll(http, api.url, task_id)
    held = [asyncio.ensure_future(poll(http, api.url, task_id, query(25, first["updated_at"])))
            for _ in range(20)]
    await asyncio.sleep(1)
    assert not any(h.done() for h in held)
    api.signal(signal.SIGTERM)
    answers = await asyncio.wait_for(asyncio.gather(*held), 5)
    assert all(status == 200 and answer == first for status, answer, _ in answers)
    assert await wait_exit(api, 15) == 0, api.log()[-3000:]
