"""The original write-up's example, end to end: API -> PostgreSQL queue -> worker -> ffmpeg ->
video URL."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import pytest

from tests.helpers import WRITE_UP_REQUEST, create_task, wait_for_status

pytestmark = pytest.mark.asyncio


async def test_write_up_example_completes_with_a_playable_h264_video(processes, http, pool):
    api = processes.start_api()
    processes.start_worker(video_provider="ffmpeg")
    created = await create_task(http, api.url, WRITE_UP_REQUEST)

    await wait_for_status(pool, created["task_id"], {"completed", "failed"}, timeout_s=90)
    async with http.get(f"{api.url}/api/progress/{created['task_id']}") as resp:
        progress = await resp.json()
    assert progress["status"] == "completed", progress
    assert progress["progress"] == 100
    assert progress["current_part"] == progress["total_parts"] == 1
    assert progress["error_message"] is None

    # The video_url is served by the API itself (the test stack's public base URL is a
    # placeholder, so fetch the same path from the API process).
    path = progress["video_url"].split("://", 1)[1].split("/", 1)[1]
    async with http.get(f"{api.url}/{path}") as resp:
        assert resp.status == 200
        assert resp.content_type == "video/mp4"
        data = await resp.read()

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert (stream.width, stream.height) == (720, 1280)
        duration_s = Fraction(container.duration, 1_000_000)
        frames = sum(1 for _ in container.decode(video=0))
    assert abs(duration_s - 5) < Fraction(1, 5)
    assert frames == 5 * 25


async def test_multi_part_video_is_merged_in_order_to_the_full_duration(processes, http, pool,
                                                                        settings):
    api = processes.start_api()
    processes.start_worker(video_provider="ffmpeg")
    created = await create_task(http, api.url, {**WRITE_UP_REQUEST, "duration": 12,
                                                 "product_name": "Steel bolt M12 高强度"})
    assert created["total_parts"] == 3
    row = await wait_for_status(pool, created["task_id"], {"completed", "failed"}, timeout_s=120)
    assert row["status"] == "completed", row
    video = settings.media_dir / "videos" / f"{created['task_id']}.mp4"
    with av.open(str(video)) as container:
        assert abs(Fraction(container.duration, 1_000_000) - 12) < Fraction(1, 5)
        assert container.streams.video[0].codec_context.name == "h264"
    # The parts' scratch files are gone once the task is done.
    assert not list(settings.work_dir.glob(f"{created['task_id']}*"))
