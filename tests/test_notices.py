"""A notice when ready: the subscribe message a finished task sends, exactly once, from the
outbox in PostgreSQL.

The API and workers are real processes (`python -m service ...`, simulated provider);
WeChat is the fake server (tests/fakes/wechat.py) in a thread, speaking the real paths.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import psycopg
import pytest

from service import notices
from service.notices import Notice
from tests.fakes.wechat import DEFAULT_APPID, DEFAULT_SECRET, FakeWeChat, FakeWeChatThread
from tests.helpers import WRITE_UP_REQUEST, wait_for_status

TEMPLATE = "tmpl-video-ready-AbC_123"


@pytest.fixture
def fake_wechat() -> Iterator[FakeWeChat]:
    with FakeWeChatThread() as fake:
        yield fake


@pytest.fixture
def wechat_settings(fake_wechat: FakeWeChat) -> dict[str, Any]:
    return {"wechat_api_base": fake_wechat.base_url, "wechat_appid": DEFAULT_APPID,
            "wechat_secret": DEFAULT_SECRET, "auth_required": True,
            "video_provider": "simulated", "simulated_part_s": 0.2}


async def logged_in(http: aiohttp.ClientSession, api_url: str, fake: FakeWeChat,
                    openid: str) -> dict[str, str]:
    fake.register_code(f"code-{openid}", openid)
    async with http.post(f"{api_url}/api/login", json={"code": f"code-{openid}"}) as resp:
        assert resp.status == 200, await resp.text()
        return {"Authorization": f"Bearer {(await resp.json())['token']}"}


async def create(http: aiohttp.ClientSession, api_url: str, headers: dict[str, str],
                 **changes: Any) -> str:
    body = {**WRITE_UP_REQUEST, "template_id": TEMPLATE, **changes}
    async with http.post(f"{api_url}/api/generate-video", json=body, headers=headers) as resp:
        answer = await resp.json()
        assert resp.status == 202, answer
        return answer["task_id"]


def notice_row(direct: psycopg.Connection, task_id: str) -> dict[str, Any] | None:
    cur = direct.execute("SELECT state, attempts, last_error FROM video_task_notices "
                         "WHERE task_id = %s", [task_id])
    row = cur.fetchone()
    return None if row is None else dict(zip(("state", "attempts", "last_error"), row,
                                             strict=True))


async def wait_notice(direct: psycopg.Connection, task_id: str, states: set[str],
                      timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        row = notice_row(direct, task_id)
        if row is not None and row["state"] in states:
            return row
        if time.monotonic() > deadline:
            raise AssertionError(f"notice of {task_id} not {states} after {timeout_s} s: {row}")
        await asyncio.sleep(0.05)


def sent_for(fake: FakeWeChat, task_id: str) -> list[dict[str, Any]]:
    return [m for m in fake.stats()["sent"] if task_id in m["page"]]


@pytest.mark.asyncio
async def test_a_completed_task_sends_one_message_with_the_templates_data(
        processes, http, pool, direct, fake_wechat, wechat_settings):
    api = processes.start_api(**wechat_settings)
    processes.start_worker(**wechat_settings)
    headers = await logged_in(http, api.url, fake_wechat, "openid-alice")
    fake_wechat.subscribe("openid-alice", TEMPLATE, times=3)
    task_id = await create(http, api.url, headers, product_name="螺" * 25)

    assert (await wait_notice(direct, task_id, {"sent", "failed", "unknown"}))["state"] == "sent"
    (message,) = sent_for(fake_wechat, task_id)
    assert message["touser"] == "openid-alice" and message["template_id"] == TEMPLATE
    assert message["page"] == f"pages/index/index?task_id={task_id}"
    assert message["miniprogram_state"] == "formal"
    data = {key: item["value"] for key, item in message["data"].items()}
    # A thing is at most 20 characters, a phrase 5: cut to fit, never refused for length.
    assert data["thing1"] == "螺" * 19 + "…"
    assert data["phrase2"] == "已完成"
    assert datetime.strptime(data["time3"], "%Y年%m月%d日 %H:%M")
    # The user had three subscriptions; one message used one, no more were sent.
    await asyncio.sleep(2 * 2.0)  # two notifier polls
    assert len(sent_for(fake_wechat, task_id)) == 1
    assert fake_wechat.stats()["subscriptions"][0]["times"] == 2


@pytest.mark.asyncio
async def test_a_worker_killed_after_completing_leaves_the_notice_to_the_next_worker(
        processes, http, pool, direct, fake_wechat, wechat_settings):
    """The crash between completing and sending: the notice is in the outbox with the
    completed task, and the next worker sends it, once."""
    api = processes.start_api(**wechat_settings)
    headers = await logged_in(http, api.url, fake_wechat, "openid-bob")
    fake_wechat.subscribe("openid-bob", TEMPLATE, times=5)
    # The first worker never gets an access token, so it cannot send before the kill.
    fake_wechat.hold("stable_token", 120)
    first = processes.start_worker(**wechat_settings)
    task_id = await create(http, api.url, headers)
    await wait_for_status(pool, task_id, {"completed"}, 30)
    first.kill()

    assert notice_row(direct, task_id)["state"] == "pending"
    assert sent_for(fake_wechat, task_id) == []
    fake_wechat.hold("stable_token", 0)
    processes.start_worker(**wechat_settings)
    await wait_notice(direct, task_id, {"sent"})
    await asyncio.sleep(2 * 2.0)
    assert len(sent_for(fake_wechat, task_id)) == 1


@pytest.mark.asyncio
async def test_a_lost_answer_is_never_resent_and_a_failed_task_notices_too(
        processes, http, pool, direct, fake_wechat, wechat_settings):
    """WeChat carried the send out but its answer was lost: the notice is settled as
    unknown and not sent again (a second message is worse than none). A failed task
    sends its notice like a completed one."""
    api = processes.start_api(**wechat_settings)
    processes.start_worker(**wechat_settings, simulated_fail_always=True, max_attempts=1)
    headers = await logged_in(http, api.url, fake_wechat, "openid-carol")
    fake_wechat.subscribe("openid-carol", TEMPLATE, times=5)
    fake_wechat.drop_next("subscribe_send")
    lost = await create(http, api.url, headers)
    row = await wait_notice(direct, lost, {"sent", "unknown", "failed"})
    assert row["state"] == "unknown", row
    assert (await wait_for_status(pool, lost, {"failed"}, 5))["status"] == "failed"

    delivered = await create(http, api.url, headers, theme="第二个")
    await wait_notice(direct, delivered, {"sent"})
    await asyncio.sleep(2 * 2.0)
    assert len(sent_for(fake_wechat, lost)) == 1  # carried out once, never again
    (message,) = sent_for(fake_wechat, delivered)
    assert message["data"]["phrase2"]["value"] == "生成失败"


@pytest.mark.asyncio
async def test_no_subscription_is_skipped_and_a_busy_wechat_is_retried(
        processes, http, pool, direct, fake_wechat, wechat_settings):
    api = processes.start_api(**wechat_settings)
    processes.start_worker(**wechat_settings)
    headers = await logged_in(http, api.url, fake_wechat, "openid-dave")
    unsubscribed = await create(http, api.url, headers)
    row = await wait_notice(direct, unsubscribed, {"sent", "skipped", "failed", "unknown"})
    assert row["state"] == "skipped" and "43101" in row["last_error"], row

    fake_wechat.subscribe("openid-dave", TEMPLATE)
    fake_wechat.fail_next("subscribe_send", -1)
    busy = await create(http, api.url, headers, theme="再来一次")
    row = await wait_notice(direct, busy, {"sent", "failed", "unknown"}, timeout_s=40)
    assert row == {"state": "sent", "attempts": 2, "last_error": row["last_error"]}, row
    assert len(sent_for(fake_wechat, busy)) == 1


@pytest.mark.asyncio
async def test_template_id_is_refused_for_anonymous_callers_and_bad_ids(
        processes, http, direct, fake_wechat, wechat_settings):
    api = processes.start_api(**{**wechat_settings, "auth_required": False})
    headers = await logged_in(http, api.url, fake_wechat, "openid-erin")
    for body_headers, template_id in (({}, TEMPLATE), (headers, "no spaces allowed"),
                                      (headers, 42), (headers, "x" * 129)):
        async with http.post(f"{api.url}/api/generate-video",
                             json={**WRITE_UP_REQUEST, "template_id": template_id},
                             headers=body_headers) as resp:
            body = await resp.json()
            assert resp.status == 400, body
            assert body["error"]["field"] == "template_id"
    assert direct.execute("SELECT count(*) FROM video_generation_tasks").fetchone()[0] == 0


def test_message_values_fit_each_key_type() -> None:
    notice = Notice(task_id=uuid.UUID(int=1), claim_token=uuid.uuid4(), openid="o",
                    template_id=TEMPLATE, attempts=1, status="failed",
                    product_name="螺" * 30, theme="t", error_code="content_rejected",
                    finished_at=datetime(2026, 12, 1, 16, 5, tzinfo=UTC))
    data = notices.message_data(notice, {"thing1": "product_name", "phrase2": "status",
                                         "time3": "finished_at", "thing4": "note",
                                         "character_string5": "task_id"})
    assert data == {"thing1": "螺" * 19 + "…", "phrase2": "生成失败",
                    # Shown in China's time.
                    "time3": "2026年12月02日 00:05", "thing4": "内容未通过审核，请修改后重试",
                    "character_string5": uuid.UUID(int=1).hex}
