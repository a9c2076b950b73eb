"""GET /api/openapi.json: the API described as OpenAPI 3.1.

Built from the constants the handlers and validators use (Settings, service.api.validation,
service.api.app, service.tasks), so the published rules cannot drift from the enforced
ones; tests/test_openapi.py compares the paths with the app's routes and the rules with
the validators, and runs schemathesis against the live API with this spec.

The spec describes one server's settings: the text and duration bounds, whether
anonymous callers are served (AUTH_REQUIRED), whether X-WX-OPENID is trusted, whether
subscribe messages can be asked for (WECHAT_APPID) and whether videos are served here
(STORAGE_BACKEND=local).
"""

from __future__ import annotations

import asyncio
import functools
import unicodedata
from importlib import metadata
from typing import Any

import orjson
from aiohttp import web

from service import storage, tasks
from service.api import dev_login, pages, validation
from service.settings import Settings

OPENAPI_VERSION = "3.1.0"
SPEC_PATH = "/api/openapi.json"
JSON = "application/json"

_SURROGATES = range(0xD800, 0xE000)
# Printable ASCII, as validation._check_idempotency_key wants; not starting or ending with
# a space, which HTTP would drop (and clients refuse to send).
IDEMPOTENCY_KEY_PATTERN = r"^[!-~](?:[ -~]*[!-~])?$"
CURSOR_PATTERN = r"^[A-Za-z0-9_-]+$"


