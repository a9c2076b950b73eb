"""The HTTP contract the mini-program relies on, and every validation rule."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import psycopg
import psycopg.sql
import pytest
from psycopg.conninfo import conninfo_to_dict

from service.api.app import POOL_KEY
from tests.helpers import WRITE_UP_REQUEST, create_task

pytestmark = pytest.mark.asyncio


def count_tasks(direct) -> int:
    return direct.execute("SELECT count(*) FROM video_generation_tasks").fetchone()[0]


async def test_create_returns_202_with_task_id_status_and_parts(http, api_url):
    async with http.post(f"{api_url}/api/generate-video", json=WRITE_UP_REQUEST) as resp:
        assert resp.status == 202
        assert resp.content_type == "application/json"
        body = await resp.json()
    assert set(body) == {"task_id", "status", "total_parts"}
    assert body["status"] == "pending"
    assert body["total_parts"] == 1
    assert resp.headers["Location"] == f"/api/progress/{body['task_id']}"
    uuid.UUID(body["task_id"])


async def test_created_task_is_stored_and_its_progress_readable(http, api_url, direct):
    created = await create_task(http, api_url, {**WRITE_UP_REQUEST, "duration": 12})
    row = direct.execute(
        "SELECT product_name, theme, duration, type, status, total_parts "
        "FROM video_generation_tasks WHERE task_id = %s", [created["task_id"]]).fetchone()
    assert row == ("高强度螺栓", "品质保证", 12, "video", "pending", 3)
    async with http.get(f"{api_url}/api/progress/{created['task_id']}") as resp:
        assert resp.status == 200
        progress = await resp.json()
    assert progress["task_id"] == created["task_id"]
    assert progress["status"] == "pending"
    assert progress["progress"] == 0
    assert progress["current_part"] == 0
    assert progress["total_parts"] == 3
    assert progress["video_url"] is None
    assert progress["error_message"] is None
    assert progress["created_at"] and progress["updated_at"]


@pytest.mark.parametrize(("duration", "parts"), [(5, 1), (6, 2), (10, 2), (60, 12)])
async def test_total_parts_is_duration_over_part_length_rounded_up(http, api_url, duration,
                                                                  parts):
    created = await create_task(http, api_url, {**WRITE_UP_REQUEST, "duration": duration})
    assert created["total_parts"] == parts


@pytest.mark.parametrize(("body", "field"), [
    ({**WRITE_UP_REQUEST, "product_name": ""}, "product_name"),
    ({**WRITE_UP_REQUEST, "product_name": "   "}, "product_name"),
    ({**WRITE_UP_REQUEST, "product_name": "x" * 101}, "product_name"),
    ({**WRITE_UP_REQUEST, "product_name": 42}, "product_name"),
    ({**WRITE_UP_REQUEST, "product_name": "bolt\u0000"}, "product_name"),
    ({**WRITE_UP_REQUEST, "product_name": "bolt\u0007"}, "product_name"),
    # Emoji: the video fonts have no glyphs for them.
    ({**WRITE_UP_REQUEST, "product_name": "螺栓\U0001F529"}, "product_name"),
    ({**WRITE_UP_REQUEST, "theme": "品质\u2764\ufe0f"}, "theme"),
    ({**WRITE_UP_REQUEST, "theme": "👍🏽"}, "theme"),
    ({k: v for k, v in WRITE_UP_REQUEST.items() if k != "product_name"}, "product_name"),
    ({**WRITE_UP_REQUEST, "theme": None}, "theme"),
    ({**WRITE_UP_REQUEST, "theme": ["a"]}, "theme"),
    ({k: v for k, v in WRITE_UP_REQUEST.items() if k != "duration"}, "duration"),
    ({**WRITE_UP_REQUEST, "duration": 4}, "duration"),
    ({**WRITE_UP_REQUEST, "duration": 61}, "duration"),
    ({**WRITE_UP_REQUEST, "duration": 0}, "duration"),
    ({**WRITE_UP_REQUEST, "duration": -5}, "duration"),
    ({**WRITE_UP_REQUEST, "duration": 5.5}, "duration"),
    ({**WRITE_UP_REQUEST, "duration": "5"}, "duration"),
    ({**WRITE_UP_REQUEST, "duration": True}, "duration"),
    ({**WRITE_UP_REQUEST, "duration": 10**30}, "duration"),
    ({**WRITE_UP_REQUEST, "type": "image"}, "type"),
    ({**WRITE_UP_REQUEST, "type": None}, "type"),
    ({k: v for k, v in WRITE_UP_REQUEST.items() if k != "type"}, "type"),
    ([WRITE_UP_REQUEST], "body"),
    ("just a string", "body"),
])
async def test_invalid_create_is_400_naming_the_field_and_stores_nothing(http, api_url, direct,
                                                                         body, field):
    async with http.post(f"{api_url}/api/generate-video", json=body) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["code"] == "validation_error"
    assert error["field"] == field
    assert field in error["message"] or field == "body"
    # The test's own database: nothing else writes to it.
    assert count_tasks(direct) == 0


async def test_whole_number_float_duration_is_accepted(http, api_url):
    created = await create_task(http, api_url, {**WRITE_UP_REQUEST, "duration": 10.0})
    assert created["total_parts"] == 2


@pytest.mark.parametrize("raw", [b"{", b"not json", b"", b'{"a": NaN}',
                                 b'{"product_name": "\\ud800"}', b"\xff\xfe"])
async def test_malformed_json_is_400(http, api_url, direct, raw):
    async with http.post(f"{api_url}/api/generate-video", data=raw,
                         headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["code"] in {"invalid_json", "validation_error"}
    assert count_tasks(direct) == 0


async def test_wrong_content_type_is_415(http, api_url):
    async with http.post(f"{api_url}/api/generate-video", data="product_name=x",
                         headers={"Content-Type": "application/x-www-form-urlencoded"}) as resp:
        assert resp.status == 415
        assert (await resp.json())["error"]["code"] == "unsupported_media_type"


async def test_oversized_body_is_413_json(http, api_url, direct):
    body = {**WRITE_UP_REQUEST, "padding": "x" * 100_000}
    async with http.post(f"{api_url}/api/generate-video", json=body) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "payload_too_large"
    assert count_tasks(direct) == 0


async def test_unknown_task_is_404_json(http, api_url):
    async with http.get(f"{api_url}/api/progress/{uuid.uuid4()}") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "task_not_found"


@pytest.mark.parametrize("task_id", ["123", "not-a-uuid", "' OR 1=1 --", "%00", "x" * 300])
async def test_malformed_task_id_is_400_json(http, api_url, task_id):
    async with http.get(f"{api_url}/api/progress/{task_id}") as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["field"] == "task_id"


async def test_unknown_route_and_wrong_method_are_json(http, api_url):
    async with http.get(f"{api_url}/api/nothing-here") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "not_found"
    async with http.get(f"{api_url}/api/generate-video") as resp:
        assert resp.status == 405
        assert (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_health_and_readiness(http, api_url):
    async with http.get(f"{api_url}/healthz") as resp:
        assert resp.status == 200
    async with http.get(f"{api_url}/readyz") as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "ready"


async def test_same_idempotency_key_and_body_returns_the_same_task(http, api_url, direct):
    key = f"retry-{uuid.uuid4()}"
    first = await create_task(http, api_url, WRITE_UP_REQUEST, **{"Idempotency-Key": key})
    async with http.post(f"{api_url}/api/generate-video", json=WRITE_UP_REQUEST,
                         headers={"Idempotency-Key": key}) as resp:
        assert resp.status == 202
        again = await resp.json()
        assert resp.headers["Idempotent-Replayed"] == "true"
    assert again["task_id"] == first["task_id"]
    stored = direct.execute("SELECT count(*) FROM video_generation_tasks "
                            "WHERE idempotency_key = %s", [key]).fetchone()[0]
    assert stored == 1


async def test_same_idempotency_key_with_another_body_is_409(http, api_url):
    key = f"retry-{uuid.uuid4()}"
    await create_task(http, api_url, WRITE_UP_REQUEST, **{"Idempotency-Key": key})
    async with http.post(f"{api_url}/api/generate-video", json={**WRITE_UP_REQUEST, "duration": 10},
                         headers={"Idempotency-Key": key}) as resp:
        assert resp.status == 409
        assert (await resp.json())["error"]["code"] == "idempotency_key_reused"


async def test_concurrent_requests_with_one_idempotency_key_make_one_task(http, api_url, direct):
    key = f"burst-{uuid.uuid4()}"

    async def post() -> str:
        async with http.post(f"{api_url}/api/generate-video", json=WRITE_UP_REQUEST,
                             headers={"Idempotency-Key": key}) as resp:
            assert resp.status == 202
            return (await resp.json())["task_id"]

    ids = await asyncio.gather(*(post() for _ in range(20)))
    assert len(set(ids)) == 1
    stored = direct.execute("SELECT count(*) FROM video_generation_tasks "
                            "WHERE idempotency_key = %s", [key]).fetchone()[0]
    assert stored == 1


# What a 500 must never show: the exception, the SQL, the schema, the stack, the password.
INTERNALS = ("Traceback", 'File "', "psycopg", "InsufficientPrivilege", "permission denied",
             "video_generation_tasks", "SELECT", "INSERT", "app-local-password")


async def test_an_unexpected_error_is_a_500_in_the_one_shape_without_internals(
        http, api_url, direct, owner, settings, caplog):
    """Take the app role's rights on the tasks table away (in this test's own database):
    every statement then fails with an error the handlers do not expect."""
    created = await create_task(http, api_url)
    app_role = psycopg.conninfo.conninfo_to_dict(settings.database_direct_url)["user"]
    owner.execute(psycopg.sql.SQL("REVOKE ALL ON video_generation_tasks FROM {}").format(
        psycopg.sql.Identifier(app_role)))
    caplog.set_level(logging.ERROR, logger="service.api.app")
    requests = [("POST", "/api/generate-video", WRITE_UP_REQUEST),
                ("GET", f"/api/progress/{created['task_id']}", None)]
    for method, path, body in requests:
        async with http.request(method, f"{api_url}{path}", json=body) as resp:
            text = await resp.text()
            assert resp.status == 500, text
            assert resp.content_type == "application/json"
        assert (await resp.json()) == {"error": {"code": "internal_error",
                                                 "message": "internal server error"}}
        leaked = [word for word in INTERNALS if word in text]
        assert not leaked, (leaked, text)
    # The operator gets the whole story in the log instead, traceback included.
    logged = [r for r in caplog.records if r.name == "service.api.app" and r.exc_info]
    assert len(logged) == len(requests), [r.getMessage() for r in caplog.records]
    assert all(isinstance(r.exc_info[1], psycopg.errors.InsufficientPrivilege)
               for r in logged)


async def wait_until(predicate, what: str, timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"not {what} after {timeout_s} s"
        await asyncio.sleep(0.01)


async def open_partial_post(api_url: str) -> asyncio.StreamWriter:
    """A client that announces 1000 bytes of body, sends 5 and then waits."""
    host, port = api_url.removeprefix("http://").split(":")
    _reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /api/generate-video HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"pro")
    await writer.drain()
    return writer


async def test_clients_gone_mid_body_hold_no_pool_connection_and_store_nothing(
        http, api, settings, direct):
    """More half-sent bodies than the API's pool has connections: while they hang, whole
    requests are still served (a body is read before a connection is taken); once their
    clients are gone, the server holds none of their connections and nothing of theirs
    was stored."""
    hanging = [await open_partial_post(api.url) for _ in range(settings.app_pool_max * 2)]
    server = api.runner.server
    await wait_until(lambda: len(server.connections) == len(hanging), "the server accepted")
    handlers = set(server.connections)
    t0 = time.monotonic()
    answers = await asyncio.gather(*(create_task(http, api.url, {**WRITE_UP_REQUEST,
                                                                  "theme": f"whole {n}"})
                                     for n in range(settings.app_pool_max + 1)))
    assert time.monotonic() - t0 < settings.pool_timeout_s, "whole requests waited"
    for writer in hanging:
        writer.close()
        await writer.wait_closed()
    await wait_until(lambda: not handlers & set(server.connections),
                     "the server let go of the half-sent requests")
    stats = api.app[POOL_KEY].get_stats()
    assert stats["requests_waiting"] == 0
    assert stats["pool_available"] == stats["pool_size"], stats
    stored = direct.execute("SELECT theme FROM video_generation_tasks ORDER BY theme").fetchall()
    assert [row[0] for row in stored] == sorted(f"whole {n}" for n in range(len(answers)))
    # And the API goes on serving.
    async with http.get(f"{api.url}/api/progress/{answers[0]['task_id']}") as resp:
        assert resp.status == 200


def pgbouncer_queries(settings) -> int:
    """Statements PgBouncer has passed on to the test's own database."""
    name = conninfo_to_dict(settings.database_url)["dbname"]
    with psycopg.connect(settings.pgbouncer_admin_url, autocommit=True,
                         cursor_factory=psycopg.ClientCursor) as console:
        cur = console.execute("SHOW STATS")
        names = [column.name for column in cur.description]
        counts = [row[names.index("total_query_count")] for row in cur
                  if row[names.index("database")] == name]
    assert len(counts) == 1, f"PgBouncer has no stats for {name}"
    return counts[0]


async def test_concurrent_polls_each_get_their_own_row_from_shared_statements(http, api_url,
                                                                              settings):
    known = [await create_task(http, api_url, {**WRITE_UP_REQUEST, "duration": 5 + i % 10})
             for i in range(40)]
    unknown = [str(uuid.uuid4()) for _ in range(20)]
    polls = [item["task_id"] for item in known] * 3 + unknown

    async def poll(task_id: str) -> tuple[str, int, dict]:
        async with http.get(f"{api_url}/api/progress/{task_id}") as resp:
            return task_id, resp.status, await resp.json()

    before = pgbouncer_queries(settings)
    answers = await asyncio.gather(*(poll(task_id) for task_id in polls))
    statements = pgbouncer_queries(settings) - before
    expected_parts = {item["task_id"]: item["total_parts"] for item in known}
    for task_id, status, body in answers:
        if task_id in expected_parts:
            assert status == 200
            assert body["task_id"] == task_id
            assert body["total_parts"] == expected_parts[task_id]
        else:
            assert status == 404
            assert body["error"]["code"] == "task_not_found"
    # Polls that arrive together share statements (PgBouncer counts every statement).
    assert 1 <= statements < len(polls), (statements, len(polls))
