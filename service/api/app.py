"""The aiohttp application: routes, the one error shape, and the pool's lifetime.

Handlers are thin: validate, one statement through the pool, answer. Nothing is kept
between requests but the pool, so any number of API processes can serve the same port.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from service import auth, db, errors, metrics, storage, tasks, wechat
from service.api import moderation, openapi, pages, validation, video_urls, waits
from service.api import progress as progress_reads
from service.settings import Settings

logger = logging.getLogger(__name__)

SETTINGS_KEY = web.AppKey("settings", Settings)
POOL_KEY = web.AppKey("pool", AsyncConnectionPool)
# Hooks run on every answered request: (request, status, seconds). Metrics subscribe here.
REQUEST_OBSERVERS_KEY = web.AppKey("request_observers", list)
METRICS_KEY = web.AppKey("metrics", metrics.ServiceMetrics)
PROGRESS_KEY = web.AppKey("progress_reader", progress_reads.ProgressReader)
WAITS_KEY = web.AppKey("progress_waits", waits.ProgressWaits)
# Set when the storage's URLs expire (presigned S3): completed tasks get a fresh one.
FRESH_URLS_KEY = web.AppKey("fresh_urls", video_urls.FreshUrls)
# Set when WECHAT_APPID is: the client POST /api/login exchanges codes with.
WECHAT_KEY = web.AppKey("wechat", wechat.WeChat)
# "My videos" pages.
TASKS_PAGE_DEFAULT, TASKS_PAGE_MAX = 20, 50
LOGIN_CODE_MAX_CHARS = 128

JSON = "application/json"
POOL_OPEN_TIMEOUT_S = 15.0
READY_TIMEOUT_S = 1.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """Raised by a handler to answer with the one JSON error shape."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None,
                 headers: dict[str, str] | None = None, close: bool = False) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = headers or {}
        # Close the connection after answering (what is left of the request is unread).
        self.close = close


def json_response(data: Any, *, status: int = 200,
                  headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type=JSON,
                        headers=headers)


def error_response(error: ApiError) -> web.Response:
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.field:
        body["field"] = error.field
    response = json_response({"error": body}, status=error.status, headers=error.headers)
    if error.close:
        response.force_close()
    return response