def build_spec(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 document of an API process running with `settings`."""
    # Imported here: service.api.app imports this module to register serve().
    from service.api import app as api

    paths: dict[str, Any] = {
        "/api/generate-video": {"post": _create_operation(settings)},
        "/api/progress/{task_id}": {"get": _progress_operation(settings)},
        "/api/login": {"post": _login_operation(settings, api.LOGIN_CODE_MAX_CHARS)},
        "/api/tasks": {"get": _list_operation(settings, api.TASKS_PAGE_DEFAULT,
                                              api.TASKS_PAGE_MAX)},
        "/healthz": {"get": _status_operation("healthz", "The process is up (no database).",
                                              "ok", unavailable=False)},
        "/readyz": {"get": _status_operation(
            "readyz", "Ready when `SELECT 1` goes through PgBouncer to PostgreSQL within "
            f"{api.READY_TIMEOUT_S:g} s.", "ready", unavailable=True)},
        "/metrics": {"get": _metrics_operation(bool(settings.metrics_token))},
        SPEC_PATH: {"get": _spec_operation()},
        pages.DEMO_PATH: {"get": _demo_page_operation()},
        pages.ASSET_PATH: {"get": _asset_operation()},
        pages.OPS_PATH: {"get": _ops_page_operation(bool(settings.metrics_token))},
        pages.OPS_DATA_PATH: {"get": _ops_data_operation(bool(settings.metrics_token))},
    }
    if dev_login.enabled(settings):
        paths[dev_login.PATH] = {"post": _dev_login_operation(settings)}
    if settings.storage_backend == "local":
        paths[f"/media/{storage.VIDEOS_DIR}/{{name}}"] = {
            "get": _video_operation(api.VIDEO_FILE_NAME.pattern)}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "video-tasks",
            "version": _version(),
            "summary": "Short marketing videos from a product name and a theme, for a "
                       "WeChat mini-program.",
            "description": (
                "Every error has one shape, `{\"error\": {\"code\", \"message\", "
                "\"field\"?}}`; `code` is stable, `message` is for people, `field` names "
                "the request field or header at fault. Answers that say `Retry-After` "
                "name the seconds to wait. On any path, a request aiohttp cannot read is "
                "answered in the same shape: 431 `headers_too_large` (a header or the "
                "request line over 8190 bytes, or over 128 headers), 400 `bad_request` "
                "(not HTTP/1.1), and 408 `request_timeout` when the headers take longer "
                f"than {settings.request_read_timeout_s:g} s (REQUEST_READ_TIMEOUT_S); the "
                "connection is then closed."),
        },
        "paths": paths,
        "components": {
            "schemas": _schemas(settings),
            "securitySchemes": _security_schemes(settings),
        },
    }


async def serve(request: web.Request) -> web.Response:
    """GET /api/openapi.json: the spec of this process's settings."""
    from service.api.app import SETTINGS_KEY

    # In a thread: the first build reads every code point's category (a fraction of a
    # second the event loop would otherwise stall for).
    body = await asyncio.to_thread(_spec_json, request.app[SETTINGS_KEY])
    return web.Response(body=body, content_type=JSON)


# Built once per settings (equal settings describe the same API); a process has one.
@functools.lru_cache(maxsize=8)
def _spec_json(settings: Settings) -> bytes:
    return orjson.dumps(build_spec(settings))


def _version() -> str:
    try:
        return metadata.version("video-tasks")
    except metadata.PackageNotFoundError:  # a checkout run without `pip install -e .`
        return "0"


# ---- operations -----------------------------------------------------------------------

def _create_operation(settings: Settings) -> dict[str, Any]:
    retry_after = _retry_after_header()
    return {
        "operationId": "createVideoTask",
        "summary": "Queue a video",
        "description": (
            f"`duration` is split into {settings.part_seconds} s parts. The same "
            "`Idempotency-Key` with the same body (and caller) answers the same task; with "
            "another body it is 409. Unknown fields are refused (400)."),
        "security": _caller_security(settings, anonymous=not settings.auth_required),
        "parameters": [{
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "description": "Makes a retried create safe: 1 to "
                           f"{validation.IDEMPOTENCY_KEY_MAX_CHARS} printable ASCII "
                           "characters.",
            "schema": {"type": "string", "minLength": 1,
                       "maxLength": validation.IDEMPOTENCY_KEY_MAX_CHARS,
                       "pattern": IDEMPOTENCY_KEY_PATTERN},
        }],
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": {"$ref": "#/components/schemas/CreateTask"}}},
        },
        "responses": {
            "202": {
                "description": "Queued (or, for a repeated Idempotency-Key, the task it made).",
                "headers": {
                    "Location": {"description": "Where the task's progress is read.",
                                 "schema": {"type": "string"}},
                    "Idempotent-Replayed": {
                        "description": "Present when an earlier request with this "
                                       "Idempotency-Key made the task.",
                        "schema": {"type": "string", "enum": ["true"]}},
                },
                "content": {JSON: {"schema": {"$ref": "#/components/schemas/Created"}}},
                "links": {"progress": {
                    "operationId": "getProgress",
                    "parameters": {"task_id": "$response.body#/task_id"},
                    "description": "The progress of the task just queued.",
                }},
            },
            "400": _error("A field breaks its rule (`field` names it), or the body is not "
                          "JSON.", ["validation_error", "invalid_json"]),
            **_auth_errors(),
            "405": _method_not_allowed(),
            "409": _error("This Idempotency-Key was used with another request.",
                          ["idempotency_key_reused"]),
            "408": _too_slow(settings),
            "413": _too_large(settings),
            "415": _error("Content-Type is not application/json.",
                          ["unsupported_media_type"]),
            "422": _error("WeChat's content check found the text risky; nothing was stored.",
                          ["content_rejected"]),
            "429": _error("Over the caller's limits: creates a minute, or unfinished tasks.",
                          [refusal.value for refusal in tasks.Refusal], headers=retry_after),
            "503": _error("The database is busy or down, or (CONTENT_CHECK_FAIL_OPEN off) "
                          "WeChat's content check gave no verdict; nothing was stored.",
                          ["unavailable", "content_check_unavailable"], headers=retry_after),
        },
    }


