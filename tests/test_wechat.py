"""Login tokens (service.auth) and the WeChat client (service.wechat) against the fake WeChat
(tests.fakes.wechat): real HTTP on 127.0.0.1, no database."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest

from service import auth, errors, wechat
from service.wechat import WeChat, WeChatError
from tests.fakes.wechat import FakeWeChat, FakeWeChatThread, running_fake_wechat

APPID = "wx-test-appid"
APP_SECRET = "test-app-secret-0123456789"
KEY = "k" * 32
OLD_KEY = "o" * 32
TEMPLATE = "tmpl-video-ready"


class Clock:
    """The token cache's clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def fake() -> AsyncIterator[FakeWeChat]:
    async with running_fake_wechat(appid=APPID, secret=APP_SECRET) as fake:
        yield fake


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def client(fake: FakeWeChat, clock: Clock) -> AsyncIterator[WeChat]:
    client = WeChat(fake.base_url, APPID, APP_SECRET, timeout_s=2.0, backoff_base_s=0.01,
                    clock=clock)
    yield client
    await client.close()


async def login(fake: FakeWeChat, client: WeChat, openid: str = "openid-1") -> str:
    fake.register_code(f"code-{openid}", openid)
    return (await client.code2session(f"code-{openid}")).openid


# -- login tokens ---------------------------------------------------------------------

def test_token_round_trip_gives_the_openid() -> None:
    token = auth.issue("openid-1", secret=KEY, ttl_s=3600, now=1_000_000)
    assert auth.verify(token, secret=KEY, now=1_000_000 + 3599) == "openid-1"
    claims = auth.claims(token, secret=KEY, now=1_000_000)
    assert (claims.issued_at, claims.expires_at) == (1_000_000, 1_003_600)
    assert token.startswith("v1.") and len(token) < 200


def test_tampered_token_is_refused_without_echoing_it() -> None:
    token = auth.issue("openid-1", secret=KEY, ttl_s=3600)
    version, payload, signature = token.split(".")
    forged_payload = auth._b64encode(b'{"o":"openid-2","i":1,"e":99999999999}')
    cases = {
        "bad_signature": [f"{version}.{forged_payload}.{signature}",
                          f"{version}.{payload}.{auth._b64encode(b'x' * 32)}"],
        "malformed": ["", "garbage", f"v2.{payload}.{signature}", f"{token}.x",
                      f"{version}.{payload}.{signature}=", f"{version}.{payload}.{signature}!",
                      "v1." + "A" * 2000 + ".x"],
    }
    for reason, tokens in cases.items():
        for bad in tokens:
            with pytest.raises(auth.InvalidToken) as caught:
                auth.verify(bad, secret=KEY)
            assert caught.value.reason == reason, bad
            assert isinstance(caught.value, errors.ServiceError)
            assert signature not in str(caught.value) and payload not in str(caught.value)


