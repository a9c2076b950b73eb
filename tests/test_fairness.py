"""Fairness between the mini-program's users: per-user limits decided in the create
statement (so they hold across API processes), and a claim that serves every user's
first task before anyone's backlog.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
import psycopg
import pytest

from service import tasks
from tests.helpers import WRITE_UP_REQUEST, wait_for_status

pytestmark = pytest.mark.asyncio

# Users named by WeChat Cloud Run's header: cheaper here than a login per user.
TRUST_HEADER = {"auth_trust_wx_openid_header": True}


async def post(http: aiohttp.ClientSession, url: str, openid: str | None = None,
               **headers: str) -> tuple[int, dict[str, Any], aiohttp.typedefs.LooseHeaders]:
    if openid:
        headers["X-WX-OPENID"] = openid
    async with http.post(f"{url}/api/generate-video", json=WRITE_UP_REQUEST,
                         headers=headers) as resp:
        return resp.status, await resp.json(), resp.headers


def stored(direct: psycopg.Connection) -> int:
    return direct.execute("SELECT count(*) FROM video_generation_tasks").fetchone()[0]


async def test_over_the_unfinished_cap_is_429_while_another_user_is_served(
        processes, http, direct):
    api = processes.start_api(user_max_unfinished=3, user_creates_per_minute=0, **TRUST_HEADER)
    answers = [await post(http, api.url, "openid-busy") for _ in range(3)]
    assert [status for status, _, _ in answers] == [202, 202, 202]

    status, body, headers = await post(http, api.url, "openid-busy")
    assert status == 429, body
    assert body["error"]["code"] == "too_many_unfinished"
    assert "3" in body["error"]["message"] and int(headers["Retry-After"]) >= 1
    assert stored(direct) == 3  # the refused create stored nothing

    # Another user, at the same moment, is not held back.
    status, body, _ = await post(http, api.url, "openid-calm")
    assert status == 202, body
    # A repeated Idempotency-Key is the existing task, not a new one: never refused.
    first = await post(http, api.url, "openid-calm", **{"Idempotency-Key": "k-1"})
    assert first[0] == 202
    for _ in range(4):
        again = await post(http, api.url, "openid-calm", **{"Idempotency-Key": "k-1"})
        assert (again[0], again[1]["task_id"]) == (202, first[1]["task_id"])
        assert again[2]["Idempotent-Replayed"] == "true"


async def test_the_rate_limit_says_when_to_come_back(processes, http, direct):
    api = processes.start_api(user_max_unfinished=0, user_creates_per_minute=3, **TRUST_HEADER)
    for _ in range(3):  # the burst
        assert (await post(http, api.url, "openid-fast"))[0] == 202
    status, body, headers = await post(http, api.url, "openid-fast")
    assert status == 429 and body["error"]["code"] == "rate_limited", body
    # One create every 20 s after a burst of 3: the next one is due in at most 20 s.
    assert 1 <= int(headers["Retry-After"]) <= 20
    assert stored(direct) == 3
    # Anonymous callers are counted by their address (all of this test's are 127.0.0.1).
    assert [(await post(http, api.url))[0] for _ in range(4)] == [202, 202, 202, 429]


async def test_the_limit_holds_across_two_api_processes_under_a_concurrent_burst(
        processes, http, direct):
    settings = {"user_max_unfinished": 3, "user_creates_per_minute": 0, **TRUST_HEADER}
    apis = [processes.start_api(**settings), processes.start_api(**settings)]
    burst = [post(http, apis[i % 2].url, "openid-burst") for i in range(24)]
    statuses = [status for status, _, _ in await asyncio.gather(*burst)]
    assert sorted(statuses) == [202] * 3 + [429] * 21
    assert stored(direct) == 3
    counted = direct.execute("SELECT unfinished FROM video_task_requesters "
                             "WHERE requester = 'openid:openid-burst'").fetchone()
    assert counted == (3,)


async def test_a_finished_task_frees_its_users_slot(processes, http, pool, direct):
    settings = {"user_max_unfinished": 1, "user_creates_per_minute": 0, **TRUST_HEADER,
                "video_provider": "simulated", "simulated_part_s": 0.1}
    api = processes.start_api(**settings)
    status, body, _ = await post(http, api.url, "openid-one")
    assert status == 202
    assert (await post(http, api.url, "openid-one"))[0] == 429
    processes.start_worker(**settings)
    await wait_for_status(pool, body["task_id"], {"completed"}, 30)
    assert (await post(http, api.url, "openid-one"))[0] == 202


async def test_a_new_users_first_task_is_claimed_before_another_users_backlog(pool, direct):
    """200 tasks from one user, then one from another: the next claim takes the new
    user's task, though 199 older ones wait; the backlog keeps its own order."""
    async def make(requester: str) -> uuid.UUID:
        created = await tasks.create(pool, tasks.NewTask(
            product_name="螺栓", theme="品质", duration=5, type="video", total_parts=1,
            requester=requester))
        assert isinstance(created, tasks.CreatedTask)
        return created.task_id

    backlog = [await make("openid:heavy") for _ in range(200)]
    newcomer = await make("openid:new")
    first = await tasks.claim(pool, worker_id="w1", limit=1, lease_s=30, running=[])
    assert [t.task_id for t in first] == [backlog[0]]  # the oldest task of all goes first
    second = await tasks.claim(pool, worker_id="w1", limit=2, lease_s=30, running=[])
    # The heavy user has one running: the newcomer's turn is 1, theirs 2.
    assert [t.task_id for t in second] == [newcomer, backlog[1]]
    third = await tasks.claim(pool, worker_id="w2", limit=3, lease_s=30, running=[])
    assert [t.task_id for t in third] == backlog[2:5]


async def test_tried_as_a_new_user_would_a_burst_does_not_delay_the_next_users_video(
        processes, http, pool, direct):
    """One client creates 40 tasks; the next client's task is claimed as soon as a worker
    slot frees, not behind the 40."""
    settings = {"user_max_unfinished": 0, "user_creates_per_minute": 0, **TRUST_HEADER,
                "video_provider": "simulated", "simulated_part_s": 0.3,
                "worker_concurrency": 2}
    api = processes.start_api(**settings)
    processes.start_worker(**settings)
    burst = [await post(http, api.url, "openid-burst") for _ in range(40)]
    assert {status for status, _, _ in burst} == {202}
    status, body, _ = await post(http, api.url, "openid-next")
    assert status == 202
    await wait_for_status(pool, body["task_id"], {"completed"}, 30)
    # Claims after the newcomer's create: its task is among the first a slot could take.
    order = [row[0] for row in direct.execute(
        "SELECT a.task_id::text FROM video_task_attempts a "
        "WHERE a.claimed_at >= (SELECT created_at FROM video_generation_tasks "
        "                       WHERE task_id = %s) ORDER BY a.claimed_at",
        [body["task_id"]])]
    assert body["task_id"] in order[:2], order[:5]
    unfinished = direct.execute("SELECT count(*) FROM video_generation_tasks "
                                "WHERE finished_at IS NULL").fetchone()[0]
    assert unfinished > 20, "the burst's backlog was still waiting"
