"""A fake of WeChat's mini-program server APIs, over real HTTP on 127.0.0.1.

It serves the real paths with WeChat's answer shapes (HTTP 200, `errcode`/`errmsg` in the
JSON; jscode2session answers as text/plain, as WeChat does):

- `GET  /sns/jscode2session?appid&secret&js_code&grant_type=authorization_code`: codes the
  test registered map to an openid (and unionid); a code works once (40163 after), an
  unknown one answers 40029; a wrong appid 40013, a wrong secret 40125. A login marks the
  openid as "visited" (msg_sec_check v2 wants a visit within 2 h: 61010 otherwise).
- `POST /cgi-bin/stable_token` {"grant_type": "client_credential", appid, secret,
  force_refresh}: normal mode hands back the current token with its remaining lifetime
  while it is valid, else a new one living `expires_in` seconds; force_refresh makes a new
  one and revokes the old. Counts `token_fetches`.
- `POST /wxa/msg_sec_check?access_token=…` {"version": 2, openid, scene, content}: a
  revoked or unknown token answers 40001, an expired one 42001. Content holding a risky
  word answers `result.suggest = "risky"` with its label (default 20001), a review word
  "review" (21000), else "pass" (100). version 1 answers errcode 87014 for risky content.
  As reported of WeChat's checker, words sent as \\uXXXX escapes are not matched.
- `POST /cgi-bin/message/subscribe/send?access_token=…`: records the message if the
  openid holds a subscription to the template (one-time: each message uses one), else
  43101; a value longer than `max_value_chars` or not a string answers 47003, an invalid
  miniprogram_state 47003 too.

Switches (attributes or methods; any thread may call them):
- `register_code(code, openid, unionid=None, reusable=False)`, `visit(openid)`.
- `add_risky_word(word, label=20001)`, `add_review_word(word)`.
- `subscribe(openid, template_id, times=1)`.
- `expire_token()`: the current token answers 42001 from now on; the next stable_token
  fetch gets a new one.
- `fail_next(api, errcode, times=1)`: the next `times` requests to api ("jscode2session",
  "stable_token", "msg_sec_check", "subscribe_send") answer that errcode (45011, -1,
  40226, ...). `drop_next(api, times=1)`: carried out, then the connection is closed
  without an answer (a lost answer). `hold(api, seconds)`: requests to api wait that long
  (0 releases them) before they are served or counted.
- `expires_in` (lifetime of new tokens, s), `max_value_chars`.

Counts: `token_fetches`, `requests` (Counter by api), `logins`, `checks` (list of the
check bodies), `sent` (list of recorded message bodies), `stats()`.

Control endpoints (no auth; for tests that run the API in a subprocess):
- `POST /_fake/codes` {"code", "openid", "unionid"?, "reusable"?}
- `POST /_fake/visit` {"openid"}
- `POST /_fake/risky` {"word", "label"?}; `POST /_fake/review` {"word"}
- `POST /_fake/subscribe` {"openid", "template_id", "times"?}
- `POST /_fake/expire_token`
- `POST /_fake/fail` {"api", "errcode", "times"?}; `POST /_fake/drop` {"api", "times"?}
- `POST /_fake/hold` {"api", "seconds"}
- `POST /_fake/config` {"expires_in": 7200, "max_value_chars": 20}
- `GET  /_fake/stats` -> counts, checks and sent messages; `POST /_fake/reset`.

Use:

    # async tests (pytest-asyncio):
    async with running_fake_wechat(appid="wx-test", secret="test-secret") as fake:
        fake.register_code("code-1", "openid-1")
        client = WeChat(fake.base_url, "wx-test", "test-secret")

    # sync fixtures (own loop in a background thread; e.g. API subprocesses):
    @pytest.fixture(scope="session")
    def fake_wechat() -> Iterator[FakeWeChat]:
        with FakeWeChatThread(appid="wx-test", secret="test-secret") as fake:
            yield fake        # fake.base_url; switches as above

    # a developer (binds 127.0.0.1 only):
    python -m tests.fakes.wechat --port 8090
    WECHAT_API_BASE=http://127.0.0.1:8090 WECHAT_APPID=wx-fake WECHAT_SECRET=fake-secret ...
    curl -d '{"code": "c1", "openid": "o1", "reusable": true}' localhost:8090/_fake/codes
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes.threaded import ServedInThread, serve_until_interrupted

DEFAULT_APPID = "wx-fake"
DEFAULT_SECRET = "fake-secret"
APIS = ("jscode2session", "stable_token", "msg_sec_check", "subscribe_send")
CONFIG_KEYS = frozenset({"expires_in", "max_value_chars"})
LABEL_NORMAL, LABEL_POLITICS, LABEL_OTHER = 100, 20001, 21000
MAX_CONTENT_CHARS = 2500

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class _Code:
    openid: str
    unionid: str | None
    reusable: bool
    used: bool = False


def _answer(errcode: int = 0, errmsg: str = "ok", **fields: Any) -> web.Response:
    rid = secrets.token_hex(4)
    body = {"errcode": errcode, "errmsg": errmsg if errcode == 0 else f"{errmsg} rid: {rid}",
            **fields}
    return web.json_response(body)


class FakeWeChat:
    def __init__(self, *, appid: str = DEFAULT_APPID, secret: str = DEFAULT_SECRET,
                 host: str = "127.0.0.1", port: int = 0, expires_in: int = 7200,
                 max_value_chars: int = 20) -> None:
        self.appid, self.secret, self.host, self.port = appid, secret, host, port
        self.expires_in, self.max_value_chars = expires_in, max_value_chars
        self._runner: web.AppRunner | None = None
        # Switches are set from other threads (FakeWeChatThread); one lock for all state.
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget codes, words, tokens, subscriptions, switches and counts."""
        with self._lock:
            self.codes: dict[str, _Code] = {}
            self.visited: set[str] = set()
            self.risky_words: dict[str, int] = {}
            self.review_words: set[str] = set()
            self.subscriptions: Counter[tuple[str, str]] = Counter()
            # token -> monotonic expiry; revoked tokens are removed.
            self.tokens: dict[str, float] = {}
            self.current_token: str | None = None
            self.failures: dict[str, list[int]] = {api: [] for api in APIS}
            self.drops: Counter[str] = Counter()
            # api -> monotonic time until which its requests wait before being served.
            self.holds: dict[str, float] = {}
            self.token_fetches = 0
            self.logins = 0
            self.requests: Counter[str] = Counter()
            self.checks: list[dict[str, Any]] = []
            self.sent: list[dict[str, Any]] = []

    # -- switches ------------------------------------------------------------------------

    def register_code(self, code: str, openid: str, unionid: str | None = None, *,
                      reusable: bool = False) -> None:
        with self._lock:
            self.codes[code] = _Code(openid, unionid, reusable)

    def visit(self, openid: str) -> None:
        with self._lock:
            self.visited.add(openid)

    def add_risky_word(self, word: str, label: int = LABEL_POLITICS) -> None:
        with self._lock:
            self.risky_words[word] = label

    def add_review_word(self, word: str) -> None:
        with self._lock:
            self.review_words.add(word)

    def subscribe(self, openid: str, template_id: str, times: int = 1) -> None:
        with self._lock:
            self.subscriptions[(openid, template_id)] += times

    def expire_token(self) -> None:
        """The current token answers 42001 from now on (it stays known, as expired)."""
        with self._lock:
            if self.current_token is not None:
                self.tokens[self.current_token] = time.monotonic() - 1

    def fail_next(self, api: str, errcode: int, times: int = 1) -> None:
        self._check_api(api)
        with self._lock:
            self.failures[api].extend([errcode] * times)

    def drop_next(self, api: str, times: int = 1) -> None:
        self._check_api(api)
        with self._lock:
            self.drops[api] += times

    def hold(self, api: str, seconds: float) -> None:
        """Requests to api wait up to `seconds` before being served (0: serve now); a
        client cut off meanwhile was never served."""
        self._check_api(api)
        with self._lock:
            self.holds[api] = time.monotonic() + seconds

    def configure(self, **switches: Any) -> None:
        unknown = set(switches) - CONFIG_KEYS
        if unknown:
            raise ValueError(f"unknown switches: {', '.join(sorted(unknown))}")
        with self._lock:
            for name, value in switches.items():
                setattr(self, name, int(value))

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"token_fetches": self.token_fetches, "logins": self.logins,
                    "requests": dict(self.requests), "checks": list(self.checks),
                    "sent": list(self.sent),
                    "subscriptions": [{"openid": o, "template_id": t, "times": n}
                                      for (o, t), n in self.subscriptions.items()]}

    @staticmethod
    def _check_api(api: str) -> None:
        if api not in APIS:
            raise ValueError(f"api must be one of {', '.join(APIS)}")

    # -- serving -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Serve on self.port; port 0 picks a free one, kept for a later start()."""
        if self._runner is not None:
            return
        runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=0.2)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        await site.start()
        self.port = runner.addresses[0][1]
        self._runner = runner

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/sns/jscode2session", self._api("jscode2session",
                                                            self._jscode2session))
        app.router.add_post("/cgi-bin/stable_token", self._api("stable_token",
                                                              self._stable_token))
        app.router.add_post("/wxa/msg_sec_check", self._api("msg_sec_check",
                                                           self._msg_sec_check))
        app.router.add_post("/cgi-bin/message/subscribe/send",
                            self._api("subscribe_send", self._subscribe_send))
        for name, handler in {
            "codes": self._ctl_codes, "visit": self._ctl_visit, "risky": self._ctl_risky,
            "review": self._ctl_review, "subscribe": self._ctl_subscribe,
            "expire_token": self._ctl_expire_token, "fail": self._ctl_fail,
            "drop": self._ctl_drop, "hold": self._ctl_hold, "config": self._ctl_config,
            "reset": self._ctl_reset,
        }.items():
            app.router.add_post(f"/_fake/{name}", self._control(handler))
        app.router.add_get("/_fake/stats", self._ctl_stats)
        return app

    def _api(self, api: str, handler: Callable[[web.Request, bytes], web.Response]) -> Handler:
        """Counting, the fail_next / drop_next switches, then the API itself."""
        async def serve(request: web.Request) -> web.StreamResponse:
            raw = await request.read()
            while True:  # the hold may be moved or released by another thread
                left = self.holds.get(api, 0.0) - time.monotonic()
                if left <= 0:
                    break
                await asyncio.sleep(min(left, 0.02))
            with self._lock:
                self.requests[api] += 1
                failure = self.failures[api].pop(0) if self.failures[api] else None
                drop = self.drops[api] > 0
                if drop:
                    self.drops[api] -= 1
            if failure is not None:
                return _answer(failure, "injected failure" if failure != -1 else
                               "system error")
            answer = handler(request, raw)
            if drop:
                # Carried out, but the answer never comes: the client sees a disconnect.
                if request.transport is not None:
                    request.transport.abort()
                raise asyncio.CancelledError
            return answer
        return serve

    # -- the WeChat APIs (run under no lock: each takes it) ------------------------------

    def _jscode2session(self, request: web.Request, raw: bytes) -> web.Response:
        q = request.query
        if q.get("grant_type") != "authorization_code":
            return _answer(40002, "invalid grant_type")
        if q.get("appid") != self.appid:
            return _answer(40013, "invalid appid")
        if q.get("secret") != self.secret:
            return _answer(40125, "invalid appsecret")
        code = q.get("js_code", "")
        if not code:
            return _answer(41008, "missing code")
        with self._lock:
            entry = self.codes.get(code)
            if entry is None:
                return _answer(40029, "invalid code")
            if entry.used and not entry.reusable:
                return _answer(40163, "code been used")
            entry.used = True
            self.visited.add(entry.openid)
            self.logins += 1
        body: dict[str, Any] = {"openid": entry.openid,
                                "session_key": secrets.token_urlsafe(18)}
        if entry.unionid:
            body["unionid"] = entry.unionid
        # WeChat sends this JSON as text/plain.
        return web.Response(text=json.dumps(body), content_type="text/plain")

    def _stable_token(self, request: web.Request, raw: bytes) -> web.Response:
        body = _json_object(raw)
        if body is None:
            return _answer(47001, "data format error")
        if body.get("grant_type") != "client_credential":
            return _answer(40002, "invalid grant_type")
        if body.get("appid") != self.appid:
            return _answer(40013, "invalid appid")
        if body.get("secret") != self.secret:
            return _answer(40125, "invalid appsecret")
        now = time.monotonic()
        with self._lock:
            self.token_fetches += 1
            token = self.current_token
            remaining = self.tokens.get(token, 0.0) - now if token else 0.0
            if body.get("force_refresh") is True or remaining < 1:
                if body.get("force_refresh") is True and token is not None:
                    self.tokens.pop(token, None)
                token = f"fake_{secrets.token_urlsafe(96)}"
                self.tokens[token] = now + self.expires_in
                self.current_token = token
                remaining = float(self.expires_in)
        return web.json_response({"access_token": token, "expires_in": int(remaining)})

    def _token_error(self, request: web.Request) -> web.Response | None:
        token = request.query.get("access_token", "")
        if not token:
            return _answer(41001, "access_token missing")
        with self._lock:
            expiry = self.tokens.get(token)
        if expiry is None:
            return _answer(40001, "invalid credential, access_token is invalid or not latest")
        if time.monotonic() >= expiry:
            return _answer(42001, "access_token expired")
        return None

    def _msg_sec_check(self, request: web.Request, raw: bytes) -> web.Response:
        refused = self._token_error(request)
        if refused is not None:
            return refused
        body = _json_object(raw)
        if body is None:
            return _answer(47001, "data format error")
        version, openid = body.get("version", 1), body.get("openid")
        content, scene = body.get("content"), body.get("scene")
        with self._lock:
            self.checks.append(body)
            visited = openid in self.visited
            risky, review = dict(self.risky_words), set(self.review_words)
        if not isinstance(content, str) or not content or len(content) > MAX_CONTENT_CHARS:
            return _answer(47001, "data format error")
        # Escaped text is matched as sent (see the module docstring).
        seen = content if b"\\u" not in raw else raw.decode("utf-8", "replace")
        label = next((lab for word, lab in risky.items() if word in seen), None)
        if version != 2:
            return _answer(87014, "risky content") if label is not None else _answer()
        if not isinstance(openid, str) or not openid:
            return _answer(40003, "invalid openid")
        if not visited:
            return _answer(61010, "user access record expired")
        if scene not in (1, 2, 3, 4):
            return _answer(47001, "data format error")
        if label is not None:
            suggest = "risky"
        elif any(word in seen for word in review):
            suggest, label = "review", LABEL_OTHER
        else:
            suggest, label = "pass", LABEL_NORMAL
        detail = [{"strategy": "content_model", "errcode": 0, "suggest": suggest,
                   "label": label, "prob": 90 if suggest != "pass" else 0}]
        return _answer(trace_id=f"{secrets.token_hex(8)}-{int(time.time())}",
                       result={"suggest": suggest, "label": label}, detail=detail)

    def _subscribe_send(self, request: web.Request, raw: bytes) -> web.Response:
        refused = self._token_error(request)
        if refused is not None:
            return refused
        body = _json_object(raw)
        if body is None:
            return _answer(47001, "data format error")
        openid, template_id = body.get("touser"), body.get("template_id")
        data = body.get("data")
        if not isinstance(openid, str) or not openid:
            return _answer(40003, "invalid openid")
        if not isinstance(template_id, str) or not template_id:
            return _answer(40037, "invalid template id")
        if body.get("miniprogram_state", "formal") not in ("developer", "trial", "formal"):
            return _answer(47003, "argument invalid! miniprogram_state invalid")
        if not isinstance(data, dict) or not data:
            return _answer(47003, "argument invalid! data invalid")
        for key, item in data.items():
            value = item.get("value") if isinstance(item, dict) else None
            if not isinstance(value, str) or not value or len(value) > self.max_value_chars:
                return _answer(47003, f"argument invalid! data.{key}.value invalid")
        with self._lock:
            if self.subscriptions[(openid, template_id)] < 1:
                return _answer(43101, "user refuse to accept the msg")
            self.subscriptions[(openid, template_id)] -= 1
            self.sent.append(body)
        return _answer(msgid=int(time.time() * 1000))

    # -- control endpoints -------------------------------------------------------------

    @staticmethod
    def _control(handler: Callable[[dict[str, Any]], Any]) -> Handler:
        async def serve(request: web.Request) -> web.StreamResponse:
            raw = await request.read()
            spec = _json_object(raw) if raw.strip() else {}
            if spec is None:
                return web.json_response({"error": "body must be a JSON object"}, status=400)
            try:
                handler(spec)
            except (KeyError, TypeError, ValueError) as exc:
                return web.json_response({"error": f"{type(exc).__name__}: {exc}"},
                                         status=400)
            return web.json_response({"ok": True})
        return serve

    def _ctl_codes(self, spec: dict[str, Any]) -> None:
        self.register_code(str(spec["code"]), str(spec["openid"]), spec.get("unionid"),
                           reusable=bool(spec.get("reusable", False)))

    def _ctl_visit(self, spec: dict[str, Any]) -> None:
        self.visit(str(spec["openid"]))

    def _ctl_risky(self, spec: dict[str, Any]) -> None:
        self.add_risky_word(str(spec["word"]), int(spec.get("label", LABEL_POLITICS)))

    def _ctl_review(self, spec: dict[str, Any]) -> None:
        self.add_review_word(str(spec["word"]))

    def _ctl_subscribe(self, spec: dict[str, Any]) -> None:
        self.subscribe(str(spec["openid"]), str(spec["template_id"]),
                       int(spec.get("times", 1)))

    def _ctl_expire_token(self, spec: dict[str, Any]) -> None:
        self.expire_token()

    def _ctl_fail(self, spec: dict[str, Any]) -> None:
        self.fail_next(str(spec["api"]), int(spec["errcode"]), int(spec.get("times", 1)))

    def _ctl_drop(self, spec: dict[str, Any]) -> None:
        self.drop_next(str(spec["api"]), int(spec.get("times", 1)))

    def _ctl_hold(self, spec: dict[str, Any]) -> None:
        self.hold(str(spec["api"]), float(spec.get("seconds", 0)))

    def _ctl_config(self, spec: dict[str, Any]) -> None:
        self.configure(**spec)

    def _ctl_reset(self, spec: dict[str, Any]) -> None:
        self.reset()

    async def _ctl_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


