"""The HTTP contract the mini-program relies on, and every validation rule."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import pytest

from tests.helpers import SEED_REQUEST, create_task

pytestmark = pytest.mark.asyncio


def count_tasks(direct) -> int:
    return direct.execute("SELECT count(*) FROM video_generation_tasks").fetchone()[0]


async def test_create_returns_202_with_task_id_status_and_parts(http, api_url):
    async with http.post(f"{api_url}/api/generate-video", json=SEED_REQUEST) as resp:
        assert resp.status == 202
        assert resp.content_type == "application/json"
        body = await resp.json()
    assert set(body) == {"task_id", "status", "total_parts"}
    assert body["status"] == "pending"
    assert body["total_parts"] == 1
    assert resp.headers["Location"] == f"/api/progress/{body['task_id']}"
    uuid.UUID(body["task_id"])


async def test_created_task_is_stored_and_its_progress_readable(http, api_url, direct):
    created = await create_task(http, api_url, {**SEED_REQUEST, "duration": 12})
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
    created = await create_task(http, api_url, {**SEED_REQUEST, "duration": duration})
    assert created["total_parts"] == parts


@pytest.mark.parametrize(("body", "field"), [
    ({**SEED_REQUEST, "product_name": ""}, "product_name"),
    ({**SEED_REQUEST, "product_name": "   "}, "product_name"),
    ({**SEED_REQUEST, "product_name": "x" * 101}, "product_name"),
    ({**SEED_REQUEST, "product_name": 42}, "product_name"),
    ({**SEED_REQUEST, "product_name": "bolt\u0000"}, "product_name"),
    ({**SEED_REQUEST, "product_name": "bolt\u0007"}, "product_name"),
    # Emoji: the video fonts have no glyphs for them.
    ({**SEED_REQUEST, "product_name": "螺栓\U0001F529"}, "product_name"),
    ({**SEED_REQUEST, "theme": "品质\u2764\ufe0f"}, "theme"),
    ({**SEED_REQUEST, "theme": "👍🏽"}, "theme"),
    ({k: v for k, v in SEED_REQUEST.items() if k != "product_name"}, "product_name"),
    ({**SEED_REQUEST, "theme": None}, "theme"),
    ({**SEED_REQUEST, "theme": ["a"]}, "theme"),
    ({k: v for k, v in SEED_REQUEST.items() if k != "duration"}, "duration"),
    ({**SEED_REQUEST, "duration": 4}, "duration"),
    ({**SEED_REQUEST, "duration": 61}, "duration"),
    ({**SEED_REQUEST, "duration": 0}, "duration"),
    ({**SEED_REQUEST, "duration": -5}, "duration"),
    ({**SEED_REQUEST, "duration": 5.5}, "duration"),
    ({**SEED_REQUEST, "duration": "5"}, "duration"),
    ({**SEED_REQUEST, "duration": True}, "duration"),
    ({**SEED_REQUEST, "duration": 10**30}, "duration"),
    ({**SEED_REQUEST, "type": "image"}, "type"),
    ({**SEED_REQUEST, "type": None}, "type"),
    ({k: v for k, v in SEED_REQUEST.items() if k != "type"}, "type"),
    ([SEED_REQUEST], "body"),
    ("just a string", "body"),
])
async def test_invalid_create_is_400_naming_the_field_and_stores_nothing(http, api_url, direct,
                                                                         body, field):
    before = count_tasks(direct)
    async with http.post(f"{api_url}/api/generate-video", json=body) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["code"] == "validation_error"
    assert error["field"] == field
    assert field in error["message"] or field == "body"
    assert count_tasks(direct) == before


async def test_whole_number_float_duration_is_accepted(http, api_url):
    created = await create_task(http, api_url, {**SEED_REQUEST, "duration": 10.0})
    assert created["total_parts"] == 2


@pytest.mark.parametrize("raw", [b"{", b"not json", b"", b'{"a": NaN}',
                                 b'{"product_name": "\\ud800"}', b"\xff\xfe"])
async def test_malformed_json_is_400(http, api_url, direct, raw):
    before = count_tasks(direct)
    async with http.post(f"{api_url}/api/generate-video", data=raw,
                         headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["code"] in {"invalid_json", "validation_error"}
    assert count_tasks(direct) == before


async def test_wrong_content_type_is_415(http, api_url):
    async with http.post(f"{api_url}/api/generate-video", data="product_name=x",
                         headers={"Content-Type": "application/x-www-form-urlencoded"}) as resp:
        assert resp.status == 415
        assert (await resp.json())["error"]["code"] == "unsupported_media_type"


async def test_oversized_body_is_413_json(http, api_url, direct):
    before = count_tasks(direct)
    body = {**SEED_REQUEST, "padding": "x" * 100_000}
    async with http.post(f"{api_url}/api/generate-video", json=body) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "payload_too_large"
    assert count_tasks(direct) == before


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
    first = await create_task(http, api_url, SEED_REQUEST, **{"Idempotency-Key": key})
    async with http.post(f"{api_url}/api/generate-video", json=SEED_REQUEST,
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
    await create_task(http, api_url, SEED_REQUEST, **{"Idempotency-Key": key})
    async with http.post(f"{api_url}/api/generate-video", json={**SEED_REQUEST, "duration": 10},
                         headers={"Idempotency-Key": key}) as resp:
        assert resp.status == 409
        assert (await resp.json())["error"]["code"] == "idempotency_key_reused"


async def test_concurrent_requests_with_one_idempotency_key_make_one_task(http, api_url, direct):
    key = f"burst-{uuid.uuid4()}"

    async def post() -> str:
        async with http.post(f"{api_url}/api/generate-video", json=SEED_REQUEST,
                             headers={"Idempotency-Key": key}) as resp:
            assert resp.status == 202
            return (await resp.json())["task_id"]

    ids = await asyncio.gather(*(post() for _ in range(20)))
    assert len(set(ids)) == 1
    stored = direct.execute("SELECT count(*) FROM video_generation_tasks "
                            "WHERE idempotency_key = %s", [key]).fetchone()[0]
    assert stored == 1


async def test_errors_never_carry_tracebacks(http, api_url):
    async with http.post(f"{api_url}/api/generate-video", data=b"\x00" * 10,
                         headers={"Content-Type": "application/json"}) as resp:
        text = await resp.text()
    assert "Traceback" not in text
    assert 'File "' not in text


async def test_client_disconnect_mid_body_leaves_service_healthy(api_url):
    host, port = api_url.removeprefix("http://").split(":")
    _reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /api/generate-video HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"pro")
    await writer.drain()
    writer.close()
    async with aiohttp.ClientSession() as session, session.get(f"{api_url}/healthz") as resp:
        assert resp.status == 200


def pgbouncer_queries(settings) -> int:
    import psycopg

    with psycopg.connect(settings.pgbouncer_admin_url, autocommit=True,
                         cursor_factory=psycopg.ClientCursor) as console:
        cur = console.execute("SHOW STATS")
        names = [column.name for column in cur.description]
        return sum(row[names.index("total_query_count")] for row in cur
                   if row[names.index("database")] == "videotasks")


async def test_concurrent_polls_each_get_their_own_row_from_shared_statements(http, api_url,
                                                                              settings):
    known = [await create_task(http, api_url, {**SEED_REQUEST, "duration": 5 + i % 10})
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
    assert statements < len(polls), (statements, len(polls))
