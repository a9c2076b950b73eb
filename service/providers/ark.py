"""Provider "ark": AI clips from Volcengine Ark's content-generation (Seedance) task API.

One part is one billed remote task: `create_clip` POSTs it and returns its id (the worker
records the id before anything else), `fetch_clip` polls it and downloads its video at
once, because Ark deletes the video 24 h after the task finishes. `merge` hands the clips
to service.media, which normalises size and frame rate (Ark clips come at the model's own
resolution and 16/24 fps) and cuts each clip to its planned length.

Plain aiohttp, not the official SDK (volcengine-python-sdk[ark]): the SDK retries every
request by default, POST create included (on 408/409/429/5xx and on lost connections), and
Ark has no idempotency key, so a retried create whose first answer was lost starts a second
billed task. Here a create is retried only when it provably was not processed: the server
answered 429/408/5xx, or the connection was never made. A lost answer (timeout or
disconnect after sending) raises errors.ProviderError at once and is never resent. GETs
(polls, downloads) are idempotent and are retried freely within the part's deadline.

Secrets: the API key goes only into the Authorization header of requests to ark_base_url
(never to the clip URL's host) and is scrubbed from any provider text we repeat; clip URLs
are signed, so logs name only their host.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import os
import random
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from service import errors, media
from service.providers.base import ClipResult, PartJob, PartRole
from service.providers.ffmpeg import find_font
from service.settings import Settings

logger = logging.getLogger(__name__)

TASKS_PATH = "/contents/generations/tasks"
# Seedance makes 2-12 s; a shorter part gets a 2 s clip that the merge cuts.
MIN_CLIP_SECONDS = 2
# Ark's docs recommend prompts of at most 500 characters.
PROMPT_MAX_CHARS = 500
# Tries of one create (the first included) when Ark is busy or unreachable.
CREATE_MAX_TRIES = 4
# Tries of one clip download.
DOWNLOAD_MAX_TRIES = 3
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 8.0
# A longer Retry-After ends the attempt; the worker's own retry backoff takes over.
RETRY_AFTER_MAX_S = 60.0
# Polls start at ark_poll_interval_s and grow by this factor up to POLL_MAX_FACTOR times it.
POLL_GROWTH = 1.5
POLL_MAX_FACTOR = 4.0
# The slot create_clip took waits this long for the same part's fetch_clip (see _park).
HANDOFF_S = 120.0
DOWNLOAD_CHUNK_BYTES = 256 * 1024
MESSAGE_MAX_CHARS = 300
# Answers that say the request was not carried out (retried: 5xx too, but see below).
RETRY_STATUSES = frozenset({408, 429})
# 504: the gateway got no answer from Ark behind it, so the create may have been processed.
CREATE_LOST_STATUSES = frozenset({504})
EXPIRED_URL_STATUSES = frozenset({403, 404, 410})
# Moderation codes of Ark's error table; any "...SensitiveContentDetected..." counts.
MODERATION_MARKER = "SensitiveContentDetected"

_SELLING_FOCUS = ("细节和质感", "使用场景", "核心功能", "与众不同之处")


def is_moderation_code(code: str) -> bool:
    return MODERATION_MARKER in code


def moderation_message(code: str) -> str:
    """A sentence for the person who wrote the text, in Chinese and English."""
    if code.startswith("InputImage"):
        return "图片未通过审核 / the image was rejected by the provider's content check"
    if code.startswith("Output"):
        return ("生成的视频未通过审核，请修改产品名称或主题后重试 / the generated video was "
                "rejected by the provider's content check; change the product name or theme")
    return ("内容未通过审核，请修改产品名称或主题 / the text was rejected by the provider's "
            "content check; change the product name or theme")


def _plain(text: str) -> str:
    """User text made safe for one line of prompt: whitespace collapsed, and no "--", which
    older models read as a command (a theme "--duration 12" would change the billed clip)."""
    return re.sub(r"-{2,}", "-", " ".join(text.split()))


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:max(limit - 1, 0)] + "…"


def build_prompt(job: PartJob, *, seconds: int, ratio: str, resolution: str) -> str:
    """The part's prompt in Chinese: the ad's style, the part's place in it, and the text
    commands older models read (newer ones read the body's fields)."""
    commands = f" --ratio {ratio} --duration {seconds} --resolution {resolution}"
    product, theme = _plain(job.product_name), _plain(job.theme)

    def compose(product: str, theme: str) -> str:
        role = job.role
        if role is PartRole.WHOLE:
            place = "一段完整的短广告"
            shot = (f"先用抓人眼球的镜头引出「{product}」，再特写它的细节和使用场景，"
                    "最后让产品完整亮相")
        else:
            place = f"短广告的第{job.index + 1}段（共{job.count}段）"
            if role is PartRole.OPENING:
                shot = f"开场：一个抓人眼球的镜头引出「{product}」，第一秒就让人想看下去"
            elif role is PartRole.CLOSING:
                shot = f"收尾：「{product}」完整亮相，构图干净稳定，留下想买的印象"
            else:
                focus = _SELLING_FOCUS[(job.index - 1) % len(_SELLING_FOCUS)]
                shot = f"卖点：特写「{product}」的{focus}，让人看清它好在哪里"
        return (f"竖屏商品营销短视频，{place}。主题：{theme}。{shot}。"
                f"画面明亮，运镜平稳，真实质感，不要字幕和水印。{commands}")

    budget = PROMPT_MAX_CHARS - len(compose("", ""))
    if len(product) + len(theme) > budget:
        # Share the room; what one needs less of the other may use.
        half = budget // 2
        if len(product) <= half:
            theme = _clip(theme, budget - len(product))
        elif len(theme) <= half:
            product = _clip(product, budget - len(theme))
        else:
            product, theme = _clip(product, half), _clip(theme, budget - half)
    return compose(product, theme)


@dataclass(frozen=True)
class _Answer:
    status: int
    headers: Any
    data: Any  # parsed JSON, or None
    request_id: str

    @property
    def error(self) -> tuple[str, str]:
        """Ark's error object {"error": {"code", "message"}} as (code, message)."""
        err = self.data.get("error") if isinstance(self.data, dict) else None
        if not isinstance(err, dict):
            return "", ""
        return str(err.get("code") or ""), str(err.get("message") or "")


def _retryable(status: int) -> bool:
    return status in RETRY_STATUSES or 500 <= status <= 599


def retry_after_s(value: str | None) -> float | None:
    """Retry-After as seconds: a number (fractions accepted) or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class ArkProvider:
    name = "ark"
    remote = True

    def __init__(self, *, base_url: str, api_key: str, model: str, resolution: str = "720p",
                 ratio: str = "9:16", part_deadline_s: float = 900.0,
                 poll_interval_s: float = 5.0, max_in_flight: int = 4,
                 request_timeout_s: float = 60.0, width: int = 720, height: int = 1280,
                 fps: int = 25, backoff_base_s: float = BACKOFF_BASE_S, label: str = "",
                 font_file: str = "") -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.model, self.resolution, self.ratio = model, resolution, ratio
        self.part_deadline_s = part_deadline_s
        self.poll_interval_s = poll_interval_s
        self.max_in_flight = max_in_flight
        self.request_timeout_s = request_timeout_s
        self.width, self.height, self.fps = width, height, fps
        # The visible AI label the merge draws (in this font); "" for none.
        self.label, self.font_file = label, font_file
        self.backoff_base_s = backoff_base_s
        # Remote tasks of this worker in flight (see create_clip / fetch_clip / _park).
        self._slots = asyncio.Semaphore(max_in_flight)
        self._parked: dict[str, asyncio.TimerHandle] = {}
        self._session: aiohttp.ClientSession | None = None
        # For metrics, plain ints: counters that only grow, and in_flight, a gauge.
        self.creates = 0  # remote tasks created (billed)
        self.usage_tokens = 0  # sum of usage.completion_tokens of downloaded clips
        self.downloads = 0
        self.polls = 0
        self.lost_answers = 0  # creates whose answer was lost (a task may exist unrecorded)
        self.request_retries = 0
        self.refusals = 0
        self.remote_failures = 0
        self.in_flight = 0  # slots held right now (remote tasks being made or fetched)

    @classmethod
    def from_settings(cls, settings: Settings) -> ArkProvider:
        return cls(base_url=settings.ark_base_url, api_key=settings.ark_api_key,
                   model=settings.ark_model, resolution=settings.ark_resolution,
                   ratio=settings.ark_ratio, part_deadline_s=settings.ark_part_deadline_s,
                   poll_interval_s=settings.ark_poll_interval_s,
                   max_in_flight=settings.ark_max_in_flight,
                   request_timeout_s=settings.ark_request_timeout_s,
                   width=settings.video_width, height=settings.video_height,
                   fps=settings.video_fps, label=settings.video_ai_label,
                   # The font only draws the label: with no label, Ark needs no CJK font.
                   font_file=find_font(settings.video_font_file)
                   if settings.video_ai_label else settings.video_font_file)

    def __repr__(self) -> str:
        return f"ArkProvider(base_url={self.base_url!r}, model={self.model!r})"

    # -- the provider interface ------------------------------------------------------

    async def create_clip(self, job: PartJob) -> str:
        # Slots: create_clip takes one and, on success, parks it for this remote id;
        # fetch_clip of the same id takes the parked slot over instead of acquiring a
        # second, and releases it when the clip is downloaded or the part fails. A resumed
        # part (fetch_clip only, nothing parked) acquires its own. So one part holds at most
        # one slot, from before its create until its clip is on disk.
        await self._acquire()
        try:
            remote_id = await self._create(job)
        except BaseException:
            self._release()
            raise
        self._park(remote_id)
        return remote_id

    async def fetch_clip(self, job: PartJob, remote_id: str | None, dest: Path) -> ClipResult:
        if not remote_id:
            raise errors.RemoteTaskFailed(f"{self._part(job)} has no Ark task id")
        held = self._unpark(remote_id)
        deadline: asyncio.Timeout | None = None
        try:
            # The deadline counts the wait for a slot too: the attempt ends in time.
            async with asyncio.timeout(self.part_deadline_s) as deadline:
                if not held:
                    await self._acquire()
                    held = True
                return await self._poll_and_download(job, remote_id, dest)
        except TimeoutError:
            if deadline is None or not deadline.expired():
                raise
            logger.warning("ark task %s (%s) not done after %.0f s", remote_id,
                           self._part(job), self.part_deadline_s)
            # Not RemoteTaskFailed: the task may still finish; the next attempt polls it.
            raise errors.ProviderError(
                f"Ark task {remote_id} did not finish within ARK_PART_DEADLINE_S="
                f"{self.part_deadline_s:g}s; it is polled again on the next attempt") from None
        finally:
            if held:
                self._release()

    async def merge(self, parts: list[Path], lengths_s: list[int], dest: Path) -> None:
        await media.merge_clips(parts, lengths_s, dest, width=self.width,
                                height=self.height, fps=self.fps, label=self.label,
                                font_file=self.font_file)

    async def close(self) -> None:
        for handle in self._parked.values():
            handle.cancel()
        self._parked.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- slots -----------------------------------------------------------------------

    async def _acquire(self) -> None:
        await self._slots.acquire()
        self.in_flight += 1

    def _release(self) -> None:
        self.in_flight -= 1
        self._slots.release()

    def _park(self, remote_id: str) -> None:
        # If the worker never calls fetch_clip (it lost the task's lease, or stops), the
        # slot comes back after HANDOFF_S instead of leaking.
        loop = asyncio.get_running_loop()
        self._parked[remote_id] = loop.call_later(HANDOFF_S, self._expire_parked, remote_id)

    def _unpark(self, remote_id: str) -> bool:
        handle = self._parked.pop(remote_id, None)
        if handle is None:
            return False
        handle.cancel()
        return True

    def _expire_parked(self, remote_id: str) -> None:
        if self._parked.pop(remote_id, None) is not None:
            logger.warning("ark task %s: created but not fetched within %.0f s; slot freed",
                           remote_id, HANDOFF_S)
            self._release()

    # -- create ----------------------------------------------------------------------

    def request_body(self, job: PartJob) -> dict[str, Any]:
        seconds = max(job.seconds, MIN_CLIP_SECONDS)
        prompt = build_prompt(job, seconds=seconds, ratio=self.ratio, resolution=self.resolution)
        return {"model": self.model, "content": [{"type": "text", "text": prompt}],
                "duration": seconds, "ratio": self.ratio, "resolution": self.resolution}

    async def _create(self, job: PartJob) -> str:
        body = self.request_body(job)
        part = self._part(job)
        for attempt in range(1, CREATE_MAX_TRIES + 1):
            try:
                answer = await self._api("POST", TASKS_PATH, body)
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                # No connection was made: the request never left, a retry is safe.
                reason, wait = f"cannot connect to Ark ({type(exc).__name__})", None
            except (aiohttp.ClientError, TimeoutError) as exc:
                # Sent, answer lost: Ark may have created (and billed) a task we cannot name.
                self.lost_answers += 1
                logger.error("ark create for %s: answer lost (%s); not retried", part,
                             type(exc).__name__)
                raise errors.CreateOutcomeUnknown(
                    f"the answer of Ark to creating a task for {part} was lost "
                    f"({type(exc).__name__}); not resent, since Ark may have created it"
                ) from None
            else:
                if answer.status == 200:
                    return self._created(answer, part)
                code, _ = answer.error
                if (not _retryable(answer.status) or answer.status in CREATE_LOST_STATUSES
                        or is_moderation_code(code)):
                    raise self._unexpected(answer, f"creating a task for {part}",
                                           lost=answer.status in CREATE_LOST_STATUSES)
                reason = f"HTTP {answer.status} {code}".rstrip()
                wait = retry_after_s(answer.headers.get("Retry-After"))
            if attempt == CREATE_MAX_TRIES:
                break
            wait = self._backoff(attempt) if wait is None else wait
            if wait > RETRY_AFTER_MAX_S:
                raise errors.ProviderError(f"Ark is busy ({reason}) and asks to wait "
                                           f"{wait:.0f} s; {part} is retried later")
            self.request_retries += 1
            logger.warning("ark create for %s: %s; try %d of %d in %.2f s", part, reason,
                           attempt + 1, CREATE_MAX_TRIES, wait)
            await asyncio.sleep(wait)
        raise errors.ProviderError(f"Ark did not take the task for {part} after "
                                   f"{CREATE_MAX_TRIES} tries: {reason}")

    def _created(self, answer: _Answer, part: str) -> str:
        remote_id = answer.data.get("id") if isinstance(answer.data, dict) else None
        if not isinstance(remote_id, str) or not remote_id:
            # Processed, maybe created, but unnamed: as good as a lost answer.
            self.lost_answers += 1
            raise errors.CreateOutcomeUnknown(f"Ark answered the create for {part} without a task "
                                       f"id (request {answer.request_id or '?'})")
        self.creates += 1
        logger.info("ark task %s created for %s (request %s)", remote_id, part,
                    answer.request_id or "?")
        return remote_id

    # -- poll and download -----------------------------------------------------------

    async def _poll_and_download(self, job: PartJob, remote_id: str, dest: Path) -> ClipResult:
        interval = self.poll_interval_s
        path = f"{TASKS_PATH}/{remote_id}"
        while True:
            wait = await self._poll_once(job, remote_id, path, dest)
            if isinstance(wait, ClipResult):
                return wait
            await asyncio.sleep(max(interval * random.uniform(0.9, 1.1),
                                    min(wait, RETRY_AFTER_MAX_S)))
            interval = min(interval * POLL_GROWTH, self.poll_interval_s * POLL_MAX_FACTOR)

    async def _poll_once(self, job: PartJob, remote_id: str, path: str,
                         dest: Path) -> ClipResult | float:
        """One GET of the task: the clip when it is done, else how long to wait at least."""
        self.polls += 1
        try:
            answer = await self._api("GET", path)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.request_retries += 1
            logger.warning("ark task %s: poll failed (%s); polling again", remote_id,
                           type(exc).__name__)
            return 0.0
        if answer.status == 404:
            self.remote_failures += 1
            raise errors.RemoteTaskFailed(f"Ark task {remote_id} is gone (HTTP 404; tasks "
                                          "are kept 7 days)")
        if _retryable(answer.status):
            self.request_retries += 1
            logger.warning("ark task %s: poll answered HTTP %d; polling again", remote_id,
                           answer.status)
            return retry_after_s(answer.headers.get("Retry-After")) or 0.0
        if answer.status != 200:
            raise self._unexpected(answer, f"polling Ark task {remote_id}", poll=True)
        task = answer.data if isinstance(answer.data, dict) else {}
        status = task.get("status")
        if status in ("queued", "running"):
            return 0.0
        if status == "succeeded":
            content = task.get("content") or {}
            url = content.get("video_url") if isinstance(content, dict) else None
            if not isinstance(url, str) or not url:
                self.remote_failures += 1
                raise errors.RemoteTaskFailed(f"Ark task {remote_id} succeeded without a "
                                              "video_url")
            await self._download(remote_id, url, dest)
            usage = task.get("usage") or {}
            tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
            tokens = tokens if isinstance(tokens, int) and tokens > 0 else None
            self.usage_tokens += tokens or 0
            logger.info("ark task %s done for %s (%s tokens)", remote_id, self._part(job),
                        tokens)
            return ClipResult(usage_tokens=tokens)
        if status == "failed":
            error = task.get("error")
            err: dict[str, Any] = error if isinstance(error, dict) else {}
            code, message = str(err.get("code") or ""), str(err.get("message") or "")
            if is_moderation_code(code):
                self.refusals += 1
                logger.warning("ark task %s: rejected by moderation (%s)", remote_id, code)
                raise errors.ProviderRefused(moderation_message(code), code=code,
                                             content_rejected=True)
            self.remote_failures += 1
            logger.warning("ark task %s failed: %s", remote_id, code or "no code")
            raise errors.RemoteTaskFailed(f"Ark task {remote_id} failed: "
                                          f"{code or 'no code'}: {self._scrub(message)}")
        # cancelled, expired, or a status this code does not know: no clip will come.
        self.remote_failures += 1
        logger.warning("ark task %s ended as %r", remote_id, status)
        raise errors.RemoteTaskFailed(f"Ark task {remote_id} ended with status {status!r}")

    async def _download(self, remote_id: str, url: str, dest: Path) -> None:
        host = URL(url).host or "?"
        reason = ""
        for attempt in range(1, DOWNLOAD_MAX_TRIES + 1):
            wait: float | None = None
            try:
                # No Authorization header: the clip lives on another host (signed URL).
                async with self._http().get(url) as resp:
                    if resp.status in EXPIRED_URL_STATUSES:
                        self.remote_failures += 1
                        raise errors.RemoteTaskFailed(
                            f"the clip URL of Ark task {remote_id} answered HTTP "
                            f"{resp.status} (expired); the part is made anew")
                    if resp.status == 200:
                        await self._save(resp, dest)
                        self.downloads += 1
                        return
                    reason = f"HTTP {resp.status}"
                    if not _retryable(resp.status):
                        raise errors.ProviderError(f"downloading the clip of Ark task "
                                                   f"{remote_id} from {host}: {reason}")
                    wait = retry_after_s(resp.headers.get("Retry-After"))
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = type(exc).__name__
            self.request_retries += 1
            logger.warning("ark task %s: clip download from %s failed (%s), try %d of %d",
                           remote_id, host, reason, attempt, DOWNLOAD_MAX_TRIES)
            if attempt < DOWNLOAD_MAX_TRIES:
                await asyncio.sleep(min(wait if wait is not None else self._backoff(attempt),
                                        RETRY_AFTER_MAX_S))
        raise errors.ProviderError(f"downloading the clip of Ark task {remote_id} from {host} "
                                   f"failed {DOWNLOAD_MAX_TRIES} times: {reason}")

    @staticmethod
    async def _save(resp: aiohttp.ClientResponse, dest: Path) -> None:
        # A temp file beside dest, then os.replace: dest is whole or absent.
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part",
                                        dir=dest.parent)
        tmp = Path(tmp_name)
        try:
            size = 0
            with os.fdopen(fd, "wb") as out:
                async for chunk in resp.content.iter_chunked(DOWNLOAD_CHUNK_BYTES):
                    out.write(chunk)
                    size += len(chunk)
            expected = resp.content_length
            if size == 0 or (expected is not None and size != expected):
                raise aiohttp.ClientPayloadError(f"clip cut short: {size} of {expected} bytes")
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    # -- HTTP ------------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        # Made inside the running loop on first use. force_close: no keep-alive, so a
        # create never goes out on a connection the server already closed, which would
        # fail just like a lost answer; one request per part every few seconds costs
        # nothing in handshakes.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True),
                timeout=aiohttp.ClientTimeout(total=self.request_timeout_s),
                headers={"User-Agent": "video-tasks"})
        return self._session

    async def _api(self, method: str, path: str, body: dict[str, Any] | None = None) -> _Answer:
        headers = {"Authorization": f"Bearer {self._api_key}"}
        async with self._http().request(method, self.base_url + path, json=body,
                                        headers=headers) as resp:
            raw = await resp.read()
            data: Any = None
            if raw:
                with contextlib.suppress(ValueError):
                    data = await resp.json(content_type=None)
            return _Answer(resp.status, resp.headers, data,
                           resp.headers.get("X-Request-Id", ""))

    def _unexpected(self, answer: _Answer, doing: str, *, lost: bool = False,
                    poll: bool = False) -> errors.ServiceError:
        """The error for an answer that is neither success nor worth a retry."""
        code, message = answer.error
        message = self._scrub(message)
        where = f"HTTP {answer.status}" + (f" {code}" if code else "")
        if is_moderation_code(code):
            self.refusals += 1
            logger.warning("ark: %s rejected by moderation (%s)", doing, code)
            return errors.ProviderRefused(moderation_message(code), code=code,
                                          content_rejected=True)
        if answer.status in (401, 403):
            self.refusals += 1
            logger.error("ark: %s refused: %s (request %s)", doing, where,
                         answer.request_id or "?")
            return errors.ProviderRefused(
                f"Ark refused the API key ({where}): check ARK_API_KEY, and that the account "
                "is not in arrears and the model is enabled for it", code=code or
                str(answer.status))
        if lost:
            self.lost_answers += 1
            return errors.CreateOutcomeUnknown(f"{doing}: Ark's gateway answered {where}, so the "
                                        "answer was lost; not resent")
        if poll:
            # A stored id Ark no longer accepts gives no clip: make the part anew.
            self.remote_failures += 1
            return errors.RemoteTaskFailed(f"{doing}: {where}: {message}".rstrip(": "))
        self.refusals += 1
        logger.error("ark: %s refused: %s %s", doing, where, message)
        return errors.ProviderRefused(f"Ark refused {doing} ({where}): {message}".rstrip(": "),
                                      code=code or str(answer.status))

    def _scrub(self, text: str) -> str:
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return _clip(text, MESSAGE_MAX_CHARS)

    def _backoff(self, attempt: int) -> float:
        return min(BACKOFF_MAX_S, self.backoff_base_s * 2 ** (attempt - 1)) \
            * random.uniform(0.5, 1.0)

    @staticmethod
    def _part(job: PartJob) -> str:
        return f"task {job.task_id} part {job.index + 1}/{job.count}"
