"""ArkProvider against the fake Ark (tests.fakes.ark): real HTTP on 127.0.0.1, no database."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import av
import pytest

from service import errors
from service.providers.ark import PROMPT_MAX_CHARS, ArkProvider, build_prompt
from service.providers.base import PartJob
from service.settings import Settings
from tests.fakes.ark import FakeArk, FakeArkThread, running_fake_ark

KEY = "test-key"


def ark_settings(fake: FakeArk, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "video_provider": "ark", "ark_api_key": KEY, "ark_base_url": fake.base_url,
        "ark_poll_interval_s": 0.05, "ark_part_deadline_s": 10.0,
        "ark_request_timeout_s": 5.0, "ark_max_in_flight": 4}
    return Settings(**{**values, **overrides})


def part(name: str = "保温杯", *, index: int = 0, count: int = 1, seconds: int = 2) -> PartJob:
    return PartJob(task_id="task-1", product_name=name, theme="冬日暖心", index=index,
                   count=count, seconds=seconds)


@pytest.fixture
async def fake() -> AsyncIterator[FakeArk]:
    # Quick tasks: most tests are about answers, not about waiting.
    async with running_fake_ark(api_key=KEY, queued_s=0.02, running_s=0.05) as fake:
        yield fake


@pytest.fixture
async def provider(fake: FakeArk) -> AsyncIterator[ArkProvider]:
    provider = ArkProvider.from_settings(ark_settings(fake))
    provider.backoff_base_s = 0.02
    yield provider
    await provider.close()


async def make(provider: ArkProvider, job: PartJob, dest: Path) -> Any:
    remote_id = await provider.create_clip(job)
    return await provider.fetch_clip(job, remote_id, dest)


# -- the prompt -----------------------------------------------------------------------

def test_prompt_says_the_part_and_ends_with_text_commands() -> None:
    prompts = {build_prompt(part(index=i, count=4), seconds=5, ratio="9:16",
                            resolution="720p") for i in range(4)}
    assert len(prompts) == 4  # opening, two different selling points, closing
    whole = build_prompt(part(), seconds=5, ratio="9:16", resolution="720p")
    assert "保温杯" in whole and "冬日暖心" in whole
    assert whole.endswith(" --ratio 9:16 --duration 5 --resolution 720p")


def test_prompt_stays_short_and_user_text_gives_no_commands() -> None:
    job = PartJob("t", "杯" * 400, "暖 --duration 12\n--ratio 16:9" + "冬" * 400, 1, 3, 5)
    prompt = build_prompt(job, seconds=5, ratio="9:16", resolution="720p")
    assert len(prompt) <= PROMPT_MAX_CHARS
    assert prompt.count("--") == 3 and "--duration 12" not in prompt
    assert "\n" not in prompt


# -- success and usage ----------------------------------------------------------------

async def test_clip_is_downloaded_playable_and_usage_reported(
        fake: FakeArk, provider: ArkProvider, tmp_path: Path) -> None:
    job = part(seconds=1)  # below Ark's minimum: asks for 2 s, the merge cuts
    remote_id = await provider.create_clip(job)
    task = fake.tasks[remote_id]
    assert task.duration == 2 and task.model == provider.model
    assert task.prompt.endswith("--ratio 9:16 --duration 2 --resolution 720p")
    dest = tmp_path / "part-0.mp4"
    result = await provider.fetch_clip(job, remote_id, dest)

    assert result.usage_tokens == task.tokens > 0
    assert provider.creates == 1 and provider.usage_tokens == task.tokens
    assert fake.creates == 1 and fake.downloads == 1
    with av.open(str(dest)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert sum(1 for _ in container.decode(stream)) > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-0.mp4"]  # no temp files
    assert provider.in_flight == 0


async def test_a_resumed_part_polls_only(fake: FakeArk, provider: ArkProvider,
                                         tmp_path: Path) -> None:
    remote_id = await provider.create_clip(part())
    # Another worker (another provider) picks the part up with the stored id.
    other = ArkProvider.from_settings(ark_settings(fake, ark_max_in_flight=1))
    try:
        await other.fetch_clip(part(), remote_id, tmp_path / "p.mp4")
    finally:
        await other.close()
    assert fake.creates == 1 and (tmp_path / "p.mp4").stat().st_size > 0
    assert other.in_flight == 0


async def test_one_part_takes_one_slot(fake: FakeArk, tmp_path: Path) -> None:
    # With one slot, fetch_clip must take over create_clip's slot, not wait for a second.
    provider = ArkProvider.from_settings(ark_settings(fake, ark_max_in_flight=1))
    try:
        await asyncio.wait_for(make(provider, part(), tmp_path / "p.mp4"), 5)
        assert provider.in_flight == 0
        await asyncio.wait_for(make(provider, part(), tmp_path / "q.mp4"), 5)
    finally:
        await provider.close()


# -- retries of create ----------------------------------------------------------------

async def test_429_retry_after_is_waited_out_and_one_task_made(
        fake: FakeArk, provider: ArkProvider) -> None:
    fake.next_429, fake.retry_after = 1, "0.3"
    started = time.monotonic()
    await provider.create_clip(part())
    assert time.monotonic() - started >= 0.3
    assert fake.create_requests == 2 and fake.creates == 1


async def test_5xx_is_retried_on_create_and_poll(fake: FakeArk, provider: ArkProvider,
                                                 tmp_path: Path) -> None:
    fake.next_5xx, fake.status_5xx = 2, 503
    remote_id = await provider.create_clip(part())
    assert fake.create_requests == 3 and fake.creates == 1
    fake.next_5xx = 2
    await provider.fetch_clip(part(), remote_id, tmp_path / "p.mp4")
    assert fake.downloads == 1


async def test_create_gives_up_after_bounded_tries(fake: FakeArk,
                                                   provider: ArkProvider) -> None:
    fake.next_5xx = 100
    with pytest.raises(errors.ProviderError) as caught:
        await provider.create_clip(part())
    assert not isinstance(caught.value, errors.RemoteTaskFailed)
    assert 1 < fake.create_requests < 10 and fake.creates == 0
    assert provider.in_flight == 0


async def test_unreachable_ark_is_retried_then_fails(tmp_path: Path) -> None:
    fake = FakeArk()
    async with running_fake_ark() as probe:
        fake.port = probe.port  # a port nobody serves once the probe stops
    provider = ArkProvider.from_settings(ark_settings(fake))
    provider.backoff_base_s = 0.01
    try:
        with pytest.raises(errors.ProviderError, match="cannot connect"):
            await provider.create_clip(part())
        assert provider.request_retries >= 1
    finally:
        await provider.close()


async def test_lost_answer_to_create_is_not_resent(fake: FakeArk,
                                                   provider: ArkProvider) -> None:
    fake.drop_next_creates = 1
    with pytest.raises(errors.CreateOutcomeUnknown, match="lost") as caught:
        await provider.create_clip(part())
    assert not isinstance(caught.value, errors.RemoteTaskFailed)
    assert fake.create_requests == 1 and fake.creates == 1
    assert provider.lost_answers == 1 and provider.in_flight == 0


async def test_create_answer_timing_out_is_not_resent(fake: FakeArk) -> None:
    fake.stall_next_creates, fake.stall_s = 1, 2.0
    provider = ArkProvider.from_settings(ark_settings(fake, ark_request_timeout_s=0.3))
    try:
        with pytest.raises(errors.CreateOutcomeUnknown, match="lost"):
            await provider.create_clip(part())
    finally:
        await provider.close()
    assert fake.create_requests == 1 and fake.creates == 1


# -- refusals -------------------------------------------------------------------------

async def test_bad_key_is_refused_at_once(fake: FakeArk,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "sk-wrong-key-123"
    provider = ArkProvider.from_settings(ark_settings(fake, ark_api_key=wrong))
    started = time.monotonic()
    try:
        with pytest.raises(errors.ProviderRefused) as caught:
            await provider.create_clip(part())
    finally:
        await provider.close()
    assert time.monotonic() - started < 1
    assert fake.requests == 1 and fake.auth_failures == 1 and fake.creates == 0
    refused = caught.value
    assert refused.code == "AuthenticationError" and not refused.content_rejected
    assert "ARK_API_KEY" in refused.message and wrong not in str(refused)
    assert wrong not in caplog.text


async def test_arrears_on_poll_is_refused(fake: FakeArk, provider: ArkProvider,
                                          tmp_path: Path) -> None:
    remote_id = await provider.create_clip(part())
    fake.overdue = True
    with pytest.raises(errors.ProviderRefused, match="ARK_API_KEY") as caught:
        await provider.fetch_clip(part(), remote_id, tmp_path / "p.mp4")
    assert caught.value.code == "AccountOverdueError"


async def test_unknown_model_is_refused_with_its_code(fake: FakeArk) -> None:
    provider = ArkProvider.from_settings(ark_settings(fake, ark_model="no-such-model"))
    try:
        with pytest.raises(errors.ProviderRefused) as caught:
            await provider.create_clip(part())
    finally:
        await provider.close()
    assert caught.value.code == "InvalidEndpointOrModel.NotFound"
    assert fake.create_requests == 1


async def test_moderation_at_create_rejects_the_content(fake: FakeArk,
                                                        provider: ArkProvider) -> None:
    fake.when("违禁品", reject_create="InputTextSensitiveContentDetected")
    with pytest.raises(errors.ProviderRefused) as caught:
        await provider.create_clip(part("违禁品"))
    assert caught.value.content_rejected
    assert caught.value.code == "InputTextSensitiveContentDetected"
    assert "审核" in caught.value.message and "content check" in caught.value.message
    assert fake.creates == 0 and fake.create_requests == 1


async def test_moderation_at_output_rejects_the_content(fake: FakeArk, provider: ArkProvider,
                                                        tmp_path: Path) -> None:
    fake.when("违禁品", fail_with={"code": "OutputVideoSensitiveContentDetected",
                                  "message": "The output video may contain sensitive content."})
    job = part("违禁品")
    remote_id = await provider.create_clip(job)
    with pytest.raises(errors.ProviderRefused) as caught:
        await provider.fetch_clip(job, remote_id, tmp_path / "p.mp4")
    assert caught.value.content_rejected and "审核" in caught.value.message
    assert provider.in_flight == 0


# -- remote tasks that give no clip ---------------------------------------------------

async def test_failed_task_is_remote_task_failed(fake: FakeArk, provider: ArkProvider,
                                                 tmp_path: Path) -> None:
    fake.when("", fail_with={"code": "InternalServiceError", "message": "boom"})
    remote_id = await provider.create_clip(part())
    with pytest.raises(errors.RemoteTaskFailed, match="InternalServiceError"):
        await provider.fetch_clip(part(), remote_id, tmp_path / "p.mp4")
    assert provider.in_flight == 0


@pytest.mark.parametrize("status", ["cancelled", "expired", "exploded"])
async def test_other_end_states_are_remote_task_failed(fake: FakeArk, provider: ArkProvider,
                                                       tmp_path: Path, status: str) -> None:
    fake.when("", final_status=status)
    remote_id = await provider.create_clip(part())
    with pytest.raises(errors.RemoteTaskFailed, match=status):
        await provider.fetch_clip(part(), remote_id, tmp_path / "p.mp4")


async def test_expired_clip_url_is_remote_task_failed(fake: FakeArk, provider: ArkProvider,
                                                      tmp_path: Path) -> None:
    fake.url_ttl_s = 0.0
    remote_id = await provider.create_clip(part())
    with pytest.raises(errors.RemoteTaskFailed, match="403"):
        await provider.fetch_clip(part(), remote_id, tmp_path / "p.mp4")
    assert list(tmp_path.iterdir()) == [] and fake.downloads == 0


async def test_task_gone_is_remote_task_failed(fake: FakeArk, provider: ArkProvider,
                                               tmp_path: Path) -> None:
    with pytest.raises(errors.RemoteTaskFailed, match="404"):
        await provider.fetch_clip(part(), "cgt-unknown", tmp_path / "p.mp4")


async def test_deadline_is_a_provider_error_not_remote_failure(fake: FakeArk,
                                                               tmp_path: Path) -> None:
    fake.running_s = 30.0
    provider = ArkProvider.from_settings(ark_settings(fake, ark_part_deadline_s=0.4))
    try:
        remote_id = await provider.create_clip(part())
        started = time.monotonic()
        with pytest.raises(errors.ProviderError, match="ARK_PART_DEADLINE_S") as caught:
            await provider.fetch_clip(part(), remote_id, tmp_path / "p.mp4")
        assert time.monotonic() - started < 1.5
        assert not isinstance(caught.value, errors.RemoteTaskFailed)
        assert provider.in_flight == 0
    finally:
        await provider.close()


# -- restarts and concurrency ---------------------------------------------------------

async def test_restart_of_ark_while_polling(fake: FakeArk, provider: ArkProvider,
                                            tmp_path: Path) -> None:
    fake.running_s = 0.6
    remote_id = await provider.create_clip(part())
    fetching = asyncio.create_task(provider.fetch_clip(part(), remote_id, tmp_path / "p.mp4"))
    await asyncio.sleep(0.1)
    await fake.restart(down_s=0.4)
    result = await asyncio.wait_for(fetching, 5)
    assert result.usage_tokens and fake.creates == 1 and fake.downloads == 1
    assert provider.request_retries >= 1  # polls failed while it was down


async def test_in_flight_remote_tasks_are_bounded(fake: FakeArk, tmp_path: Path) -> None:
    fake.running_s = 0.1
    provider = ArkProvider.from_settings(ark_settings(fake, ark_max_in_flight=2))
    try:
        jobs = [part(index=i, count=5) for i in range(5)]
        await asyncio.gather(*(make(provider, job, tmp_path / f"p{job.index}.mp4")
                               for job in jobs))
    finally:
        await provider.close()
    assert fake.creates == 5 and fake.peak_in_flight() == 2
    assert provider.in_flight == 0


# -- the fake from sync code ----------------------------------------------------------

def _control(fake: FakeArk, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        fake.origin + path, method="POST" if body is not None else "GET",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as answer:
        return json.loads(answer.read())


def test_fake_in_a_thread_with_control_endpoints() -> None:
    with FakeArkThread(api_key=KEY) as fake:
        assert _control(fake, "/_fake/config", {"next_429": 1, "retry_after": "0"})["ok"]
        _control(fake, "/_fake/when", {"match": "坏", "reject_create": "SensitiveContentDetected"})
        assert fake.next_429 == 1 and fake.rules[0][1].reject_create
        fake.restart_blocking(0.05)
        stats = _control(fake, "/_fake/stats")
        assert stats["creates"] == 0 and stats["requests"] == 0
        _control(fake, "/_fake/reset", {})
        assert fake.next_429 == 0 and fake.rules == []
