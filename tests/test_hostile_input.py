"""Hostile input: every byte, header and field a client sends may be an attack. Each case
gets a 4xx in the one JSON error shape, names the field at fault, and changes nothing.
And a production configuration refuses the local stack's defaults."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from aiohttp import web

from ops.stack import free_port
from service import errors
from service.api import protocol
from service.api.app import create_app
from service.settings import Settings
from tests.test_content_safety import PRODUCTION_BASICS

GOOD = {"product_name": "高强度螺栓", "theme": "品质保证", "duration": 5, "type": "video"}


def body(**changes: object) -> bytes:
    return json.dumps({**GOOD, **changes}, ensure_ascii=True).encode()


# (raw body, expected status, code, field)
CASES = {
    "bidi override": (body(product_name="\u202e螺栓"), 400, "validation_error", "product_name"),
    "only zero-width spaces": (body(theme="\u200b\u200b\u200b"), 400, "validation_error",
                               "theme"),
    "lone surrogate": (b'{"product_name": "\\ud800", "theme": "t", "duration": 5, '
                       b'"type": "video"}', 400, "validation_error", "product_name"),
    "NUL": (body(product_name="螺\x00栓"), 400, "validation_error", "product_name"),
    "invalid UTF-8": (b'{"product_name": "\xff\xfe", "theme": "t", "duration": 5, '
                      b'"type": "video"}', 400, "invalid_json", "body"),
    "duplicate keys": (b'{"product_name": "a", "theme": "t", "duration": 5, "duration": 60, '
                       b'"type": "video"}', 400, "invalid_json", "duration"),
    "400 digits": (body()[:-1].replace(b'"duration": 5', b'"duration": ' + b"9" * 400) + b"}",
                   400, "validation_error", "duration"),
    "1e400": (body()[:-1].replace(b'"duration": 5', b'"duration": 1e400') + b"}", 400,
              "validation_error", "duration"),
    "NaN": (body()[:-1].replace(b'"duration": 5', b'"duration": NaN') + b"}", 400,
            "invalid_json", "body"),
    "deep nesting": (b"[" * 5000 + b"]" * 5000, 400, "invalid_json", "body"),
    "status from the client": (body(status="completed"), 400, "validation_error", "status"),
    "video_url from the client": (body(video_url="http://evil/x.mp4"), 400,
                                  "validation_error", "video_url"),
    "empty body": (b"", 400, "invalid_json", "body"),
    "empty name": (body(product_name="   "), 400, "validation_error", "product_name"),
    "not an object": (b"[1, 2]", 400, "validation_error", "body"),
    # Found by schemathesis: an unhashable type was a 500.
    "type an object": (body(type={}), 400, "validation_error", "type"),
    "type a list": (body(type=[None]), 400, "validation_error", "type"),
}


@pytest.mark.asyncio
@pytest.mark.parametrize("case", sorted(CASES))
async def test_hostile_bodies_are_refused_in_the_one_shape_and_change_nothing(
        case, http, api_url, direct: psycopg.Connection):
    raw, status, code, field = CASES[case]
    async with http.post(f"{api_url}/api/generate-video", data=raw,
                         headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == status, await resp.text()
        assert resp.content_type == "application/json"
        error = (await resp.json())["error"]
    assert (error["code"], error.get("field")) == (code, field), error
    assert "Traceback" not in error["message"]
    assert direct.execute("SELECT count(*) FROM video_generation_tasks").fetchone()[0] == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("path", [
    "/media/videos/%252e%252e%252fetc%252fpasswd", "/media/videos/..%2F..%2Fetc%2Fpasswd",
    "/media/videos/nothing.mp4", "/media/videos/00000000-0000-0000-0000-000000000000.mp4",
    "/media/parts/x", "/api/progress/..%2F..", "/api/progress/%00"])
async def test_path_tricks_are_json_404s_or_400s(path, http, api_url):
    async with http.get(f"{api_url}{path}") as resp:
        assert resp.status in (400, 404), path
        assert resp.content_type == "application/json", path
        assert (await resp.json())["error"]["code"] in {"not_found", "validation_error",
                                                         "task_not_found"}


@pytest.mark.asyncio
async def test_a_wrong_content_type_names_the_header(http, api_url):
    async with http.post(f"{api_url}/api/generate-video", data=body(),
                         headers={"Content-Type": "text/plain"}) as resp:
        assert resp.status == 415
        assert (await resp.json())["error"]["field"] == "Content-Type"


def test_production_refuses_the_local_defaults_and_names_each_setting():
    with pytest.raises(errors.ConfigError) as refused:
        Settings(environment="production", content_check=False)
    message = str(refused.value)
    for name in ("DATABASE_URL", "DATABASE_DIRECT_URL", "DATABASE_OWNER_URL",
                 "PGBOUNCER_ADMIN_URL",
                 "AUTH_TOKEN_SECRET", "PUBLIC_BASE_URL"):
        assert f"set {name}" in message, message
    local_password = {**PRODUCTION_BASICS, "database_url":
                      "postgresql://app:app-local-password@pgbouncer:6432/videotasks"}
    with pytest.raises(errors.ConfigError, match="DATABASE_URL uses a local stack password"):
        Settings(environment="production", content_check=False, **local_password)
    ready = Settings(environment="production", content_check=False, **PRODUCTION_BASICS)
    assert ready.auth_required and ready.content_check_fail_open is False
    # No secret in the error message.
    with pytest.raises(errors.ConfigError) as refused:
        Settings(environment="production", content_check=False,
                 **{**PRODUCTION_BASICS, "auth_token_secret": "too-short-secret"})
    assert "too-short-secret" not in str(refused.value)


# ---- the HTTP layer: what aiohttp answers itself, and slow clients ---------------------

READ_TIMEOUT_S = 0.5


@pytest.fixture
async def slow_api(settings: Settings) -> AsyncIterator[tuple[str, int]]:
    """The API with a short read deadline, served as `video-tasks api` serves it."""
    settings = settings.replace(metrics_port=0, request_read_timeout_s=READ_TIMEOUT_S)
    runner = protocol.ApiRunner(create_app(settings), settings)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield "127.0.0.1", port
    await runner.cleanup()


async def exchange(address: tuple[str, int], *parts: bytes, pause_s: float = 0.0) -> bytes:
    """Send `parts` (pausing between them), then read until the server closes."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        for part in parts:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(pause_s)
        return await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()


