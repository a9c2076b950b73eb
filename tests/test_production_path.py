"""The production path: AI clips from Ark, objects in S3, resumable from the parts ledger.

Real processes against local servers that speak the real protocols: the API and workers
run as `python -m service ...` with VIDEO_PROVIDER=ark against the fake Ark server
(tests/fakes/ark.py) and STORAGE_BACKEND=s3 against moto's S3 server on loopback.
"""

from __future__ import annotations

import asyncio
import io
import signal
import time
import uuid
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import psycopg
import pytest

from ops.stack import free_port
from tests.fakes.ark import FakeArk
from tests.fakes.s3 import MotoS3
from tests.helpers import WRITE_UP_REQUEST, create_task, wait_for_status

pytestmark = pytest.mark.asyncio


@pytest.fixture
def ark_s3(fake_ark: FakeArk, moto_s3: MotoS3) -> dict[str, Any]:
    """Settings of the API and workers for Ark + S3, with short polls."""
    fake_ark.reset()
    return {"video_provider": "ark", "ark_base_url": fake_ark.base_url,
            "ark_api_key": "test-ark-key", "ark_poll_interval_s": 0.1,
            **moto_s3.settings_overrides()}


def unique(name: str) -> str:
    """A product name no other test uses, so the fake's counts by prompt are this test's."""
    return f"{name} {uuid.uuid4().hex[:6]}"