def _progress_operation(settings: Settings) -> dict[str, Any]:
    return {
        "operationId": "getProgress",
        "summary": "A task's progress",
        "security": _caller_security(settings, anonymous=not settings.auth_required),
        "description": (
            "Without `wait`, the task as it is now. With `wait=S&since=T` (T: the "
            "`updated_at` of the last answer), the answer is held until the task changes "
            f"after T or S seconds pass (S is cut to {settings.progress_wait_max_s:g}, "
            "PROGRESS_WAIT_MAX_S); a finished task, a change already made, or no `since` "
            "answer at once, and so does a poll beyond the server's caps of held polls. "
            "The mini-program's loop: poll with `wait`, show the answer, poll again with "
            "its `updated_at`."),
        "parameters": [{
            "name": "task_id", "in": "path", "required": True,
            "schema": {"type": "string", "format": "uuid"},
        }, {
            "name": "wait", "in": "query", "required": False,
            "description": "Seconds to hold the poll for a change, e.g. 25.",
            "schema": {"type": "string", "pattern": validation.WAIT_PATTERN.pattern},
        }, {
            "name": "since", "in": "query", "required": False,
            "description": "The `updated_at` of the last answer, as it was given.",
            "schema": {"type": "string", "pattern": validation.SINCE_PATTERN.pattern},
        }],
        "responses": {
            "200": {"description": "The task as it is now, or once it changed.",
                    "content": {JSON: {"schema": {"$ref": "#/components/schemas/Progress"}}}},
            "400": _error("task_id is not a UUID, or wait or since is malformed.",
                          ["validation_error"]),
            **_auth_errors(),
            "404": _error("No such task, or someone else's.", ["task_not_found", "not_found"]),
            "405": _method_not_allowed(),
            "503": _unavailable(),
        },
    }


def _login_operation(settings: Settings, code_max_chars: int) -> dict[str, Any]:
    retry_after = _retry_after_header()
    return {
        "operationId": "login",
        "summary": "Exchange a wx.login() code for the app's own token",
        "description": "The code is exchanged at WeChat (jscode2session); the answer is a "
                       "signed, expiring token for `Authorization: Bearer`.",
        "security": [],
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": {
                "type": "object",
                "required": ["code"],
                "properties": {"code": {
                    "type": "string", "minLength": 1, "maxLength": code_max_chars,
                    # Not only whitespace.
                    "pattern": _char_class(_whitespace(), negate=True),
                    "description": "What wx.login() gave.",
                }},
            }}},
        },
        "responses": {
            "200": {"description": "Logged in.",
                    "content": {JSON: {"schema": {"$ref": "#/components/schemas/Login"}}}},
            "400": _error("The code is missing, malformed, invalid or used.",
                          ["validation_error", "invalid_json", "invalid_code"]),
            "403": _error("WeChat refused this user.", ["user_blocked"]),
            "405": _method_not_allowed(),
            "408": _too_slow(settings),
            "413": _too_large(settings),
            "415": _error("Content-Type is not application/json.",
                          ["unsupported_media_type"]),
            "429": _error("Too many logins.", ["rate_limited"], headers=retry_after),
            "503": _error("WeChat login is unreachable or not configured (WECHAT_APPID).",
                          ["login_unavailable"], headers=retry_after),
        },
    }


def _list_operation(settings: Settings, page_default: int, page_max: int) -> dict[str, Any]:
    return {
        "operationId": "listTasks",
        "summary": "The caller's tasks, newest first",
        "description": "Keyset pages: pass the `next` of a page as `cursor` for the one "
                       "after it.",
        "security": _caller_security(settings, anonymous=False),
        "parameters": [
            {"name": "limit", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": page_max,
                        "default": page_default}},
            {"name": "cursor", "in": "query", "required": False,
             "description": "The `next` of an earlier page; nothing else is valid.",
             "schema": {"type": "string", "minLength": 1, "pattern": CURSOR_PATTERN}},
        ],
        "responses": {
            "200": {"description": "A page of tasks.",
                    "content": {JSON: {"schema": {"$ref": "#/components/schemas/TaskPage"}}}},
            "400": _error("limit is out of range, or cursor is not a `next`.",
                          ["validation_error"]),
            **_auth_errors(),
            "405": _method_not_allowed(),
            "503": _unavailable(),
        },
    }


def _status_operation(operation_id: str, description: str, status: str, *,
                      unavailable: bool) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {"description": description, "content": {JSON: {"schema": {
            "type": "object", "required": ["status"], "additionalProperties": False,
            "properties": {"status": {"type": "string", "enum": [status]}},
        }}}},
        "405": _method_not_allowed(),
    }
    if unavailable:
        responses["503"] = _unavailable()
    return {"operationId": operation_id, "security": [], "responses": responses}