def test_token_with_another_spelling_of_its_signature_is_malformed() -> None:
    token = auth.issue("openid-1", secret=KEY, ttl_s=3600)
    # 32 bytes = 43 base64 characters, the last carrying 2 unused bits.
    last = token[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = token[:-1] + alphabet[alphabet.index(last) ^ 1]
    with pytest.raises(auth.InvalidToken) as caught:
        auth.verify(twin, secret=KEY)
    assert caught.value.reason == "malformed"


def test_token_expires() -> None:
    token = auth.issue("openid-1", secret=KEY, ttl_s=60, now=1_000_000)
    with pytest.raises(auth.InvalidToken) as caught:
        auth.verify(token, secret=KEY, now=1_000_060)
    assert caught.value.reason == "expired"
    assert "expired" in str(caught.value)


def test_rotation_new_key_signs_old_key_still_verifies() -> None:
    old = auth.issue("openid-1", secret=OLD_KEY, ttl_s=3600)
    ring = auth.key_ring(KEY, f"{OLD_KEY}, ")
    assert ring == [KEY, OLD_KEY]
    assert auth.verify(old, secret=ring) == "openid-1"
    new = auth.issue("openid-1", secret=ring, ttl_s=3600)
    assert auth.verify(new, secret=KEY) == "openid-1"  # signed with the first
    with pytest.raises(auth.InvalidToken) as caught:
        auth.verify(old, secret=[KEY])  # the old key dropped: its tokens go
    assert caught.value.reason == "bad_signature"


def test_short_or_missing_secret_is_a_config_error() -> None:
    bad: list[auth.Secrets] = ["", "short", []]
    for secret in bad:
        with pytest.raises(errors.ConfigError):
            auth.issue("openid-1", secret=secret, ttl_s=60)
    token = auth.issue("openid-1", secret=KEY, ttl_s=60)
    with pytest.raises(errors.ConfigError):
        auth.verify(token, secret=[KEY, "short"])


# -- login ----------------------------------------------------------------------------

async def test_login_gives_openid_and_unionid_and_never_the_session_key(
        fake: FakeWeChat, client: WeChat, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake.register_code("code-1", "openid-1", unionid="union-1")
    fake.register_code("code-2", "openid-2")
    session = await client.code2session("code-1")
    assert session == wechat.Session(openid="openid-1", unionid="union-1")
    assert (await client.code2session("code-2")).unionid is None
    assert not hasattr(session, "session_key") and "session_key" not in repr(session)
    assert fake.logins == 2
    assert "session_key" not in caplog.text and APP_SECRET not in caplog.text


async def test_a_code_works_once_and_unknown_codes_are_invalid(
        fake: FakeWeChat, client: WeChat) -> None:
    fake.register_code("code-1", "openid-1")
    await client.code2session("code-1")
    for code in ("code-1", "never-issued", "", "has space", "x" * 500):
        with pytest.raises(WeChatError) as caught:
            await client.code2session(code)
        assert caught.value.kind == "invalid_code" and caught.value.status == 400, code
    # Only the two well-formed codes reached WeChat.
    assert fake.requests["jscode2session"] == 3


@pytest.mark.parametrize(("errcode", "kind", "status"), [
    (45011, "rate_limited", 429),
    (-1, "busy", 503),
    (40226, "blocked", 403),
    (40013, "misconfigured", 503),
    (40125, "misconfigured", 503),
    (99999, "upstream_error", 502),
])
async def test_login_errcodes_map_to_kinds(fake: FakeWeChat, client: WeChat, errcode: int,
                                           kind: str, status: int) -> None:
    fake.register_code("code-1", "openid-1")
    fake.fail_next("jscode2session", errcode, times=wechat.MAX_TRIES)
    with pytest.raises(WeChatError) as caught:
        await client.code2session("code-1")
    error = caught.value
    assert (error.kind, error.errcode, error.status) == (kind, errcode, status)
    assert APP_SECRET not in error.message and "code-1" not in error.message
    # Only "system busy" is retried.
    assert fake.requests["jscode2session"] == (wechat.MAX_TRIES if errcode == -1 else 1)


async def test_login_retries_once_busy(fake: FakeWeChat, client: WeChat) -> None:
    fake.register_code("code-1", "openid-1")
    fake.fail_next("jscode2session", -1)
    assert (await client.code2session("code-1")).openid == "openid-1"
    assert client.request_retries == 1


async def test_wrong_secret_is_an_operator_error_logged_without_the_secret(
        fake: FakeWeChat, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-secret-abcdef"
    client = WeChat(fake.base_url, APPID, wrong, backoff_base_s=0.01)
    try:
        fake.register_code("code-1", "openid-1")
        with pytest.raises(WeChatError) as login:
            await client.code2session("code-1")
        with pytest.raises(WeChatError) as token:
            await client.access_token()
    finally:
        await client.close()
    assert login.value.kind == token.value.kind == "misconfigured"
    errors_logged = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors_logged) == 2 and "WECHAT_SECRET" in errors_logged[0].getMessage()
    assert wrong not in caplog.text and wrong not in str(login.value)


async def test_lost_login_answer_is_not_retried_by_us(fake: FakeWeChat,
                                                     client: WeChat) -> None:
    fake.register_code("code-1", "openid-1")
    fake.drop_next("jscode2session", times=2)
    with pytest.raises(WeChatError) as caught:
        await client.code2session("code-1")
    assert caught.value.kind == "unreachable"
    # aiohttp resends a GET once after a disconnect; we add nothing, as the code is spent.
    assert fake.requests["jscode2session"] == 2
    fake.register_code("code-2", "openid-2")
    fake.drop_next("jscode2session")
    with pytest.raises(WeChatError) as caught:
        await client.code2session("code-2")
    assert caught.value.kind == "invalid_code"  # 40163: the client calls wx.login again


# -- the access token -----------------------------------------------------------------

async def test_access_token_is_fetched_once_for_many_calls(
        fake: FakeWeChat, client: WeChat) -> None:
    openid = await login(fake, client)
    verdicts = await asyncio.gather(*(client.msg_sec_check(openid=openid, content=f"杯子{i}")
                                      for i in range(20)))
    assert all(v.passed for v in verdicts)
    assert fake.token_fetches == 1 and client.token_fetches == 1
    assert fake.requests["msg_sec_check"] == 20


async def test_access_token_is_refreshed_ahead_of_expiry_by_one_shared_fetch(
        fake: FakeWeChat, client: WeChat, clock: Clock) -> None:
    openid = await login(fake, client)
    await client.msg_sec_check(openid=openid, content="杯子")
    # 7200 s tokens are fetched again 300 s before they expire.
    clock.now += 7200 - wechat.REFRESH_EARLY_S - 1
    await client.msg_sec_check(openid=openid, content="杯子")
    assert fake.token_fetches == 1
    clock.now += 2
    await asyncio.gather(*(client.msg_sec_check(openid=openid, content="杯子")
                           for _ in range(10)))
    assert fake.token_fetches == 2


async def test_failed_early_refresh_keeps_using_the_valid_token(
        fake: FakeWeChat, client: WeChat, clock: Clock) -> None:
    openid = await login(fake, client)
    await client.msg_sec_check(openid=openid, content="杯子")
    clock.now += 7200 - wechat.REFRESH_EARLY_S + 1
    fake.fail_next("stable_token", -1, times=wechat.MAX_TRIES)
    assert (await client.msg_sec_check(openid=openid, content="杯子")).passed
    # Not again on the next call: the retry waits REFRESH_RETRY_S.
    await client.msg_sec_check(openid=openid, content="杯子")
    assert fake.requests["stable_token"] == 1 + wechat.MAX_TRIES


async def test_expired_token_refreshes_once_for_concurrent_callers(
        fake: FakeWeChat, client: WeChat) -> None:
    openid = await login(fake, client)
    first = await client.access_token()
    fake.expire_token()  # WeChat says 42001; our cache still thinks it is fresh
    verdicts = await asyncio.gather(*(client.msg_sec_check(openid=openid, content="杯子")
                                      for _ in range(10)))
    assert all(v.passed for v in verdicts)
    assert fake.token_fetches == 2  # exactly one extra
    assert await client.access_token() != first
    assert client.token_rejections == 10


async def test_token_rejected_twice_gives_up(fake: FakeWeChat, client: WeChat) -> None:
    openid = await login(fake, client)
    fake.fail_next("msg_sec_check", 40001, times=2)
    with pytest.raises(WeChatError) as caught:
        await client.msg_sec_check(openid=openid, content="杯子")
    assert caught.value.errcode == 40001 and fake.requests["msg_sec_check"] == 2


# -- moderation -----------------------------------------------------------------------

async def test_msg_sec_check_pass_and_risky(fake: FakeWeChat, client: WeChat) -> None:
    openid = await login(fake, client)
    fake.add_risky_word("违禁词", label=20002)
    fake.add_review_word("可疑")
    ok = await client.msg_sec_check(openid=openid, content="保温杯 冬日暖心", scene=2)
    assert (ok.suggest, ok.label, ok.passed) == ("pass", 100, True) and ok.trace_id
    risky = await client.msg_sec_check(openid=openid, content="保温杯 违禁词")
    assert (risky.suggest, risky.label, risky.passed) == ("risky", 20002, False)
    assert (await client.msg_sec_check(openid=openid, content="可疑的杯子")).suggest == "review"
    assert fake.checks[0] == {"version": 2, "openid": openid, "scene": 2,
                              "content": "保温杯 冬日暖心"}


async def test_check_texts_joins_fields_in_one_call(fake: FakeWeChat, client: WeChat) -> None:
    openid = await login(fake, client)
    fake.add_risky_word("违禁词")
    verdict = await client.check_texts(openid=openid, texts=["保温杯", "  ", "违禁词主题"])
    assert verdict.suggest == "risky"
    assert [c["content"] for c in fake.checks] == ["保温杯\n违禁词主题"]
    long = await client.check_texts(openid=openid, texts=["杯" * 2000, "暖" * 2000])
    assert long.passed and len(fake.checks) == 3
    assert (await client.check_texts(openid=openid, texts=[])).passed


async def test_msg_sec_check_errors(fake: FakeWeChat, client: WeChat) -> None:
    openid = await login(fake, client)
    with pytest.raises(WeChatError) as caught:
        await client.msg_sec_check(openid="never-visited", content="杯子")
    assert (caught.value.kind, caught.value.errcode) == ("bad_request", 61010)
    fake.fail_next("msg_sec_check", 45009)
    with pytest.raises(WeChatError) as caught:
        await client.msg_sec_check(openid=openid, content="杯子")
    assert caught.value.kind == "rate_limited"
    with pytest.raises(ValueError):
        await client.msg_sec_check(openid=openid, content="x" * 2501)


async def test_lost_moderation_answer_is_retried(fake: FakeWeChat, client: WeChat) -> None:
    openid = await login(fake, client)
    fake.drop_next("msg_sec_check")
    fake.fail_next("stable_token", -1)
    assert (await client.msg_sec_check(openid=openid, content="杯子")).passed
    assert fake.requests["msg_sec_check"] == 2 and fake.requests["stable_token"] == 2


# -- subscribe messages ---------------------------------------------------------------

async def test_subscribe_message_is_sent_with_the_right_body(
        fake: FakeWeChat, client: WeChat) -> None:
    fake.subscribe("openid-1", TEMPLATE)
    await client.send_subscribe_message(
        openid="openid-1", template_id=TEMPLATE, page="pages/task/index?id=t1",
        data={"thing1": "保温杯广告", "phrase2": "已完成"}, miniprogram_state="trial")
    assert fake.sent == [{
        "touser": "openid-1", "template_id": TEMPLATE, "page": "pages/task/index?id=t1",
        "data": {"thing1": {"value": "保温杯广告"}, "phrase2": {"value": "已完成"}},
        "miniprogram_state": "trial", "lang": "zh_CN"}]
    assert client.messages_sent == 1


async def test_subscribe_message_without_subscription_is_final(
        fake: FakeWeChat, client: WeChat) -> None:
    fake.subscribe("openid-1", TEMPLATE)
    async def send(value: str = "好了") -> None:
        await client.send_subscribe_message(openid="openid-1", template_id=TEMPLATE,
                                            page="pages/index", data={"thing1": value})

    await send()
    with pytest.raises(WeChatError) as caught:
        await send()  # the one-time subscription is used
    assert (caught.value.kind, caught.value.errcode) == ("not_subscribed", 43101)
    assert fake.requests["subscribe_send"] == 2
    with pytest.raises(WeChatError) as caught:
        await send("长" * 21)
    assert caught.value.kind == "bad_request"


async def test_lost_send_answer_is_not_resent(fake: FakeWeChat, client: WeChat) -> None:
    fake.subscribe("openid-1", TEMPLATE, times=2)
    fake.drop_next("subscribe_send")
    with pytest.raises(WeChatError) as caught:
        await client.send_subscribe_message(openid="openid-1", template_id=TEMPLATE,
                                            page="pages/index", data={"thing1": "好了"})
    assert caught.value.kind == "unreachable" and caught.value.outcome_unknown
    # Delivered although the answer was lost; sent once.
    assert len(fake.sent) == 1 and fake.requests["subscribe_send"] == 1


async def test_send_with_expired_token_is_retried_once(fake: FakeWeChat,
                                                       client: WeChat) -> None:
    fake.subscribe("openid-1", TEMPLATE)
    await client.access_token()
    fake.expire_token()
    await client.send_subscribe_message(openid="openid-1", template_id=TEMPLATE,
                                        page="pages/index", data={"thing1": "好了"})
    assert len(fake.sent) == 1 and fake.token_fetches == 2


# -- no server ------------------------------------------------------------------------

async def test_unreachable_server_fails_quickly() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nothing listens
    client = WeChat(f"http://127.0.0.1:{port}", APPID, APP_SECRET)
    started = time.monotonic()
    try:
        for call in (client.code2session("code-1"), client.access_token(),
                     client.msg_sec_check(openid="o", content="杯子"),
                     client.send_subscribe_message(openid="o", template_id=TEMPLATE,
                                                   page="p", data={"thing1": "好"})):
            with pytest.raises(WeChatError) as caught:
                await call
            assert caught.value.kind == "unreachable" and caught.value.status == 503
            assert not caught.value.outcome_unknown  # never connected: nothing was sent
            assert caught.value.__cause__ is None and caught.value.__context__ is None
    finally:
        await client.close()
    assert time.monotonic() - started < 5.0


# -- the fake's control endpoints, from a background thread ---------------------------

def test_fake_in_a_thread_is_driven_by_its_control_endpoints() -> None:
    def call(fake: FakeWeChat, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        with urllib.request.urlopen(fake.base_url + path, data=data, timeout=5) as resp:
            return json.loads(resp.read())

    with FakeWeChatThread(appid=APPID, secret=APP_SECRET) as fake:
        call(fake, "/_fake/codes", {"code": "c1", "openid": "o1", "reusable": True})
        query = f"appid={APPID}&secret={APP_SECRET}&js_code=c1&grant_type=authorization_code"
        for _ in range(2):
            assert call(fake, f"/sns/jscode2session?{query}")["openid"] == "o1"
        call(fake, "/_fake/fail", {"api": "jscode2session", "errcode": 45011})
        assert call(fake, f"/sns/jscode2session?{query}")["errcode"] == 45011
        token = call(fake, "/cgi-bin/stable_token", {
            "grant_type": "client_credential", "appid": APPID, "secret": APP_SECRET,
            "force_refresh": False})["access_token"]
        call(fake, "/_fake/expire_token", {})
        check = {"version": 2, "openid": "o1", "scene": 1, "content": "x"}
        assert call(fake, f"/wxa/msg_sec_check?access_token={token}", check)["errcode"] \
            == 42001
        stats = call(fake, "/_fake/stats")
        assert stats["logins"] == 2 and stats["token_fetches"] == 1
        assert stats["requests"] == {"jscode2session": 3, "stable_token": 1,
                                     "msg_sec_check": 1}