def parse(raw: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    head, _, payload = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, json.loads(payload)


@pytest.mark.asyncio
async def test_an_oversized_header_is_a_json_431_that_quotes_nothing(slow_api, caplog):
    secretish = b"X" * 10_000
    raw = await exchange(slow_api, b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + secretish
                         + b"\r\n\r\n")
    status, headers, answer = parse(raw)
    assert (status, headers["content-type"]) == (431, "application/json")
    assert answer["error"]["code"] == "headers_too_large"
    assert b"XXXXXXXX" not in raw
    assert "XXXXXXXX" not in caplog.text


@pytest.mark.asyncio
async def test_too_many_headers_is_a_json_431(slow_api):
    headers = b"".join(b"X-H%d: v\r\n" % n for n in range(200))
    status, _headers, answer = parse(await exchange(
        slow_api, b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + headers + b"\r\n"))
    assert (status, answer["error"]["code"]) == (431, "headers_too_large")


@pytest.mark.asyncio
@pytest.mark.parametrize("request_line", [b"\x16\x03\x01\x02\x00\x01\x00", b"GET / HTTP/9.9",
                                          b"GET /\x00 HTTP/1.1", b"BREW /pot HTTP/1.1"])
async def test_what_is_not_http_gets_a_json_4xx(slow_api, request_line):
    status, _headers, answer = parse(await exchange(slow_api, request_line + b"\r\n\r\n"))
    assert 400 <= status < 500
    assert set(answer["error"]) <= {"code", "message", "field"}


@pytest.mark.asyncio
async def test_headers_that_trickle_in_are_cut_off(slow_api):
    started = time.monotonic()
    raw = await exchange(slow_api, b"GET /healthz HTTP/1.1\r\n", b"Host: t\r\n", b"X-A: 1\r\n",
                         pause_s=READ_TIMEOUT_S / 2)
    status, headers, answer = parse(raw)
    assert (status, answer["error"]["code"]) == (408, "request_timeout")
    assert headers["connection"] == "close"
    assert time.monotonic() - started < 5


@pytest.mark.asyncio
async def test_a_body_that_trickles_in_is_cut_off_and_stores_nothing(slow_api, direct):
    payload = body()
    head = (b"POST /api/generate-video HTTP/1.1\r\nHost: t\r\nContent-Type: application/json"
            b"\r\nContent-Length: %d\r\n\r\n" % len(payload))
    raw = await exchange(slow_api, head, payload[:5], payload[5:10], payload[10:15],
                         pause_s=READ_TIMEOUT_S / 2)
    status, headers, answer = parse(raw)
    assert (status, answer["error"]["code"]) == (408, "request_timeout")
    assert headers["connection"] == "close"
    assert direct.execute("SELECT count(*) FROM video_generation_tasks").fetchone()[0] == 0


@pytest.mark.asyncio
async def test_a_prompt_client_on_the_same_server_is_not_held_up(slow_api):
    """The deadline is per connection: a keep-alive client past it is still served."""
    reader, writer = await asyncio.open_connection(*slow_api)
    try:
        for _ in range(2):
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            assert head.startswith(b"HTTP/1.1 200")
            length = int(re.search(rb"Content-Length: (\d+)", head, re.I)[1])  # type: ignore[index]
            await reader.readexactly(length)
            await asyncio.sleep(READ_TIMEOUT_S * 2)
    finally:
        writer.close()