def _metrics_operation(token_set: bool) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": "metrics",
        "summary": "Prometheus metrics on the public port",
        "description": "Served here only when METRICS_TOKEN is set, to callers who send "
                       "it; otherwise the path does not exist (404). The metrics are "
                       "always served on METRICS_HOST:METRICS_PORT.",
    }
    if not token_set:
        return {**operation, "security": [], "responses": {
            "404": _error("METRICS_TOKEN is not set.", ["not_found"]),
            "405": _method_not_allowed(),
        }}
    return {**operation, "security": [{"metricsToken": []}], "responses": {
        "200": {"description": "Prometheus' text exposition format.",
                "content": {"text/plain": {"schema": {"type": "string"}}}},
        "401": _error("No or a wrong METRICS_TOKEN.", ["unauthorized"],
                      headers=_www_authenticate_header()),
        "405": _method_not_allowed(),
    }}


def _spec_operation() -> dict[str, Any]:
    return {
        "operationId": "openapi",
        "summary": "This document",
        "security": [],
        "responses": {
            "200": {"description": "OpenAPI 3.1.",
                    "content": {JSON: {"schema": {"type": "object"}}}},
            "405": _method_not_allowed(),
        },
    }


def _demo_page_operation() -> dict[str, Any]:
    return {
        "operationId": "demoPage",
        "summary": "The demo page: the mini-program's flow in a browser",
        "description": "Log in (POST /api/dev-login where DEV_LOGIN is on), create a video, "
                       "follow its progress, play it, list my videos. Plain files from "
                       "service/api/static, no build step, nothing from a CDN.",
        "security": [],
        "responses": {
            "200": {"description": "HTML.", "content": {"text/html": {"schema": {
                "type": "string"}}}},
            "405": _method_not_allowed(),
        },
    }


def _asset_operation() -> dict[str, Any]:
    types = sorted({content_type for _, content_type in pages.ASSETS.values()})
    return {
        "operationId": "pageAsset",
        "summary": "A script or style sheet of the pages",
        "security": [],
        "parameters": [{"name": "name", "in": "path", "required": True,
                        "schema": {"type": "string", "enum": sorted(pages.ASSETS)}}],
        "responses": {
            "200": {"description": "The file.",
                    "content": {t: {"schema": {"type": "string"}} for t in types}},
            "404": _error("No such file.", ["not_found"]),
            "405": _method_not_allowed(),
        },
    }


def _ops_page_operation(token_set: bool) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": "opsPage",
        "summary": "The pools-and-queue dashboard",
        "description": "Charts of GET /ops/data, refreshed every second. Served here only "
                       "when METRICS_TOKEN is set, like /metrics (the page holds no data; "
                       "its data needs the token, which it takes from `#token=` or asks "
                       "for); always served on METRICS_HOST:METRICS_PORT, without a token.",
        "security": [],
    }
    if not token_set:
        return {**operation, "responses": {
            "404": _error("METRICS_TOKEN is not set.", ["not_found"]),
            "405": _method_not_allowed(),
        }}
    return {**operation, "responses": {
        "200": {"description": "HTML.", "content": {"text/html": {"schema": {
            "type": "string"}}}},
        "405": _method_not_allowed(),
    }}


def _ops_data_operation(token_set: bool) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": "opsData",
        "summary": "The dashboard's data: the doctor's report of one shared sample",
        "description": "`video-tasks doctor --json` of a sample this process took at most "
                       "a second ago (one sample at a time, shared by every viewer), the "
                       "figures the charts plot, and this process's psycopg pool. Served "
                       "here only with METRICS_TOKEN, to callers who send it; always on "
                       "METRICS_HOST:METRICS_PORT, without a token.",
    }
    if not token_set:
        return {**operation, "security": [], "responses": {
            "404": _error("METRICS_TOKEN is not set.", ["not_found"]),
            "405": _method_not_allowed(),
        }}
    return {**operation, "security": [{"metricsToken": []}], "responses": {
        "200": {"description": "The newest report.",
                "content": {JSON: {"schema": {"$ref": "#/components/schemas/Dashboard"}}}},
        "401": _error("No or a wrong METRICS_TOKEN.", ["unauthorized"],
                      headers=_www_authenticate_header()),
        "405": _method_not_allowed(),
    }}


