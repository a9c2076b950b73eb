"""The mini-program's users: WeChat login, tokens, ownership and "my videos".

The API runs in this process on the test's own database; WeChat is the local fake server
(tests/fakes/wechat.py) speaking the real paths over HTTP.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from ops.stack import free_port
from service import auth
from service.api.app import create_app
from service.settings import Settings
from tests.fakes.wechat import DEFAULT_APPID, DEFAULT_SECRET, FakeWeChat, running_fake_wechat
from tests.helpers import WRITE_UP_REQUEST

pytestmark = pytest.mark.asyncio

TOKEN_SECRET = "a-test-token-secret-of-at-least-32-bytes"


@pytest.fixture
async def fake_wechat() -> AsyncIterator[FakeWeChat]:
    async with running_fake_wechat() as fake:
        yield fake


async def serve(settings: Settings) -> tuple[str, web.AppRunner]:
    runner = web.AppRunner(create_app(settings.replace(metrics_port=free_port())))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return f"http://127.0.0.1:{port}", runner


@pytest.fixture
async def logged_in_api(settings: Settings, fake_wechat: FakeWeChat) -> AsyncIterator[str]:
    """An API that requires login, with WeChat at the fake."""
    url, runner = await serve(settings.replace(
        auth_required=True, auth_token_secret=TOKEN_SECRET, wechat_api_base=fake_wechat.base_url,
        wechat_appid=DEFAULT_APPID, wechat_secret=DEFAULT_SECRET))
    yield url
    await runner.cleanup()


async def login(http: aiohttp.ClientSession, url: str, fake: FakeWeChat, openid: str) -> str:
    code = f"code-{openid}"
    fake.register_code(code, openid)
    async with http.post(f"{url}/api/login", json={"code": code}) as resp:
        body = await resp.json()
        assert resp.status == 200, body
    assert body["expires_in"] > 0 and "session_key" not in body
    assert auth.verify(body["token"], secret=TOKEN_SECRET) == openid
    return body["token"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def create(http, url: str, token: str, **changes) -> str:
    async with http.post(f"{url}/api/generate-video", json={**WRITE_UP_REQUEST, **changes},
                         headers=bearer(token)) as resp:
        body = await resp.json()
        assert resp.status == 202, body
    return body["task_id"]


async def test_a_logged_in_user_creates_polls_and_lists_only_their_own_tasks(
        http, logged_in_api, fake_wechat, direct):
    alice = await login(http, logged_in_api, fake_wechat, "openid-alice")
    bob = await login(http, logged_in_api, fake_wechat, "openid-bob")
    mine = [await create(http, logged_in_api, alice, theme=f"主题 {i}") for i in range(5)]
    theirs = await create(http, logged_in_api, bob)

    owners = dict(direct.execute("SELECT task_id::text, owner_openid FROM "
                                 "video_generation_tasks").fetchall())
    assert owners == {**dict.fromkeys(mine, "openid-alice"), theirs: "openid-bob"}
    async with http.get(f"{logged_in_api}/api/progress/{mine[0]}",
                        headers=bearer(alice)) as resp:
        assert resp.status == 200
    # Someone else's task does not exist for you.
    async with http.get(f"{logged_in_api}/api/progress/{theirs}", headers=bearer(alice)) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "task_not_found"

    # My videos, newest first, two at a time: every task once, none of Bob's.
    seen, cursor = [], None
    while True:
        query = "limit=2" + (f"&cursor={cursor}" if cursor else "")
        async with http.get(f"{logged_in_api}/api/tasks?{query}",
                            headers=bearer(alice)) as resp:
            page = await resp.json()
            assert resp.status == 200, page
        seen += [task["task_id"] for task in page["tasks"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == list(reversed(mine))


async def test_without_a_valid_token_task_routes_answer_401_and_change_nothing(
        http, logged_in_api, fake_wechat, direct):
    other_secret = "another-secret-that-is-32-bytes-long!!"
    forged = auth.issue("openid-alice", secret=other_secret, ttl_s=600)
    expired = auth.issue("openid-alice", secret=TOKEN_SECRET, ttl_s=600, now=0)
    for headers in ({}, {"Authorization": "Basic abc"}, bearer(forged), bearer(expired),
                    bearer("not-a-token")):
        async with http.post(f"{logged_in_api}/api/generate-video", json=WRITE_UP_REQUEST,
                             headers=headers) as resp:
            body = await resp.json()
            assert resp.status == 401, (headers, body)
            assert resp.headers["WWW-Authenticate"] == "Bearer"
            assert body["error"]["field"] == "Authorization"
        async with http.get(f"{logged_in_api}/api/tasks", headers=headers) as resp:
            assert resp.status == 401
    assert direct.execute("SELECT count(*) FROM video_generation_tasks").fetchone()[0] == 0


@pytest.mark.parametrize(("errcode", "status", "code"), [
    (40029, 400, "invalid_code"),
    (45011, 429, "rate_limited"),
    (-1, 503, "login_unavailable"),
    (40226, 403, "user_blocked"),
])
async def test_wechat_login_errors_become_clear_answers(http, logged_in_api, fake_wechat,
                                                        errcode, status, code):
    fake_wechat.register_code("c-1", "openid-x")
    fake_wechat.fail_next("jscode2session", errcode, times=5)
    async with http.post(f"{logged_in_api}/api/login", json={"code": "c-1"}) as resp:
        body = await resp.json()
        assert resp.status == status, body
    assert body["error"]["code"] == code
    assert (status in (429, 503)) == ("Retry-After" in resp.headers)
    assert DEFAULT_SECRET not in str(body)


async def test_an_unknown_login_code_is_400_and_a_bad_body_names_the_field(
        http, logged_in_api):
    async with http.post(f"{logged_in_api}/api/login", json={"code": "never-issued"}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "invalid_code"
    for body in ({}, {"code": ""}, {"code": 7}, {"code": "x" * 500}, []):
        async with http.post(f"{logged_in_api}/api/login", json=body) as resp:
            error = (await resp.json())["error"]
            assert resp.status == 400 and error["field"] == "code", (body, error)


async def test_the_local_stack_keeps_the_anonymous_curl_and_has_no_login(http, api_url,
                                                                         direct):
    # AUTH_REQUIRED off (the default): the write-up's curl works, its task has no owner...
    async with http.post(f"{api_url}/api/generate-video", json=WRITE_UP_REQUEST) as resp:
        task_id = (await resp.json())["task_id"]
        assert resp.status == 202
    async with http.get(f"{api_url}/api/progress/{task_id}") as resp:
        assert resp.status == 200
    owner = direct.execute("SELECT owner_openid FROM video_generation_tasks").fetchone()[0]
    assert owner is None
    # ...a logged-in user cannot read it, and login says it is not configured.
    token = auth.issue("openid-alice", secret=Settings().auth_token_secret, ttl_s=600)
    async with http.get(f"{api_url}/api/progress/{task_id}", headers=bearer(token)) as resp:
        assert resp.status == 404
    async with http.post(f"{api_url}/api/login", json={"code": "c"}) as resp:
        assert resp.status == 503
        assert (await resp.json())["error"]["code"] == "login_unavailable"


async def test_behind_cloud_run_the_platform_openid_header_may_be_trusted(
        http, settings, direct):
    url, runner = await serve(settings.replace(auth_required=True,
                                               auth_trust_wx_openid_header=True))
    try:
        async with http.post(f"{url}/api/generate-video", json=WRITE_UP_REQUEST,
                             headers={"X-WX-OPENID": "openid-cloud"}) as resp:
            assert resp.status == 202
    finally:
        await runner.cleanup()
    owner = direct.execute("SELECT owner_openid FROM video_generation_tasks").fetchone()[0]
    assert owner == "openid-cloud"