def ledger(direct: psycopg.Connection, task_id: str) -> list[dict[str, Any]]:
    cur = direct.execute(
        "SELECT part_index, provider, state, remote_task_id, object_key, usage_tokens, "
        "creates FROM video_task_parts WHERE task_id = %s ORDER BY part_index", [task_id])
    names = [d.name for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


async def wait_ledger(direct: psycopg.Connection, task_id: str, predicate, timeout_s: float,
                      what: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        parts = ledger(direct, task_id)
        if predicate(parts):
            return parts
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout_s:.0f} s: {parts}")
        await asyncio.sleep(0.05)


def probe(data: bytes) -> tuple[str, tuple[int, int], Fraction, int]:
    """(codec, (width, height), duration in seconds, frames) of an MP4."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video=0))
        return (stream.codec_context.name, (stream.width, stream.height),
                Fraction(container.duration, 1_000_000), frames)


async def test_write_up_example_through_ark_and_s3_ends_completed_with_a_playable_video(
        processes, http, pool, direct, fake_ark, moto_s3, ark_s3):
    # Short-lived presigned URLs, so the test sees progress sign a fresh one.
    api = processes.start_api(**ark_s3, s3_presign_ttl_s=2)
    processes.start_worker(**ark_s3)
    request = {**WRITE_UP_REQUEST, "product_name": unique("高强度螺栓"), "duration": 12}
    created = await create_task(http, api.url, request)
    row = await wait_for_status(pool, created["task_id"], {"completed", "failed"}, 90)
    assert row["status"] == "completed", row

    async with http.get(f"{api.url}/api/progress/{created['task_id']}") as resp:
        progress = await resp.json()
    assert progress["status"] == "completed" and progress["progress"] == 100
    # The object's URL: a presigned GET against the S3 server, not the API's /media.
    assert progress["video_url"].startswith(moto_s3.endpoint_url), progress
    assert "X-Amz-Signature=" in progress["video_url"]
    async with http.get(progress["video_url"]) as resp:
        assert resp.status == 200
        assert resp.content_type == "video/mp4"
        fetched = await resp.read()
    stored = moto_s3.client().get_object(Bucket=moto_s3.bucket,
                                         Key=row["video_key"])["Body"].read()
    assert fetched == stored
    # Reused while it has at least half its life left, then signed anew.
    async with http.get(f"{api.url}/api/progress/{created['task_id']}") as resp:
        assert (await resp.json())["video_url"] == progress["video_url"]
    await asyncio.sleep(1.2)
    async with http.get(f"{api.url}/api/progress/{created['task_id']}") as resp:
        fresh = (await resp.json())["video_url"]
    assert fresh != progress["video_url"] and "X-Amz-Expires=2" in fresh
    async with http.get(fresh) as resp:
        assert await resp.read() == stored

    # The fake's clips are 360x640 at 24/16/30 fps: the merge normalised them.
    codec, size, duration_s, frames = probe(fetched)
    assert codec == "h264" and size == (720, 1280)
    assert abs(duration_s - 12) < Fraction(1, 5)
    assert frames == 12 * 25
    # One remote task per part, each recorded with its id, object and cost.
    parts = ledger(direct, created["task_id"])
    assert [p["state"] for p in parts] == ["stored"] * 3
    assert all(p["remote_task_id"] and p["usage_tokens"] and p["creates"] == 1 for p in parts)
    assert fake_ark.count_creates(request["product_name"]) == 3
    keys = {o["Key"] for o in moto_s3.client().list_objects_v2(
        Bucket=moto_s3.bucket, Prefix=f"parts/{created['task_id']}/")["Contents"]}
    assert keys == {p["object_key"] for p in parts}
    # /media is not served when the videos live in S3.
    async with http.get(f"{api.url}/media/videos/{created['task_id']}.mp4") as resp:
        assert resp.status == 404


async def test_a_worker_killed_mid_task_is_resumed_elsewhere_without_creating_a_part_again(
        processes, http, pool, direct, fake_ark, ark_s3, tmp_path: Path):
    """Two workers with their own work directories (two hosts): the second finishes the
    task from the ledger and the objects, polling the part the first had created."""
    product = unique("保温杯")
    # Slow remote tasks, so the kill lands while a created part is still running.
    fake_ark.when(product, running_s=1.5)
    api = processes.start_api(**ark_s3)
    first = processes.start_worker(**ark_s3, work_dir=tmp_path / "host-a")
    created = await create_task(http, api.url, {**WRITE_UP_REQUEST, "product_name": product,
                                                "duration": 15})
    task_id = created["task_id"]
    parts = await wait_ledger(
        direct, task_id,
        lambda ps: len(ps) == 2 and ps[0]["state"] == "stored" and ps[1]["state"] == "created",
        60, "part 1 stored and part 2 created")
    first.signal(signal.SIGKILL)
    polled_remote_id = parts[1]["remote_task_id"]

    processes.start_worker(**ark_s3, work_dir=tmp_path / "host-b")
    row = await wait_for_status(pool, task_id, {"completed", "failed"}, 90)
    assert row["status"] == "completed", row
    assert row["attempts"] == 2, row
    final = ledger(direct, task_id)
    assert [p["state"] for p in final] == ["stored"] * 3
    # The part the first worker had created was polled, not created again...
    assert final[1]["remote_task_id"] == polled_remote_id
    assert [p["creates"] for p in final] == [1, 1, 1]
    # ...and the provider's own count agrees: one remote task per part.
    assert fake_ark.count_creates(product) == 3
    # Host A's scratch files are its own; host B removed its own when done.
    assert not list((tmp_path / "host-b").glob(f"{task_id}*"))


async def test_content_rejected_by_the_provider_fails_the_task_at_once(
        processes, http, pool, direct, fake_ark, ark_s3):
    product = unique("违规商品")
    fake_ark.when(product, reject_create="InputTextSensitiveContentDetected")
    api = processes.start_api(**ark_s3)
    processes.start_worker(**ark_s3)
    created = await create_task(http, api.url, {**WRITE_UP_REQUEST, "product_name": product})
    row = await wait_for_status(pool, created["task_id"], {"completed", "failed"}, 60)
    assert row["status"] == "failed", row
    # No retries: the first attempt ended it, with a sentence a person can read.
    assert row["attempts"] == 1
    assert "审核" in row["error_message"], row
    assert fake_ark.count_creates(product) == 0
    assert [p["state"] for p in ledger(direct, created["task_id"])] == ["failed"]
    # The user learns it as from WeChat's own check: the code content_rejected.
    async with http.get(f"{api.url}/api/progress/{created['task_id']}") as resp:
        answer = await resp.json()
    assert (answer["status"], answer["error_code"]) == ("failed", "content_rejected")
    assert "审核" in answer["error_message"]


async def test_a_lost_create_answer_is_never_resent_and_its_duplicate_is_counted(
        processes, http, pool, direct, fake_ark, ark_s3):
    """Ark made the task but the answer never arrived: the attempt fails without resending,
    the part stays "creating", and the next attempt creates again, counted as a possible
    duplicate in the ledger and in the worker's metrics."""
    fake_ark.drop_next_creates = 1
    product = unique("蓝牙耳机")
    api = processes.start_api(**ark_s3)
    metrics_port = free_port()
    processes.start_worker(**ark_s3, retry_base_delay_s=0.2, worker_metrics_port=metrics_port)
    created = await create_task(http, api.url, {**WRITE_UP_REQUEST, "product_name": product})
    row = await wait_for_status(pool, created["task_id"], {"completed", "failed"}, 60)
    assert row["status"] == "completed", row
    assert row["attempts"] == 2
    (part,) = ledger(direct, created["task_id"])
    assert part["creates"] == 2 and part["state"] == "stored"
    # The fake made two tasks (one unanswered), and saw no third request.
    assert fake_ark.count_creates(product) == 2
    metrics = await fetch_worker_metrics(http, metrics_port)
    assert "video_tasks_worker_possible_duplicate_creates_total 1.0" in metrics


async def test_a_clip_url_that_expired_before_download_gets_a_new_remote_task(
        processes, http, pool, direct, fake_ark, ark_s3):
    product = unique("咖啡机")
    # The clip's URL dies as soon as the task succeeds: the download finds it expired.
    fake_ark.when(product, url_ttl_s=0.0)
    api = processes.start_api(**ark_s3)
    processes.start_worker(**ark_s3, retry_base_delay_s=0.2, max_attempts=2)
    created = await create_task(http, api.url, {**WRITE_UP_REQUEST, "product_name": product})
    row = await wait_for_status(pool, created["task_id"], {"completed", "failed"}, 60)
    # Every remote task's URL expires at once, so both attempts fail; each created anew.
    assert row["status"] == "failed", row
    assert "expired" in row["error_message"] or "403" in row["error_message"], row
    assert fake_ark.count_creates(product) == 2


async def fetch_worker_metrics(http, port: int) -> str:
    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        return await resp.text()