def _dev_login_operation(settings: Settings) -> dict[str, Any]:
    return {
        "operationId": "devLogin",
        "summary": "A login token without WeChat, for the local stack's demo page",
        "description": "Only where DEV_LOGIN is on (the local stack without WECHAT_APPID; "
                       "ENVIRONMENT=production refuses it), else the path does not exist. "
                       f"The token is POST /api/login's, for the openid "
                       f"`{dev_login.OPENID_PREFIX}<user>`.",
        "security": [],
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": {
                "type": "object",
                "required": ["user"],
                "additionalProperties": False,
                "properties": {"user": {"type": "string",
                                        "pattern": dev_login.USER_PATTERN.pattern,
                                        "description": "Any name: the same name is the "
                                                       "same user."}},
            }}},
        },
        "responses": {
            "200": {"description": "Logged in.",
                    "content": {JSON: {"schema": {"$ref": "#/components/schemas/Login"}}}},
            "400": _error("user is missing or not 1 to "
                          f"{dev_login.USER_MAX_CHARS} letters, digits, - or _, or the body "
                          "is not JSON.", ["validation_error", "invalid_json"]),
            "405": _method_not_allowed(),
            "408": _too_slow(settings),
            "413": _too_large(settings),
            "415": _error("Content-Type is not application/json.",
                          ["unsupported_media_type"]),
        },
    }


def _video_operation(name_pattern: str) -> dict[str, Any]:
    return {
        "operationId": "getVideo",
        "summary": "A finished video (STORAGE_BACKEND=local)",
        "description": "The `video_url` of a completed task points here.",
        "security": [],
        "parameters": [{"name": "name", "in": "path", "required": True,
                        "schema": {"type": "string", "pattern": name_pattern}}],
        "responses": {
            "200": {"description": "The H.264 MP4.",
                    "content": {"video/mp4": {"schema": {"type": "string",
                                                         "contentMediaType": "video/mp4"}}}},
            "404": _error("No such video.", ["not_found"]),
            "405": _method_not_allowed(),
        },
    }


# ---- responses ------------------------------------------------------------------------

