"""WeChat mini-program server APIs: login, the access token, text moderation, subscribe messages.

One `WeChat` per process (the API's and the worker's), made at startup and closed at
shutdown; its aiohttp session is made lazily inside the running loop.

- `code2session(code)`: a wx.login() code -> `Session(openid, unionid)`. WeChat also sends
  session_key; it is dropped right here (not returned, logged or kept): the app issues
  its own login token (service.auth), and nothing of ours decrypts wx.getUserInfo data.
- `access_token()`: the process's one holder of the access token, from
  `POST /cgi-bin/stable_token` in normal mode (force_refresh false). The stable token is
  the same for every caller of the appid, so each process may fetch its own without
  invalidating the others' (the old /cgi-bin/token would). Cached, refreshed ahead of
  expiry by one shared fetch, and fetched anew once when a call answers 40001/40014/42001.
- `msg_sec_check` / `check_texts`: text moderation (v2); the verdict, not an error, says
  risky. `send_subscribe_message`: one subscribe message.

Errors: every failure is a `WeChatError` with a `kind` (what the caller does), WeChat's
`errcode` when it gave one, and a message for logs without secrets. WeChat answers
HTTP 200 with an errcode in the JSON (sometimes as text/plain), so the body is parsed
whatever its content type.

Retries (bounded, jittered backoff): a request that never reached WeChat (connect failed)
is always retried. Token fetches and moderation are reads and are also retried on a lost
answer, on -1 "system busy" and on HTTP 5xx. A login code is single-use, so code2session
is not retried here after a lost answer (the code may be spent: the client calls wx.login
again); aiohttp itself resends a GET once when the server disconnects (RFC 9112), which
either succeeds or, for a spent code, answers 40163 -> "invalid_code". A subscribe
message is resent only when it provably was not carried out (no connection, or its access
token was rejected); after a lost answer it may have been delivered, and the caller's
outbox decides (see send_subscribe_message). aiohttp never resends a POST by itself.

Secrets: the AppSecret and the access token travel only in WeChat's own query strings and
bodies. aiohttp's exceptions quote the full URL, query included, so they are never logged,
chained or repeated: only their type names are. WeChat's errmsg is scrubbed and clipped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from service import errors

logger = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://api.weixin.qq.com"
CODE2SESSION_PATH = "/sns/jscode2session"
STABLE_TOKEN_PATH = "/cgi-bin/stable_token"
MSG_SEC_CHECK_PATH = "/wxa/msg_sec_check"
SUBSCRIBE_SEND_PATH = "/cgi-bin/message/subscribe/send"

# One request gives up after TIMEOUT_S, its connect phase after CONNECT_TIMEOUT_S; a call
# takes at most about MAX_TRIES x TIMEOUT_S plus backoff.
TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 3.0
# Tries of one call (the first included) where a retry is allowed at all.
MAX_TRIES = 3
BACKOFF_BASE_S = 0.2
BACKOFF_MAX_S = 2.0
# The token is fetched again this long before it expires, or after 90% of its lifetime if
# that is sooner (short lifetimes). Normal mode answers a still-valid token with its
# remaining lifetime, so an early fetch may bring the same token back; it is then used
# until it really expires, and the schedule comes round again at 90% of the remainder.
REFRESH_EARLY_S = 300.0
REFRESH_EARLY_FRACTION = 0.1
# After a failed early refresh, the still-valid token is used this long before the next try,
# so that an outage does not make every call wait for a failing fetch.
REFRESH_RETRY_S = 10.0
# msg_sec_check's limit on content, in characters.
MSG_SEC_CHECK_MAX_CHARS = 2500
# wx.login codes are 32 characters; a longer or odd one is refused without a call.
CODE_MAX_CHARS = 128
MESSAGE_MAX_CHARS = 200
SCENES = frozenset({1, 2, 3, 4})  # 1 资料 profile, 2 评论 comment, 3 论坛 forum, 4 社交日志 log
MINIPROGRAM_STATES = frozenset({"developer", "trial", "formal"})

Kind = Literal["invalid_code", "rate_limited", "busy", "blocked", "misconfigured",
               "not_subscribed", "bad_request", "upstream_error", "unreachable"]
Suggest = Literal["pass", "review", "risky"]

# The HTTP status our API answers its own client with, per kind.
KIND_STATUS: dict[Kind, int] = {
    "invalid_code": 400,  # the client calls wx.login again and retries
    "rate_limited": 429,
    "busy": 503,
    "blocked": 403,  # 40226: WeChat flags the user as high-risk
    "misconfigured": 503,  # our appid/secret/IP whitelist: an operator must act
    "not_subscribed": 409,  # worker-side only: the user gave no (more) subscription
    "bad_request": 500,  # we built a request WeChat refuses: our bug
    "upstream_error": 502,
    "unreachable": 503,
}

ERRCODE_KINDS: dict[int, Kind] = {
    -1: "busy",
    40029: "invalid_code",  # invalid or expired code
    40163: "invalid_code",  # code already used
    45009: "rate_limited",  # daily quota of the API
    45011: "rate_limited",  # per-minute limit (login: 100/min per user)
    40226: "blocked",
    40013: "misconfigured",  # invalid appid
    40125: "misconfigured",  # invalid appsecret
    40164: "misconfigured",  # caller IP not in the API IP whitelist
    41002: "misconfigured",  # appid missing
    41004: "misconfigured",  # secret missing
    48001: "misconfigured",  # API not authorised for this account
    43101: "not_subscribed",  # user refused, or has no one-time subscription left
    40003: "bad_request",  # invalid openid
    40037: "bad_request",  # invalid template_id
    41030: "bad_request",  # invalid page
    44002: "bad_request",  # empty post data
    47001: "bad_request",  # data format error
    47003: "bad_request",  # template data invalid (value too long, wrong key)
    61010: "bad_request",  # msg_sec_check: user has not visited within 2 hours
}
# The access token was rejected: fetch a new one and retry the call once.
TOKEN_REJECTED = frozenset({40001, 40014, 42001})
# v1's "risky content" errcode; v2 says it in result.suggest, but an answer with it is clear.
RISKY_V1_ERRCODE = 87014
LABEL_NORMAL = 100
_SEVERITY: dict[str, int] = {"pass": 0, "review": 1, "risky": 2}
_CODE_PATTERN = re.compile(r"^[\x21-\x7e]+$")


class WeChatError(errors.ServiceError):
    """Raised when a WeChat call fails. `kind` says what the caller does (KIND_STATUS: the
    status for our client), `errcode` is WeChat's own code (None for network failures),
    `message` a line for logs with no secret in it. `outcome_unknown`: the request was sent
    and its answer lost (or garbled), so a non-idempotent call may have taken effect."""

    def __init__(self, kind: Kind, message: str, *, errcode: int | None = None,
                 outcome_unknown: bool = False) -> None:
        super().__init__(message)
        self.kind: Kind = kind
        self.message = message
        self.errcode = errcode
        self.outcome_unknown = outcome_unknown

    @property
    def status(self) -> int:
        return KIND_STATUS[self.kind]


@dataclass(frozen=True)
class Session:
    """Who logged in. Deliberately without session_key."""

    openid: str
    unionid: str | None


@dataclass(frozen=True)
class Verdict:
    """msg_sec_check's answer. `label` 100 is normal; others name the category (10001 ad,
    20001 politics, 20002 porn, 20003 abuse, 20006 crime, 20008 fraud, 20012 vulgar,
    21000 other; 0: unknown). "review" means WeChat is unsure: the caller chooses."""

    suggest: Suggest
    label: int
    trace_id: str

    @property
    def passed(self) -> bool:
        return self.suggest == "pass"


class WeChat:
    """A client of WeChat's server APIs for one mini-program (appid). One per process."""

    def __init__(self, api_base: str, appid: str, secret: str, *, timeout_s: float = TIMEOUT_S,
                 max_tries: int = MAX_TRIES, backoff_base_s: float = BACKOFF_BASE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not appid or not secret:
            raise errors.ConfigError("WECHAT_APPID and WECHAT_SECRET must be set")
        self.api_base = (api_base or DEFAULT_API_BASE).rstrip("/")
        self.appid = appid
        self._secret = secret
        self.timeout_s = timeout_s
        self.max_tries = max(1, max_tries)
        self.backoff_base_s = backoff_base_s
        # The token cache's clock (monotonic; tests move it).
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._token: str | None = None
        self._refresh_at = 0.0
        self._expires_at = 0.0
        # The one fetch in flight: every caller that needs a token awaits it.
        self._refreshing: asyncio.Task[str] | None = None
        # For metrics, plain ints that only grow.
        self.token_fetches = 0
        self.token_rejections = 0  # calls answered 40001/40014/42001
        self.request_retries = 0
        self.messages_sent = 0

    def __repr__(self) -> str:
        return f"WeChat(api_base={self.api_base!r}, appid={self.appid!r})"

    async def close(self) -> None:
        refreshing, self._refreshing = self._refreshing, None
        if refreshing is not None and not refreshing.done():
            refreshing.cancel()
            await asyncio.wait([refreshing])
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- login -----------------------------------------------------------------------

    async def code2session(self, code: str) -> Session:
        """The user behind a wx.login() code. Raises WeChatError ("invalid_code": the
        client calls wx.login again; "blocked", "rate_limited", "busy", ...)."""
        if not code or len(code) > CODE_MAX_CHARS or not _CODE_PATTERN.match(code):
            raise WeChatError("invalid_code", "the login code is empty or malformed")
        data = await self._call("exchanging a login code", "GET", CODE2SESSION_PATH, params={
            "appid": self.appid, "secret": self._secret, "js_code": code,
            "grant_type": "authorization_code"}, retry_lost=False, retry_busy=True)
        openid, unionid = data.get("openid"), data.get("unionid")
        # data["session_key"] goes no further than this frame.
        if not isinstance(openid, str) or not openid:
            raise WeChatError("upstream_error", "WeChat answered a login without an openid")
        return Session(openid=openid,
                       unionid=unionid if isinstance(unionid, str) and unionid else None)

    # -- the access token --------------------------------------------------------------

    async def access_token(self) -> str:
        """The access token, shared by every call of this process; fetched when missing or
        due, by one fetch however many callers ask at once."""
        if self._token is not None and self._clock() < self._refresh_at:
            return self._token
        try:
            return await self._refresh()
        except WeChatError as exc:
            token, now = self._token, self._clock()
            if token is None or now >= self._expires_at:
                raise
            # An early refresh failed, but the token still works: use it, try again later.
            self._refresh_at = min(now + REFRESH_RETRY_S, self._expires_at)
            logger.warning("wechat: early access token refresh failed (%s); the current "
                           "token is valid %.0f s more", exc.message, self._expires_at - now)
            return token

    def _invalidate(self, token: str) -> None:
        # Only the rejected token: callers that were rejected together cause one fetch.
        if self._token == token:
            self._token = None
            self._refresh_at = self._expires_at = 0.0

    async def _refresh(self) -> str:
        if self._refreshing is None:
            task = asyncio.get_running_loop().create_task(self._fetch_token())
            task.add_done_callback(self._refreshed)
            self._refreshing = task
        # shield: one caller giving up (its request cancelled) must not cancel the fetch
        # that the others await.
        return await asyncio.shield(self._refreshing)

    def _refreshed(self, task: asyncio.Task[str]) -> None:
        if self._refreshing is task:
            self._refreshing = None
        if not task.cancelled():
            task.exception()  # retrieved, even if every waiter has gone

    async def _fetch_token(self) -> str:
        started = self._clock()
        data = await self._call(
            "fetching the access token", "POST", STABLE_TOKEN_PATH,
            body={"grant_type": "client_credential", "appid": self.appid,
                  "secret": self._secret, "force_refresh": False},
            retry_lost=True, retry_busy=True,
            # Here 40001 means the AppSecret is wrong, not that a token was.
            kinds={40001: "misconfigured"})
        token, expires_in = data.get("access_token"), data.get("expires_in")
        if (not isinstance(token, str) or not token or isinstance(expires_in, bool)
                or not isinstance(expires_in, int | float) or expires_in <= 0):
            raise WeChatError("upstream_error", "WeChat answered stable_token without "
                                                "access_token or expires_in")
        self.token_fetches += 1
        early = min(REFRESH_EARLY_S, expires_in * REFRESH_EARLY_FRACTION)
        # From before the request: the token's clock started no later than that.
        self._token = token
        self._expires_at = started + expires_in
        self._refresh_at = started + expires_in - early
        logger.info("wechat: access token fetched, valid %d s", expires_in)
        return token

    async def _with_token(self, doing: str, path: str, body: dict[str, Any], *,
                          retry_lost: bool, retry_busy: bool) -> dict[str, Any]:
        """POST with the access token; one new token and one retry if it is rejected
        (the rejected call was not carried out, so even a send may be retried)."""
        for attempt in (1, 2):
            token = await self.access_token()
            try:
                return await self._call(doing, "POST", path, params={"access_token": token},
                                        body=body, retry_lost=retry_lost,
                                        retry_busy=retry_busy)
            except WeChatError as exc:
                if exc.errcode not in TOKEN_REJECTED or attempt == 2:
                    raise
                self.token_rejections += 1
                logger.warning("wechat: access token rejected (errcode %d) while %s; "
                               "fetching a new one", exc.errcode, doing)
                self._invalidate(token)
        raise AssertionError("unreachable")

    # -- moderation --------------------------------------------------------------------

    async def msg_sec_check(self, *, openid: str, content: str, scene: int = 1) -> Verdict:
        """WeChat's verdict on one text of at most 2500 characters by a user (openid) who
        used the mini-program within the last 2 hours. Raises WeChatError when there is
        no verdict; the caller decides whether to fail open or closed."""
        if not openid:
            raise ValueError("openid must be set")
        if not content or len(content) > MSG_SEC_CHECK_MAX_CHARS:
            raise ValueError(f"content must be 1 to {MSG_SEC_CHECK_MAX_CHARS} characters")
        if scene not in SCENES:
            raise ValueError(f"scene must be one of {sorted(SCENES)}")
        try:
            data = await self._with_token(
                "checking text", MSG_SEC_CHECK_PATH,
                {"version": 2, "openid": openid, "scene": scene, "content": content},
                retry_lost=True, retry_busy=True)
        except WeChatError as exc:
            if exc.errcode == RISKY_V1_ERRCODE:
                return Verdict(suggest="risky", label=0, trace_id="")
            raise
        result = data.get("result")
        suggest = result.get("suggest") if isinstance(result, dict) else None
        if suggest not in _SEVERITY or not isinstance(result, dict):
            raise WeChatError("upstream_error", "WeChat answered msg_sec_check without a "
                                                "known result.suggest")
        label = result.get("label")
        trace_id = data.get("trace_id")
        return Verdict(suggest=suggest, label=label if type(label) is int else 0,
                       trace_id=trace_id if isinstance(trace_id, str) else "")

    async def check_texts(self, *, openid: str, texts: Sequence[str],
                          scene: int = 1) -> Verdict:
        """The worst verdict on several fields (a product name and a theme).

        The fields go in one call, joined by newlines, and a longer set in as few calls of
        at most 2500 characters as it takes: one call per field would spend the appid's
        shared quota (4000/min) and the user's wait for no gain, since WeChat names a
        category, not which words, so a risky answer reads the same either way ("change
        the product name or theme"). The newline keeps words of two fields apart.
        Blank texts are skipped; none left: "pass".
        """
        worst = Verdict(suggest="pass", label=LABEL_NORMAL, trace_id="")
        for chunk in _chunks([t for t in texts if t.strip()], MSG_SEC_CHECK_MAX_CHARS):
            verdict = await self.msg_sec_check(openid=openid, content=chunk, scene=scene)
            if _SEVERITY[verdict.suggest] > _SEVERITY[worst.suggest]:
                worst = verdict
            if worst.suggest == "risky":
                break
        return worst

    # -- subscribe messages ------------------------------------------------------------

    async def send_subscribe_message(self, *, openid: str, template_id: str, page: str,
                                     data: Mapping[str, str],
                                     miniprogram_state: str = "formal") -> None:
        """Send one subscribe message (e.g. "your video is ready").

        Not idempotent and never resent here: on a lost answer (WeChatError with
        outcome_unknown) the message may have been delivered; the caller's outbox
        records the attempt and decides. A one-time subscription allows one message,
        so a resend after a delivery mostly answers 43101 -> "not_subscribed", which is
        final: the user must subscribe again in the mini-program. "bad_request" (47003)
        is final too: a template value too long or a wrong key.
        """
        if miniprogram_state not in MINIPROGRAM_STATES:
            raise ValueError(f"miniprogram_state must be one of {sorted(MINIPROGRAM_STATES)}")
        body = {"touser": openid, "template_id": template_id, "page": page,
                "data": {key: {"value": value} for key, value in data.items()},
                "miniprogram_state": miniprogram_state, "lang": "zh_CN"}
        await self._with_token("sending a subscribe message", SUBSCRIBE_SEND_PATH, body,
                               retry_lost=False, retry_busy=False)
        self.messages_sent += 1

    # -- HTTP --------------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        # Made inside the running loop on first use.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s,
                                              connect=min(self.timeout_s, CONNECT_TIMEOUT_S)),
                headers={"User-Agent": "video-tasks"})
        return self._session

    async def _call(self, doing: str, method: str, path: str, *,
                    params: dict[str, str] | None = None, body: dict[str, Any] | None = None,
                    retry_lost: bool, retry_busy: bool,
                    kinds: Mapping[int, Kind] | None = None) -> dict[str, Any]:
        """One API call, retried within max_tries as allowed; its JSON answer (errcode 0).

        retry_lost: the call is idempotent, so a lost answer or HTTP 5xx may be retried.
        retry_busy: errcode -1 "system busy" may be retried.
        """
        for attempt in range(1, self.max_tries + 1):
            retry = False
            try:
                data = await self._send(method, path, params, body)
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                # No connection was made: the request never left.
                failure = WeChatError("unreachable", f"cannot connect to WeChat while {doing} "
                                                     f"({type(exc).__name__})")
                retry = True
            except (aiohttp.ClientError, TimeoutError) as exc:
                failure = WeChatError("unreachable", f"WeChat's answer was lost while {doing} "
                                                     f"({type(exc).__name__})",
                                      outcome_unknown=not retry_lost)
                retry = retry_lost
            except _BadAnswer as exc:
                failure = WeChatError("upstream_error", f"WeChat answered {exc} while {doing}",
                                      outcome_unknown=not retry_lost)
                retry = retry_lost and exc.retryable
            else:
                errcode = data.get("errcode") or 0
                if errcode == 0:
                    return data
                failure = self._refusal(doing, errcode, data.get("errmsg"), kinds)
                retry = retry_busy and failure.kind == "busy"
            if not retry or attempt == self.max_tries:
                # Raised outside the except blocks: aiohttp's exception (whose text holds
                # the URL, secret included) is not chained.
                raise failure
            self.request_retries += 1
            wait = self._backoff(attempt)
            logger.warning("wechat: %s; try %d of %d in %.2f s", failure.message, attempt + 1,
                           self.max_tries, wait)
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def _send(self, method: str, path: str, params: dict[str, str] | None,
                    body: dict[str, Any] | None) -> dict[str, Any]:
        # Raw UTF-8, not \uXXXX escapes: JSON either way, but moderation is reported to
        # miss words sent escaped.
        payload = None if body is None else json.dumps(body, ensure_ascii=False).encode()
        headers = {} if body is None else {"Content-Type": "application/json; charset=utf-8"}
        async with self._http().request(method, self.api_base + path, params=params,
                                        data=payload, headers=headers) as resp:
            raw = await resp.read()
            if resp.status != 200:
                raise _BadAnswer(f"HTTP {resp.status}",
                                 retryable=resp.status >= 500 or resp.status == 429)
        try:
            data = json.loads(raw)
        except ValueError:
            raise _BadAnswer("a body that is not JSON", retryable=True) from None
        if not isinstance(data, dict):
            raise _BadAnswer("a JSON body that is not an object", retryable=True)
        return data

    def _refusal(self, doing: str, errcode: Any, errmsg: Any,
                 kinds: Mapping[int, Kind] | None) -> WeChatError:
        code = errcode if type(errcode) is int else None
        kind: Kind = "upstream_error"
        if code is not None:
            kind = (kinds or {}).get(code) or ERRCODE_KINDS.get(code, "upstream_error")
        message = f"WeChat refused {doing}: errcode {errcode}"
        if isinstance(errmsg, str) and errmsg:
            message += f" ({self._scrub(errmsg)})"
        if kind == "misconfigured":
            logger.error("wechat: %s; check WECHAT_APPID, WECHAT_SECRET and the API IP "
                         "whitelist in the mini-program's admin console", message)
        return WeChatError(kind, message, errcode=code)

    def _scrub(self, text: str) -> str:
        for secret in (self._secret, self._token):
            if secret:
                text = text.replace(secret, "***")
        text = " ".join(text.split())
        return text if len(text) <= MESSAGE_MAX_CHARS else text[:MESSAGE_MAX_CHARS - 1] + "…"

    def _backoff(self, attempt: int) -> float:
        return min(BACKOFF_MAX_S, self.backoff_base_s * 2 ** (attempt - 1)) \
            * random.uniform(0.5, 1.0)


class _BadAnswer(Exception):
    """An answer that is not WeChat's JSON object (HTTP error, garbled body)."""

    def __init__(self, what: str, *, retryable: bool) -> None:
        super().__init__(what)
        self.retryable = retryable


def _chunks(texts: Sequence[str], limit: int) -> list[str]:
    """Texts joined by newlines into pieces of at most `limit` characters; a text longer
    than that is cut into pieces of its own."""
    pieces: list[str] = []
    current = ""
    for text in texts:
        for start in range(0, len(text), limit):
            part = text[start:start + limit]
            if current and len(current) + 1 + len(part) <= limit:
                current += "\n" + part
            else:
                if current:
                    pieces.append(current)
                current = part
    if current:
        pieces.append(current)
    return pieces