@contextlib.asynccontextmanager
async def running_fake_wechat(**kwargs: Any) -> AsyncIterator[FakeWeChat]:
    """A FakeWeChat served on this loop for the duration of the block (its kwargs)."""
    fake = FakeWeChat(**kwargs)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


class FakeWeChatThread(ServedInThread[FakeWeChat]):
    """A FakeWeChat served by its own event loop in a daemon thread, for sync code.

    `with FakeWeChatThread(**kwargs) as fake:` yields the FakeWeChat (started); its
    switches may be called from the calling thread.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(FakeWeChat(**kwargs), name="fake-wechat")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--appid", default=DEFAULT_APPID)
    parser.add_argument("--secret", default=DEFAULT_SECRET)
    parser.add_argument("--expires-in", type=int, default=7200)
    args = parser.parse_args()

    fake = FakeWeChat(appid=args.appid, secret=args.secret, port=args.port,
                      expires_in=args.expires_in)
    serve_until_interrupted(fake, lambda: (
        f"fake WeChat on {fake.base_url}; Ctrl-C stops it\n"
        f"  export WECHAT_API_BASE={fake.base_url} WECHAT_APPID={args.appid} "
        f"WECHAT_SECRET={args.secret}\n"
        f"  register a login code: curl -d '{{\"code\": \"c1\", \"openid\": \"o1\", "
        f"\"reusable\": true}}' {fake.base_url}/_fake/codes"))


if __name__ == "__main__":
    main()
