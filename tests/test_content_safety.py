"""Content safety: product name and theme pass WeChat's msg_sec_check before a task is
stored; risky text is a 422 the mini-program can show, and nothing is stored.

The API runs in this process on the test's database; WeChat is the local fake server
(tests/fakes/wechat.py) over HTTP, with its risky words, expiring tokens and failures.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import psycopg
import pytest

from service.settings import Settings
from tests.fakes.wechat import DEFAULT_APPID, DEFAULT_SECRET, FakeWeChat, running_fake_wechat
from tests.helpers import WRITE_UP_REQUEST
from tests.test_identity import bearer, login, serve

TOKEN_SECRET = "a-test-token-secret-of-at-least-32-bytes"
# What production must set, or it refuses to start (tests/test_hostile_input.py).
PRODUCTION_BASICS = {
    "database_url": "postgresql://app:prod-secret@pgbouncer:6432/videotasks",
    "database_direct_url": "postgresql://app:prod-secret@postgres:5432/videotasks",
    "database_owner_url": "postgresql://videotasks_owner:prod-owner@postgres:5432/videotasks",
    "pgbouncer_admin_url": "postgresql://pgbouncer_admin:prod-admin@pgbouncer:6432/pgbouncer",
    "auth_token_secret": TOKEN_SECRET, "public_base_url": "https://video.example.com",
}


@pytest.fixture
async def fake_wechat() -> AsyncIterator[FakeWeChat]:
    async with running_fake_wechat() as fake:
        fake.add_risky_word("违禁词")
        fake.add_review_word("擦边")
        yield fake


def wechat_settings(settings: Settings, fake: FakeWeChat, **changes: object) -> Settings:
    return settings.replace(auth_required=True, auth_token_secret=TOKEN_SECRET,
                            wechat_api_base=fake.base_url, wechat_appid=DEFAULT_APPID,
                            wechat_secret=DEFAULT_SECRET, **changes)


@pytest.fixture
async def checked_api(settings: Settings, fake_wechat: FakeWeChat) -> AsyncIterator[str]:
    url, runner = await serve(wechat_settings(settings, fake_wechat))
    yield url
    await runner.cleanup()


async def create(http: aiohttp.ClientSession, url: str, token: str | None,
                 **changes: object) -> tuple[int, dict]:
    headers = bearer(token) if token else {}
    async with http.post(f"{url}/api/generate-video", json={**WRITE_UP_REQUEST, **changes},
                         headers=headers) as resp:
        return resp.status, await resp.json()


def stored(direct: psycopg.Connection) -> int:
    return direct.execute("SELECT count(*) FROM video_generation_tasks").fetchone()[0]


@pytest.mark.asyncio
async def test_risky_text_is_refused_with_a_message_to_show_and_nothing_stored(
        http, checked_api, fake_wechat, direct):
    token = await login(http, checked_api, fake_wechat, "openid-alice")
    for field in ("product_name", "theme"):
        status, body = await create(http, checked_api, token, **{field: "好用的违禁词螺栓"})
        assert status == 422, body
        assert body["error"]["code"] == "content_rejected"
        assert "内容未通过安全检测" in body["error"]["message"]
    assert stored(direct) == 0
    assert direct.execute("SELECT count(*) FROM video_task_requesters").fetchone()[0] == 0

    status, body = await create(http, checked_api, token)
    assert status == 202, body
    # Each create was checked once, both fields together, as WeChat's v2 wants it.
    checks = fake_wechat.stats()["checks"]
    assert len(checks) == 3
    assert all(c["version"] == 2 and c["scene"] == 1 and c["openid"] == "openid-alice"
               for c in checks)
    assert checks[-1]["content"] == f"{WRITE_UP_REQUEST['product_name']}\n" \
                                    f"{WRITE_UP_REQUEST['theme']}"
    # One access token for all of them, held by the process.
    assert fake_wechat.stats()["token_fetches"] == 1


@pytest.mark.asyncio
async def test_text_wechat_is_unsure_about_is_accepted(http, checked_api, fake_wechat):
    token = await login(http, checked_api, fake_wechat, "openid-bob")
    status, body = await create(http, checked_api, token, theme="有点擦边的主题")
    assert status == 202, body


@pytest.mark.asyncio
async def test_an_expired_access_token_is_fetched_again_once(http, checked_api, fake_wechat):
    token = await login(http, checked_api, fake_wechat, "openid-carol")
    assert (await create(http, checked_api, token))[0] == 202
    fake_wechat.expire_token()
    assert (await create(http, checked_api, token, theme="第二次"))[0] == 202
    assert fake_wechat.stats()["token_fetches"] == 2


@pytest.mark.asyncio
@pytest.mark.parametrize("fail_open, expected", [(False, 503), (True, 202)])
async def test_without_a_verdict_the_setting_decides(http, settings, fake_wechat, direct,
                                                     fail_open, expected):
    url, runner = await serve(wechat_settings(settings, fake_wechat,
                                              content_check_fail_open=fail_open))
    try:
        token = await login(http, url, fake_wechat, "openid-dave")
        fake_wechat.fail_next("msg_sec_check", -1, times=10)  # busy, every retry too
        async with http.post(f"{url}/api/generate-video", json=WRITE_UP_REQUEST,
                             headers=bearer(token)) as resp:
            body = await resp.json()
            assert resp.status == expected, body
            if expected == 503:
                assert body["error"]["code"] == "content_check_unavailable"
                assert int(resp.headers["Retry-After"]) >= 1
    finally:
        await runner.cleanup()
    assert stored(direct) == (1 if fail_open else 0)


def test_production_refuses_unchecked_text_by_default():
    production = Settings(environment="production", wechat_appid=DEFAULT_APPID,
                          wechat_secret=DEFAULT_SECRET, **PRODUCTION_BASICS)
    assert production.content_check and production.auth_required
    assert production.content_check_fail_open is False
    local = Settings()
    assert not local.content_check and not local.auth_required
    assert local.content_check_fail_open is True