# aiohttp's own HTTP errors (unknown route, wrong method, body too large) as our codes.
_HTTP_CODES = {
    400: "bad_request", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    413: "payload_too_large", 415: "unsupported_media_type",
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc)
    except validation.Invalid as exc:
        return error_response(ApiError(400, "validation_error", exc.message, field=exc.field))
    except errors.DatabaseUnavailable as exc:
        logger.warning("%s %s: database unavailable: %s", request.method, request.path, exc)
        return _unavailable(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = "request body too large" if exc.status == 413 else exc.reason
        return error_response(ApiError(exc.status, _HTTP_CODES.get(exc.status, "http_error"),
                                       message, headers=_allow_header(exc)))
    except Exception:
        # Logged with its traceback here; the client learns nothing about internals.
        logger.exception("%s %s failed", request.method, request.path)
        return error_response(ApiError(500, "internal_error", "internal server error"))


@web.middleware
async def observe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Time every answered request for the REQUEST_OBSERVERS_KEY hooks."""
    started = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _observe(request, exc.status, started)
        raise
    _observe(request, response.status, started)
    return response


def _observe(request: web.Request, status: int, started: float) -> None:
    seconds = time.perf_counter() - started
    for observer in request.app[REQUEST_OBSERVERS_KEY]:
        observer(request, status, seconds)


def _allow_header(exc: web.HTTPException) -> dict[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}


def _unavailable(request: web.Request) -> web.Response:
    retry_after = request.app[SETTINGS_KEY].retry_after_s
    return error_response(ApiError(
        503, "unavailable", "the service is busy or its database is unreachable; retry later",
        headers={"Retry-After": str(retry_after)}))


async def json_body(request: web.Request) -> Any:
    if request.content_type != JSON:
        raise ApiError(415, "unsupported_media_type", "Content-Type must be application/json",
                       field="Content-Type")
    try:
        # A body that trickles in is cut off instead of holding the connection.
        async with asyncio.timeout(request.app[SETTINGS_KEY].request_read_timeout_s):
            raw = await request.read()
    except TimeoutError as exc:
        raise ApiError(408, "request_timeout", "the request body did not arrive in time",
                       close=True) from exc
    try:
        return validation.parse_json(raw)
    except validation.BadJson as exc:
        raise ApiError(400, "invalid_json", exc.message, field=exc.field) from exc


async def generate_video(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS_KEY]
    owner = caller(request)
    body = await json_body(request)
    client = request.app.get(WECHAT_KEY)
    new = validation.create_request(
        body, settings, request.headers.get("Idempotency-Key"), owner_openid=owner,
        requester=tasks.requester_key(owner, request.remote),
        notices_available=client is not None)
    if settings.content_check:
        await _screen(request, client, owner, [new.product_name, new.theme])
    created = await tasks.create(request.app[POOL_KEY], new, _limits(settings))
    if isinstance(created, tasks.Refused):
        raise _over_limit(request, settings, created)
    headers = {"Location": f"/api/progress/{created.task_id}"}
    if not created.created:
        if new.idempotency_key is None or created.request_fingerprint != new.request_fingerprint:
            raise ApiError(409, "idempotency_key_reused",
                           "this Idempotency-Key was already used with a different request",
                           field="Idempotency-Key")
        headers["Idempotent-Replayed"] = "true"
    return json_response({"task_id": str(created.task_id), "status": created.status.value,
                          "total_parts": created.total_parts}, status=202, headers=headers)


async def _screen(request: web.Request, client: wechat.WeChat | None, owner: str | None,
                  texts: list[str]) -> None:
    """Refuse text WeChat finds risky (422), or any text while it gives no verdict and
    CONTENT_CHECK_FAIL_OPEN is off (503). Before the task is stored: nothing is."""
    settings = request.app[SETTINGS_KEY]
    outcome = await moderation.screen(client, settings, openid=owner, texts=texts)
    request.app[METRICS_KEY].content_checks.labels(outcome.verdict).inc()
    if outcome.screening is moderation.Screening.REJECTED:
        raise ApiError(422, "content_rejected", moderation.REJECTED_MESSAGE)
    if outcome.screening is moderation.Screening.UNAVAILABLE:
        raise ApiError(503, "content_check_unavailable", moderation.UNAVAILABLE_MESSAGE,
                       headers={"Retry-After": str(settings.retry_after_s)})


def _limits(settings: Settings) -> tasks.Limits:
    return tasks.Limits(creates_per_minute=settings.user_creates_per_minute,
                        max_unfinished=settings.user_max_unfinished)


def _over_limit(request: web.Request, settings: Settings, refused: tasks.Refused) -> ApiError:
    request.app[METRICS_KEY].creates_refused.labels(refused.reason.value).inc()
    retry_after = max(1, math.ceil(refused.retry_after_s))
    if refused.reason is tasks.Refusal.TOO_MANY_UNFINISHED:
        message = (f"你已有 {settings.user_max_unfinished} 个视频正在生成，请等其完成后再试 / "
                   f"you already have {settings.user_max_unfinished} videos in progress; "
                   "wait for one to finish")
    else:
        message = (f"创建太频繁，请 {retry_after} 秒后再试 / too many videos created (at most "
                   f"{settings.user_creates_per_minute} a minute); retry in {retry_after} s")
    return ApiError(429, refused.reason.value, message, headers={"Retry-After": str(retry_after)})


async def progress(request: web.Request) -> web.Response:
    raw_id = request.match_info["task_id"]
    try:
        task_id = uuid.UUID(raw_id)
    except ValueError as exc:
        raise ApiError(400, "validation_error", "task_id must be a UUID",
                       field="task_id") from exc
    who = caller(request)
    settings = request.app[SETTINGS_KEY]
    wait_s, since = validation.progress_wait(request.query, settings.progress_wait_max_s)
    row = await request.app[PROGRESS_KEY].get(task_id)
    # Someone else's task is as good as no task: its existence is not the caller's business.
    if row is None or row["owner_openid"] != who:
        raise ApiError(404, "task_not_found", f"no task with id {task_id}", field="task_id")
    if (wait_s > 0 and since is not None and row["updated_at"] <= since
            and row["status"] not in tasks.TERMINAL):
        row, outcome = await request.app[WAITS_KEY].wait(
            row, since=since, wait_s=wait_s, user=tasks.requester_key(who, request.remote))
        request.app[METRICS_KEY].progress_waits.labels(outcome.value).inc()
    return json_response(await _task_json(request, row))


async def _task_json(request: web.Request, row: dict[str, Any]) -> dict[str, Any]:
    answer = tasks.progress_json(row)
    fresh_urls = request.app.get(FRESH_URLS_KEY)
    if fresh_urls is not None and row["video_key"]:
        answer["video_url"] = await fresh_urls.url(row["video_key"])
    return answer


def caller(request: web.Request) -> str | None:
    """The caller's openid: from the app's own login token, or (when trusted) from WeChat
    Cloud Run's X-WX-OPENID header; None for an anonymous caller, who is refused with 401
    when AUTH_REQUIRED is on. A token that is present but bad is always refused."""
    settings = request.app[SETTINGS_KEY]
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("Authorization must be `Bearer <token>` from POST /api/login")
        try:
            return auth.verify(token.strip(), secret=_token_keys(settings))
        except auth.InvalidToken as exc:
            raise _unauthorized(f"the login token is {exc.reason.replace('_', ' ')}; "
                                "log in again (POST /api/login)", code="invalid_token") from exc
    if settings.auth_trust_wx_openid_header and request.headers.get("X-WX-OPENID"):
        return request.headers["X-WX-OPENID"]
    if settings.auth_required:
        raise _unauthorized("log in first: POST /api/login, then send "
                            "`Authorization: Bearer <token>`")
    return None


def _token_keys(settings: Settings) -> list[str]:
    return auth.key_ring(settings.auth_token_secret, settings.auth_token_previous_secrets)


def _unauthorized(message: str, *, code: str = "unauthorized") -> ApiError:
    return ApiError(401, code, message, field="Authorization",
                    headers={"WWW-Authenticate": "Bearer"})


async def login(request: web.Request) -> web.Response:
    """`{"code": ...}` from wx.login() -> the app's own token. session_key stays here."""
    settings = request.app[SETTINGS_KEY]
    body = await json_body(request)
    code = body.get("code") if isinstance(body, dict) else None
    if not isinstance(code, str) or not code.strip() or len(code) > LOGIN_CODE_MAX_CHARS:
        raise validation.Invalid("code", "code is required: the string wx.login() gave, "
                                         f"at most {LOGIN_CODE_MAX_CHARS} characters")
    client = request.app.get(WECHAT_KEY)
    if client is None:
        raise ApiError(503, "login_unavailable",
                       "WeChat login is not configured on this server (WECHAT_APPID)",
                       headers={"Retry-After": str(settings.retry_after_s)})
    try:
        session = await client.code2session(code.strip())
    except wechat.WeChatError as exc:
        raise _login_error(exc, settings.retry_after_s) from exc
    token = auth.issue(session.openid, secret=_token_keys(settings),
                       ttl_s=settings.auth_token_ttl_s)
    return json_response({"token": token, "expires_in": settings.auth_token_ttl_s})


# What the mini-program is told for each way a login fails; WeChat's own text stays in
# our log.
_LOGIN_ERRORS: dict[str, tuple[str, str]] = {
    "invalid_code": ("invalid_code", "登录已失效，请重新登录 / the login code is invalid or "
                                     "used; call wx.login() again"),
    "rate_limited": ("rate_limited", "登录太频繁，请稍后再试 / too many logins; retry later"),
    "blocked": ("user_blocked", "该微信账号暂时无法登录 / WeChat refused this user"),
}


def _login_error(exc: wechat.WeChatError, retry_after_s: int) -> ApiError:
    code, message = _LOGIN_ERRORS.get(
        exc.kind, ("login_unavailable", "登录服务暂时不可用，请稍后再试 / WeChat login is "
                                        "unavailable right now; retry later"))
    status = exc.status if exc.kind in _LOGIN_ERRORS else 503
    logger.warning("login failed: %s (%s)", exc.kind, exc.message)
    headers = {"Retry-After": str(retry_after_s)} if status in (429, 503) else None
    return ApiError(status, code, message, field="code" if status == 400 else None,
                    headers=headers)


async def list_tasks(request: web.Request) -> web.Response:
    """The caller's tasks, newest first: `?limit=N&cursor=...` (the `next` of a page)."""
    who = caller(request)
    if who is None:
        raise _unauthorized("my videos needs a logged-in user: POST /api/login")
    raw_limit = request.query.get("limit", str(TASKS_PAGE_DEFAULT))
    # ASCII digits only: "²" is a digit to isdigit() and not to int(), "٣" is to both.
    if not (raw_limit.isascii() and raw_limit.isdigit()) or not 1 <= int(raw_limit) <= \
            TASKS_PAGE_MAX:
        raise validation.Invalid("limit", f"limit must be a whole number from 1 to "
                                          f"{TASKS_PAGE_MAX}")
    limit = int(raw_limit)
    before = None
    if "cursor" in request.query:
        before = validation.decode_cursor(request.query["cursor"])
    rows = await tasks.list_for_owner(request.app[POOL_KEY], owner_openid=who, limit=limit,
                                      before=before)
    page = [await _task_json(request, row) for row in rows]
    last = rows[-1] if len(rows) == limit else None
    cursor = validation.encode_cursor(last["created_at"], last["task_id"]) if last else None
    return json_response({"tasks": page, "next": cursor})


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when a statement goes through PgBouncer to PostgreSQL."""
    try:
        await db.ping(request.app[POOL_KEY], timeout_s=READY_TIMEOUT_S)
    except errors.DatabaseUnavailable as exc:
        logger.warning("readyz: %s", exc)
        return _unavailable(request)
    return json_response({"status": "ready"})


async def public_metrics(request: web.Request) -> web.Response:
    """/metrics on the public port: only with METRICS_TOKEN, else as if it did not exist."""
    token = request.app[SETTINGS_KEY].metrics_token
    if not token:
        raise web.HTTPNotFound()
    if not metrics.authorized(request.headers.get("Authorization"), token):
        raise ApiError(401, "unauthorized", "/metrics needs Authorization: Bearer <token>",
                       headers={"WWW-Authenticate": "Bearer"})
    return await metrics.response(request.app[METRICS_KEY])


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[observe_middleware, error_middleware],
                          client_max_size=settings.request_max_bytes)
    app[SETTINGS_KEY] = settings
    app[METRICS_KEY] = metrics.ServiceMetrics("api")
    app[REQUEST_OBSERVERS_KEY] = [app[METRICS_KEY].observe_request]
    app.cleanup_ctx.append(_pool_ctx)
    # A graceful stop answers every held progress poll at once, before draining.
    app.on_shutdown.append(_release_waits)
    app.cleanup_ctx.append(_metrics_ctx)
    app.cleanup_ctx.append(_storage_ctx)
    app.cleanup_ctx.append(_wechat_ctx)
    app.router.add_post("/api/generate-video", generate_video)
    app.router.add_get("/api/progress/{task_id}", progress)
    app.router.add_post("/api/login", login)
    app.router.add_get("/api/tasks", list_tasks)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", public_metrics)
    app.router.add_get(openapi.SPEC_PATH, openapi.serve)
    pages.register(app)  # the demo at /, the /ops dashboard, POST /api/dev-login
    if settings.storage_backend == "local":
        # Finished videos only (parts stay private); with S3 the bucket or its CDN
        # serves them and the API serves no files.
        (settings.media_dir / storage.VIDEOS_DIR).mkdir(parents=True, exist_ok=True)
        app.router.add_get(f"/media/{storage.VIDEOS_DIR}/{{name}}", video_file)
    return app


# The only names under /media/videos/: a task id and .mp4. Nothing else is looked up on
# disk, so no encoding trick reaches another path.
VIDEO_FILE_NAME = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}\.mp4$")


async def video_file(request: web.Request) -> web.StreamResponse:
    """A finished video with local storage (Range and HEAD work: FileResponse)."""
    name = request.match_info["name"]
    path = request.app[SETTINGS_KEY].media_dir / storage.VIDEOS_DIR / name
    if not VIDEO_FILE_NAME.match(name) or not path.is_file():
        raise ApiError(404, "not_found", "no such video", field="name")
    return web.FileResponse(path, headers={"Content-Type": "video/mp4"})


async def _wechat_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    if not settings.wechat_appid:
        yield
        return
    client = wechat.WeChat(settings.wechat_api_base, settings.wechat_appid,
                           settings.wechat_secret, timeout_s=settings.wechat_timeout_s)
    app[WECHAT_KEY] = client
    yield
    await client.close()


async def _storage_ctx(app: web.Application) -> AsyncIterator[None]:
    """With presigned URLs, a storage client of our own to sign fresh ones."""
    settings = app[SETTINGS_KEY]
    store = storage.from_settings(settings)
    if store.urls_expire:
        app[FRESH_URLS_KEY] = video_urls.FreshUrls(store, ttl_s=settings.s3_presign_ttl_s)
    yield
    await store.close()


async def _pool_ctx(app: web.Application) -> AsyncIterator[None]:
    pool = db.create_pool(app[SETTINGS_KEY], name="video-tasks-api")
    # Opened inside the running loop; a wrong URL or password fails here, at boot.
    await pool.open(wait=True, timeout=POOL_OPEN_TIMEOUT_S)
    app[POOL_KEY] = pool
    settings = app[SETTINGS_KEY]
    app[PROGRESS_KEY] = progress_reads.ProgressReader(pool, max_in_flight=settings.app_pool_max)
    app[WAITS_KEY] = waits.ProgressWaits(
        pool, tick_s=settings.progress_wait_tick_s, max_waiting=settings.progress_waiters_max,
        max_per_user=settings.progress_waiters_per_user)
    app[METRICS_KEY].extra.append(metrics.waits_collector(app[WAITS_KEY]))
    yield
    await app[WAITS_KEY].close()
    await pool.close()


async def _release_waits(app: web.Application) -> None:
    if WAITS_KEY in app:
        app[WAITS_KEY].release_all()


async def _metrics_ctx(app: web.Application) -> AsyncIterator[None]:
    """/metrics on METRICS_HOST:METRICS_PORT, with the pool's figures."""
    settings, app_metrics = app[SETTINGS_KEY], app[METRICS_KEY]
    app_metrics.pool = app[POOL_KEY]
    runner = await metrics.serve(app_metrics, settings.metrics_host, settings.metrics_port,
                                 routes=pages.metrics_port_routes(app))
    yield
    if runner is not None:
        await runner.cleanup()