def _error(description: str, codes: list[str], *,
           headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """An error response: the one shape, with the codes this answer can carry."""
    response: dict[str, Any] = {
        "description": f"{description} Codes: {', '.join(codes)}.",
        "content": {JSON: {"schema": {
            "type": "object",
            "required": ["error"],
            "additionalProperties": False,
            "properties": {"error": {
                "type": "object",
                "required": ["code", "message"],
                "additionalProperties": False,
                "properties": {
                    "code": {"type": "string", "enum": codes},
                    "message": {"type": "string"},
                    "field": {"type": "string",
                              "description": "The request field or header at fault."},
                },
            }},
        }}},
    }
    if headers:
        response["headers"] = headers
    return response


def _auth_errors() -> dict[str, Any]:
    return {"401": _error(
        "No caller where one is needed, or an Authorization that is not a valid login "
        "token (log in again: POST /api/login).", ["unauthorized", "invalid_token"],
        headers=_www_authenticate_header())}


def _unavailable() -> dict[str, Any]:
    return _error("The database is busy or unreachable; retry later.", ["unavailable"],
                  headers=_retry_after_header())


def _too_large(settings: Settings) -> dict[str, Any]:
    return _error(f"The body is over {settings.request_max_bytes} bytes.",
                  ["payload_too_large"])


def _too_slow(settings: Settings) -> dict[str, Any]:
    return _error(f"The body took longer than {settings.request_read_timeout_s:g} s to "
                  "arrive; the connection is closed.", ["request_timeout"])


def _method_not_allowed() -> dict[str, Any]:
    return _error("Answered to another method on this path; Allow lists the methods.",
                  ["method_not_allowed"], headers={"Allow": {
                      "required": True, "schema": {"type": "string"}}})


def _retry_after_header() -> dict[str, Any]:
    return {"Retry-After": {"required": True, "description": "Seconds to wait.",
                            "schema": {"type": "integer", "minimum": 1}}}


def _www_authenticate_header() -> dict[str, Any]:
    return {"WWW-Authenticate": {"required": True,
                                 "schema": {"type": "string", "enum": ["Bearer"]}}}


# ---- schemas and security -------------------------------------------------------------

def _schemas(settings: Settings) -> dict[str, Any]:
    task_id = {"type": "string", "format": "uuid"}
    status = {"type": "string", "enum": [s.value for s in tasks.Status]}
    create_fields: dict[str, Any] = {
        "product_name": {"$ref": "#/components/schemas/VideoText"},
        "theme": {"$ref": "#/components/schemas/VideoText"},
        "duration": {"type": "integer", "minimum": settings.duration_min_s,
                     "maximum": settings.duration_max_s, "description": "Seconds."},
        "type": {"type": "string", "enum": sorted(validation.VIDEO_TYPES)},
    }
    if settings.wechat_appid:
        create_fields["template_id"] = {
            "type": ["string", "null"], "pattern": validation.TEMPLATE_ID_PATTERN.pattern,
            "description": "A subscribe-message template the user granted "
                           "(wx.requestSubscribeMessage), notified once when the task "
                           "finishes. Needs a logged-in caller. null: none.",
        }
    else:
        # Without WECHAT_APPID the server sends no subscribe messages: a template is refused.
        create_fields["template_id"] = {
            "type": "null", "description": "This server sends no subscribe messages "
                                           "(WECHAT_APPID is not set)."}
    return {
        "VideoText": {
            "type": "string", "minLength": 1, "maxLength": settings.text_max_chars,
            "pattern": video_text_pattern(),
            "description": (
                f"Shown on the video: at most {settings.text_max_chars} characters as "
                "sent (the whitespace around it is then trimmed), not only whitespace; no "
                "control, format (bidi, zero-width), private-use or unassigned "
                "characters, and no emoji (the video fonts cannot show them)."),
        },
        "CreateTask": {
            "type": "object",
            "required": ["product_name", "theme", "duration", "type"],
            "additionalProperties": False,
            "properties": create_fields,
        },
        "Created": {
            "type": "object",
            "required": ["task_id", "status", "total_parts"],
            "additionalProperties": False,
            "properties": {"task_id": task_id, "status": status,
                           "total_parts": {"type": "integer", "minimum": 1}},
        },
        "Progress": {
            "type": "object",
            "required": ["task_id", "status", "progress", "current_part", "total_parts",
                         "video_url", "error_message", "error_code", "created_at",
                         "updated_at"],
            "additionalProperties": False,
            "properties": {
                "task_id": task_id,
                "status": status,
                "progress": {"type": "integer", "minimum": 0, "maximum": 100},
                "current_part": {"type": "integer", "minimum": 0,
                                 "description": "Parts finished."},
                "total_parts": {"type": "integer", "minimum": 1},
                "video_url": {"type": ["string", "null"],
                              "description": "Set once the task is completed."},
                "error_message": {"type": ["string", "null"]},
                "error_code": {
                    "enum": [*(code.value for code in tasks.FailureCode), None],
                    "description": "Why a failed task failed."},
                "created_at": {"type": "string", "format": "date-time"},
                "updated_at": {"type": "string", "format": "date-time"},
            },
        },
        "TaskPage": {
            "type": "object",
            "required": ["tasks", "next"],
            "additionalProperties": False,
            "properties": {
                "tasks": {"type": "array", "items": {"$ref": "#/components/schemas/Progress"}},
                "next": {"type": ["string", "null"],
                         "description": "The cursor of the next page; null on the last."},
            },
        },
        "Login": {
            "type": "object",
            "required": ["token", "expires_in"],
            "additionalProperties": False,
            "properties": {"token": {"type": "string"},
                           "expires_in": {"type": "integer", "minimum": 1,
                                          "description": "Seconds the token is valid."}},
        },
        "Dashboard": _dashboard_schema(),
    }


def _dashboard_schema() -> dict[str, Any]:
    # Imported here: the doctor loads in an API process only when it is asked for.
    from service.doctor import findings, snapshot

    verdicts = [level.value for level in findings.Level if level is not findings.Level.UNKNOWN]
    return {
        "type": "object",
        "required": ["taken_at", "verdict", "verdict_text", "points", "app_pool", "doctor"],
        "properties": {
            "taken_at": {"type": "string", "format": "date-time"},
            "verdict": {"type": "string", "enum": verdicts},
            "verdict_text": {"type": "string"},
            "points": {
                "type": "object", "required": list(snapshot.POINTS),
                "additionalProperties": False,
                "description": "What the charts plot; null where that part was unreadable.",
                "properties": {name: {"type": ["number", "null"]} for name in snapshot.POINTS},
            },
            "app_pool": {
                "type": "object", "required": ["pid", "stats"],
                "properties": {"pid": {"type": "integer"},
                               "stats": {"type": ["object", "null"],
                                         "description": "psycopg_pool's get_stats()",
                                         "additionalProperties": {"type": "integer"}}},
            },
            "doctor": {
                "type": "object", "description": "`video-tasks doctor --json`",
                "required": ["verdict", "exit_code", "checks", "recommendations",
                             "pgbouncer", "postgres", "queue"],
                "properties": {"verdict": {"type": "string", "enum": verdicts},
                               "checks": {"type": "array", "items": {"type": "object"}},
                               "recommendations": {"type": "array",
                                                   "items": {"type": "string"}}},
            },
        },
    }


def _security_schemes(settings: Settings) -> dict[str, Any]:
    return {
        "bearerAuth": {
            "type": "http", "scheme": "bearer",
            "description": "The token POST /api/login answers.",
        },
        "wxOpenid": {
            "type": "apiKey", "in": "header", "name": "X-WX-OPENID",
            "description": (
                "The caller's openid as WeChat Cloud Run's gateway sets it. Trusted only "
                "behind WeChat Cloud Run, with AUTH_TRUST_WX_OPENID_HEADER on: anywhere "
                "else anyone could send it. "
                + ("This server trusts it." if settings.auth_trust_wx_openid_header
                   else "This server does not: the header is ignored.")),
        },
        "metricsToken": {
            "type": "http", "scheme": "bearer",
            "description": "METRICS_TOKEN, for /metrics on the public port.",
        },
    }


def _caller_security(settings: Settings, *, anonymous: bool) -> list[dict[str, list[str]]]:
    """Who may call: a login token, X-WX-OPENID where it is trusted, and (`anonymous`)
    nobody in particular."""
    options: list[dict[str, list[str]]] = [{"bearerAuth": []}]
    if settings.auth_trust_wx_openid_header:
        options.append({"wxOpenid": []})
    if anonymous:
        options.append({})
    return options


# ---- text patterns --------------------------------------------------------------------

@functools.cache
def video_text_pattern() -> str:
    """The product names and themes validation._text accepts (tests/test_openapi.py
    compares the two over every character of the BMP), as a regular expression that
    reads the same in ECMA-262 (with the u flag, as JSON Schema means) and Python:
    whitespace around it (what str.strip removes), then a non-whitespace character,
    characters none of which is refused, and a non-whitespace one at the end.

    Refused characters above the BMP are excluded by a lookahead rather than by the
    classes: test generators (Hypothesis, under schemathesis) expand every code point of
    a class's ranges, and the unassigned planes are most of a million; a lookahead they
    skip, then filter by the whole pattern. Surrogates are left out: a JSON body cannot
    carry one (it is invalid JSON), and regex engines over UTF-8 cannot name them."""
    refused = {cp for cp in range(0x110000)
               if unicodedata.category(chr(cp)) in validation.REFUSED_CATEGORIES}
    refused.update(cp for low, high in validation.EMOJI_RANGES for cp in range(low, high + 1))
    refused.difference_update(_SURROGATES)
    space = _whitespace()
    bmp = {cp for cp in refused if cp <= 0xFFFF}
    astral = f"(?!{_char_class(refused - bmp)})"
    edge = astral + _char_class(bmp | space, negate=True)
    inner = astral + _char_class(bmp, negate=True)
    around = f"{_char_class(space)}*"
    return f"^{around}{edge}(?:(?:{inner})*{edge})?{around}$"


@functools.cache
def _whitespace() -> frozenset[int]:
    """What str.strip() removes."""
    return frozenset(cp for cp in range(0x110000) if chr(cp).isspace())


def _char_class(codepoints: set[int] | frozenset[int], *, negate: bool = False) -> str:
    ranges: list[list[int]] = []
    for cp in sorted(codepoints):
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    body = "".join(_char(low) if low == high else f"{_char(low)}-{_char(high)}"
                   for low, high in ranges)
    return f"[{'^' if negate else ''}{body}]"


def _char(cp: int) -> str:
    # \uXXXX reads the same in both dialects within the BMP; above it ECMA wants \u{...}
    # and Python \U..., so those are written as themselves.
    return f"\\u{cp:04X}" if cp < 0x10000 else chr(cp)
