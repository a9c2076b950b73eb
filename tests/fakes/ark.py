"""A fake of Volcengine Ark's content-generation (video) task API, over real HTTP.

It speaks the protocol service.providers.ark uses: `POST /api/v3/contents/generations/tasks`
(bearer key, model and content checked; answers `{"id": "cgt-…"}`), `GET …/tasks/{id}`
(queued -> running -> succeeded after `queued_s` / `running_s`, with `content.video_url`
and `usage`), and the clip download from its own "signed" URLs (`/clips/{id}.mp4?…`).
Errors have Ark's shape `{"error": {"code", "message", "param", "type"}}`. Clips are real
H.264 MP4s made with imageio-ffmpeg's ffmpeg (lavfi testsrc), by default 360x640 with the
frame rate cycling through 24/16/30 per task, so that a merge must normalise them; they are
cached on disk by (seconds, size, fps, audio) across runs.

State (tasks, switches, counts) lives in the FakeArk object, not in the aiohttp runner:
`await fake.restart(down_s)` stops serving, so that requests fail to connect, and serves
again on the same port with every task kept.

Switches (attributes; any thread may set them, as plain attribute writes):
- `next_429` / `retry_after`: the next N API requests answer 429 with that Retry-After.
- `next_5xx` / `status_5xx`: the next N API requests answer that 5xx.
- `drop_next_creates`: the next N creates are carried out, then the connection is closed
  without an answer (a lost answer). `stall_next_creates` / `stall_s`: carried out, then
  answered only after stall_s (a client timeout loses the answer).
- `overdue`: every API request answers 403 AccountOverdueError.
- `queued_s`, `running_s`, `url_ttl_s` (None: the URL never expires; else the download
  answers 403 this long after the task succeeded), `clip_size`, `clip_fps`, `clip_audio`.
- Per prompt: `fake.when("substring", fail_with={"code": ..., "message": ...})`, or
  `reject_create="InputTextSensitiveContentDetected"` (400 at create),
  `final_status="cancelled"` (or "expired", or any unknown word), `running_s=`,
  `url_ttl_s=`. The newest rule whose substring is in the prompt wins; "" matches all.
  Moderation at output: `fail_with={"code": "OutputVideoSensitiveContentDetected"}`.

Counts: `creates` (tasks made), `create_requests` (POSTs, refused ones too),
`creates_by_prompt` (Counter), `count_creates(substring)`, `gets`, `downloads`,
`download_requests`, `requests` (every API request), `auth_failures`, `peak_in_flight()`
(most tasks queued or running at once), `stats()`.

Control endpoints (no auth; for tests that run the worker in a subprocess):
- `GET  /_fake/stats` -> the counts, and every task's status.
- `POST /_fake/config` {"next_429": 2, "running_s": 1.5, ...} sets switches (see CONFIG_KEYS).
- `POST /_fake/when` {"match": "...", "fail_with": {...}, ...} adds a per-prompt rule.
- `POST /_fake/reset` clears counts, switches, rules and tasks.
- `POST /_fake/restart` {"down_s": 1.0}: stops serving for that long, then serves again.

Use:

    # async tests (pytest-asyncio):
    async with running_fake_ark(api_key="test-key") as fake:
        settings = Settings(video_provider="ark", ark_api_key="test-key",
                            ark_base_url=fake.base_url, ...)

    # sync fixtures (own loop in a background thread; e.g. session-wide, worker subprocesses):
    @pytest.fixture(scope="session")
    def fake_ark() -> Iterator[FakeArk]:
        with FakeArkThread(api_key="test-key") as fake:
            yield fake        # fake.base_url, fake.stats(); fake.restart_blocking(1.0)

    # a developer, for `make up` (binds 127.0.0.1 only):
    python -m tests.fakes.ark --port 8089 --api-key test-key
    ARK_BASE_URL=http://127.0.0.1:8089/api/v3 ARK_API_KEY=test-key VIDEO_PROVIDER=ark ...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import re
import secrets
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import imageio_ffmpeg
from aiohttp import web

from tests.fakes.threaded import ServedInThread, serve_until_interrupted

API_PREFIX = "/api/v3"
TASKS_PATH = API_PREFIX + "/contents/generations/tasks"
DEFAULT_API_KEY = "test-key"
# Model ids Ark knows: Seedance names and endpoint ids.
MODEL_PATTERN = re.compile(r"^(doubao-seedance-[0-9a-z-]+|ep-[0-9a-z-]+)$")
RATIOS = frozenset({"16:9", "4:3", "1:1", "3:4", "9:16", "21:9", "keep_ratio", "adaptive"})
RESOLUTIONS = frozenset({"480p", "720p", "1080p"})
CLIP_CACHE = Path(os.environ.get("FAKE_ARK_CLIP_CACHE")
                  or Path(tempfile.gettempdir()) / f"fake-ark-clips-{os.getuid()}")
CONFIG_KEYS = frozenset({"next_429", "retry_after", "next_5xx", "status_5xx",
                         "drop_next_creates", "stall_next_creates", "stall_s", "overdue",
                         "queued_s", "running_s", "url_ttl_s", "clip_size", "clip_fps",
                         "clip_audio", "max_duration_s"})
FFMPEG_TIMEOUT_S = 60


@dataclass
class Behaviour:
    """What happens to tasks whose prompt matches a rule (None: the server's default)."""

    reject_create: str | None = None
    fail_with: dict[str, str] | None = None
    final_status: str | None = None
    queued_s: float | None = None
    running_s: float | None = None
    url_ttl_s: float | None = None


@dataclass
class FakeTask:
    id: str
    model: str
    prompt: str
    duration: int
    ratio: str
    resolution: str
    width: int
    height: int
    fps: int
    started: float  # time.monotonic() at create
    queued_s: float
    running_s: float
    final_status: str
    error: dict[str, str] | None
    url_ttl_s: float | None
    created_at: int = field(default_factory=lambda: int(time.time()))

    @property
    def done_at(self) -> float:
        return self.started + self.queued_s + self.running_s

    def status(self, now: float) -> str:
        if now < self.started + self.queued_s:
            return "queued"
        if now < self.done_at:
            return "running"
        return self.final_status

    @property
    def tokens(self) -> int:
        # Ark's rule of thumb: seconds x width x height x 24 / 1024.
        return self.duration * self.width * self.height * 24 // 1024


def _error(status: int, code: str, message: str, *, headers: dict[str, str] | None = None,
           kind: str = "BadRequest") -> web.Response:
    body = {"error": {"code": code, "message": message, "param": "", "type": kind}}
    return web.json_response(body, status=status, headers={
        "X-Request-Id": secrets.token_hex(8), **(headers or {})})


class FakeArk:
    def __init__(self, *, api_key: str = DEFAULT_API_KEY, host: str = "127.0.0.1",
                 port: int = 0, queued_s: float = 0.05, running_s: float = 0.15,
                 url_ttl_s: float | None = None, clip_size: tuple[int, int] = (360, 640),
                 clip_fps: tuple[int, ...] = (24, 16, 30), clip_audio: bool = False,
                 max_duration_s: int = 12) -> None:
        self.api_key, self.host, self.port = api_key, host, port
        self.queued_s, self.running_s, self.url_ttl_s = queued_s, running_s, url_ttl_s
        self.clip_size, self.clip_fps, self.clip_audio = clip_size, clip_fps, clip_audio
        self.max_duration_s = max_duration_s
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clip_jobs: dict[tuple[int, int, int, int, bool], asyncio.Task[Path]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.reset()

    def reset(self) -> None:
        """Forget tasks, counts, switches and rules (the server keeps serving)."""
        self.tasks: dict[str, FakeTask] = {}
        self.rules: list[tuple[str, Behaviour]] = []
        self.next_429, self.retry_after = 0, "1"
        self.next_5xx, self.status_5xx = 0, 500
        self.drop_next_creates = 0
        self.stall_next_creates, self.stall_s = 0, 5.0
        self.overdue = False
        self.creates = 0
        self.create_requests = 0
        self.creates_by_prompt: Counter[str] = Counter()
        self.gets = 0
        self.downloads = 0
        self.download_requests = 0
        self.requests = 0
        self.auth_failures = 0
        self._seq = itertools.count()

    # -- control -----------------------------------------------------------------------

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.origin + API_PREFIX

    @property
    def serving(self) -> bool:
        return self._runner is not None

    def when(self, match: str, **behaviour: Any) -> Behaviour:
        """Tasks whose prompt contains `match` get this behaviour (newest rule wins)."""
        rule = Behaviour(**behaviour)
        self.rules.insert(0, (match, rule))
        return rule

    def behaviour_for(self, prompt: str) -> Behaviour:
        for match, rule in self.rules:
            if match in prompt:
                return rule
        return Behaviour()

    def count_creates(self, substring: str = "") -> int:
        # list(): a snapshot, as another thread may be adding (FakeArkThread).
        return sum(n for prompt, n in list(self.creates_by_prompt.items())
                   if substring in prompt)

    def peak_in_flight(self) -> int:
        """The most tasks that were queued or running at one moment."""
        tasks = list(self.tasks.values())
        events = sorted([(t.started, 1) for t in tasks]
                        + [(t.done_at, -1) for t in tasks])  # ends sort first
        peak = now = 0
        for _, step in events:
            now += step
            peak = max(peak, now)
        return peak

    def in_flight(self) -> int:
        now = time.monotonic()
        return sum(t.status(now) in ("queued", "running") for t in list(self.tasks.values()))

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        return {"creates": self.creates, "create_requests": self.create_requests,
                "creates_by_prompt": dict(self.creates_by_prompt), "gets": self.gets,
                "downloads": self.downloads, "download_requests": self.download_requests,
                "requests": self.requests, "auth_failures": self.auth_failures,
                "peak_in_flight": self.peak_in_flight(), "in_flight": self.in_flight(),
                "tasks": {t.id: t.status(now) for t in list(self.tasks.values())}}

    def configure(self, **switches: Any) -> None:
        unknown = set(switches) - CONFIG_KEYS
        if unknown:
            raise ValueError(f"unknown switches: {', '.join(sorted(unknown))}")
        for name, value in switches.items():
            if name in ("clip_size", "clip_fps") and isinstance(value, list):
                value = tuple(value)
            setattr(self, name, value)

    # -- serving -------------------------------------------------------------------------

    async def start(self) -> None:
        """Serve (again) on self.port; port 0 picks a free one, kept for restarts."""
        if self._runner is not None:
            return
        if self._loop is not asyncio.get_running_loop():
            self._loop = asyncio.get_running_loop()
            self._clip_jobs.clear()  # futures of another loop
        # shutdown_timeout: a stop must not wait for handlers (stalled creates) to finish.
        runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=0.2)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        await site.start()
        self.port = runner.addresses[0][1]
        self._runner = runner

    async def stop(self) -> None:
        """Stop serving; tasks and counts stay. Connections now fail (refused)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def restart(self, down_s: float = 0.5) -> None:
        await self.stop()
        await asyncio.sleep(down_s)
        await self.start()

    def restart_blocking(self, down_s: float = 0.5) -> None:
        """restart() from another thread than the server's (a sync test, FakeArkThread)."""
        loop = self._loop
        assert loop is not None, "the fake has never served"
        asyncio.run_coroutine_threadsafe(self.restart(down_s), loop).result(down_s + 10)

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(TASKS_PATH, self._create)
        app.router.add_get(TASKS_PATH + "/{task_id}", self._get)
        app.router.add_get("/clips/{task_id}.mp4", self._download)
        app.router.add_get("/_fake/stats", self._ctl_stats)
        app.router.add_post("/_fake/config", self._ctl_config)
        app.router.add_post("/_fake/when", self._ctl_when)
        app.router.add_post("/_fake/reset", self._ctl_reset)
        app.router.add_post("/_fake/restart", self._ctl_restart)
        return app

    # -- the Ark API -----------------------------------------------------------------

    def _gate(self, request: web.Request) -> web.Response | None:
        """Auth and the injected request faults, in Ark's order: auth first."""
        self.requests += 1
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            self.auth_failures += 1
            return _error(401, "AuthenticationError", "The API key or AK/SK in the request is "
                          "missing or invalid.", kind="Unauthorized")
        if self.overdue:
            return _error(403, "AccountOverdueError", "The request failed because your "
                          "account has an overdue balance.", kind="Forbidden")
        if self.next_429 > 0:
            self.next_429 -= 1
            return _error(429, "ModelAccountRpmRateLimitExceeded", "The request has exceeded "
                          "the RPM rate limit of the model.", kind="TooManyRequests",
                          headers={"Retry-After": str(self.retry_after)})
        if self.next_5xx > 0:
            self.next_5xx -= 1
            return _error(self.status_5xx, "InternalServiceError", "The service encountered "
                          "an unexpected internal error.", kind="InternalServerError")
        return None

    async def _create(self, request: web.Request) -> web.StreamResponse:
        self.create_requests += 1
        refused = self._gate(request)
        if refused is not None:
            return refused
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "InvalidParameter", "The request body is not valid JSON.")
        if not isinstance(body, dict):
            return _error(400, "InvalidParameter", "The request body must be an object.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return _error(400, "MissingParameter", "The parameter `model` is missing.")
        if not MODEL_PATTERN.match(model):
            return _error(404, "InvalidEndpointOrModel.NotFound", f"The model or endpoint "
                          f"{model} does not exist or you do not have access to it.",
                          kind="NotFound")
        content = body.get("content")
        texts = [item.get("text") for item in content if isinstance(item, dict)
                 and item.get("type") == "text"] if isinstance(content, list) else []
        if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            return _error(400, "MissingParameter", "The parameter `content` must hold a "
                          "non-empty text item.")
        prompt = "\n".join(texts)
        duration = body.get("duration", _command(prompt, "duration", "dur") or 5)
        ratio = body.get("ratio", _command(prompt, "ratio", "rt") or "adaptive")
        resolution = body.get("resolution", _command(prompt, "resolution", "rs") or "720p")
        try:
            duration = int(duration)
        except (TypeError, ValueError):
            duration = -1
        if not 2 <= duration <= self.max_duration_s:
            return _error(400, "InvalidParameter", f"The parameter `duration` must be within "
                          f"[2, {self.max_duration_s}].")
        if ratio not in RATIOS or resolution not in RESOLUTIONS:
            return _error(400, "InvalidParameter", "The parameter `ratio` or `resolution` is "
                          "invalid.")
        behaviour = self.behaviour_for(prompt)
        if behaviour.reject_create:
            return _error(400, behaviour.reject_create, "The request failed because the input "
                          "text may contain sensitive information.")
        seq = next(self._seq)
        width, height = self.clip_size
        task = FakeTask(
            id=f"cgt-{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}", model=model,
            prompt=prompt, duration=duration, ratio=ratio, resolution=resolution, width=width,
            height=height, fps=self.clip_fps[seq % len(self.clip_fps)],
            started=time.monotonic(),
            queued_s=_pick(behaviour.queued_s, self.queued_s),
            running_s=_pick(behaviour.running_s, self.running_s),
            final_status=("failed" if behaviour.fail_with else
                          behaviour.final_status or "succeeded"),
            error=dict(behaviour.fail_with) if behaviour.fail_with else None,
            url_ttl_s=_pick(behaviour.url_ttl_s, self.url_ttl_s))
        self.tasks[task.id] = task
        self.creates += 1
        self.creates_by_prompt[prompt] += 1
        if self.drop_next_creates > 0:
            self.drop_next_creates -= 1
            # Carried out, but the answer never comes: the client sees a disconnect.
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError
        if self.stall_next_creates > 0:
            self.stall_next_creates -= 1
            await asyncio.sleep(self.stall_s)
        return web.json_response({"id": task.id},
                                 headers={"X-Request-Id": secrets.token_hex(8)})

    async def _get(self, request: web.Request) -> web.Response:
        self.gets += 1
        refused = self._gate(request)
        if refused is not None:
            return refused
        task = self.tasks.get(request.match_info["task_id"])
        if task is None:
            return _error(404, "ResourceNotFound", "The specified task is not found.",
                          kind="NotFound")
        return web.json_response(self._task_json(task))

    def _task_json(self, task: FakeTask) -> dict[str, Any]:
        status = task.status(time.monotonic())
        body: dict[str, Any] = {
            "id": task.id, "model": task.model, "status": status, "error": None,
            "created_at": task.created_at,
            "updated_at": task.created_at + int(task.queued_s + task.running_s),
            "seed": 1234, "resolution": task.resolution, "ratio": task.ratio,
            "duration": task.duration, "framespersecond": task.fps,
            "service_tier": "default", "execution_expires_after": 172800,
        }
        if status == "succeeded":
            expires = int(time.time() + (task.url_ttl_s if task.url_ttl_s is not None
                                         else 86400))
            body["content"] = {"video_url": f"{self.origin}/clips/{task.id}.mp4?"
                                            f"X-Tos-Expires={expires}&X-Tos-Signature=fake"}
            body["usage"] = {"completion_tokens": task.tokens, "total_tokens": task.tokens}
        elif status == "failed":
            body["error"] = task.error or {"code": "InternalServiceError",
                                           "message": "generation failed"}
        return body

    async def _download(self, request: web.Request) -> web.StreamResponse:
        self.download_requests += 1
        task = self.tasks.get(request.match_info["task_id"])
        now = time.monotonic()
        if task is None or task.status(now) != "succeeded":
            return web.Response(status=404, text="<Error><Code>NoSuchKey</Code></Error>",
                                content_type="application/xml")
        if task.url_ttl_s is not None and now >= task.done_at + task.url_ttl_s:
            # What TOS answers for a signed URL past its expiry.
            return web.Response(status=403, content_type="application/xml",
                                text="<Error><Code>AccessDenied</Code>"
                                     "<Message>Request has expired</Message></Error>")
        path = await self.clip_file(task.duration, task.width, task.height, task.fps)
        self.downloads += 1
        return web.FileResponse(path, headers={"Content-Type": "video/mp4"})

    # -- clips -------------------------------------------------------------------------

    async def clip_file(self, seconds: int, width: int, height: int, fps: int) -> Path:
        """A real MP4 of that shape, made once and then served from the disk cache."""
        key = (seconds, width, height, fps, self.clip_audio)
        path = CLIP_CACHE / (f"testsrc-{seconds}s-{width}x{height}-{fps}fps"
                             f"{'-audio' if self.clip_audio else ''}.mp4")
        if path.exists():
            return path
        job = self._clip_jobs.get(key)
        if job is None or (job.done() and (job.cancelled() or job.exception() is not None)):
            job = asyncio.ensure_future(_make_clip(path, seconds, width, height, fps,
                                                   audio=self.clip_audio))
            self._clip_jobs[key] = job
        # shield: one download giving up must not kill the clip others wait for.
        return await asyncio.shield(job)

    # -- control endpoints -----------------------------------------------------------

    async def _ctl_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _ctl_config(self, request: web.Request) -> web.Response:
        try:
            self.configure(**await request.json())
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"ok": True})

    async def _ctl_when(self, request: web.Request) -> web.Response:
        try:
            spec = await request.json()
            rule = self.when(str(spec.pop("match", "")), **spec)
        except (ValueError, TypeError, AttributeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(asdict(rule))

    async def _ctl_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    async def _ctl_restart(self, request: web.Request) -> web.Response:
        try:
            down_s = float((await request.json()).get("down_s", 1.0))
        except (ValueError, TypeError, AttributeError):
            down_s = 1.0
        # After this answer has gone out: the runner stops, so not from inside the handler.
        task = asyncio.get_running_loop().create_task(self._restart_later(down_s))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return web.json_response({"ok": True, "down_s": down_s}, status=202)

    async def _restart_later(self, down_s: float) -> None:
        await asyncio.sleep(0.05)
        await self.restart(down_s)


def _pick(value: float | None, default: float | None) -> Any:
    return default if value is None else value


def _command(prompt: str, *names: str) -> str | None:
    """A text command like `--duration 5` (or `--dur 5`) from the prompt."""
    for name in names:
        found = re.search(rf"--{name}\s+(\S+)", prompt)
        if found:
            return found.group(1)
    return None


async def _make_clip(path: Path, seconds: int, width: int, height: int, fps: int, *,
                     audio: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp.mp4")
    args = ["-f", "lavfi", "-i", f"testsrc=size={width}x{height}:rate={fps}:duration={seconds}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}",
                 "-c:a", "aac", "-b:a", "64k"]
    args += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
             "-movflags", "+faststart", str(tmp)]
    proc = await asyncio.create_subprocess_exec(
        imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin",
        "-y", *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), FFMPEG_TIMEOUT_S)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise
    if proc.returncode != 0:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise RuntimeError(f"ffmpeg failed: {stderr.decode(errors='replace')[-400:]}")
    os.replace(tmp, path)  # other processes may race to the same cache file: last one wins
    return path


@contextlib.asynccontextmanager
async def running_fake_ark(**kwargs: Any) -> AsyncIterator[FakeArk]:
    """A FakeArk served on this loop for the duration of the block (FakeArk's kwargs)."""
    fake = FakeArk(**kwargs)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


class FakeArkThread(ServedInThread[FakeArk]):
    """A FakeArk served by its own event loop in a daemon thread, for sync code.

    `with FakeArkThread(**kwargs) as fake:` yields the FakeArk (started). Its switches may be
    set from the calling thread; `fake.restart_blocking(down_s)` and `call(fn, ...)` run on
    the server's loop.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(FakeArk(**kwargs), name="fake-ark")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--queued-s", type=float, default=1.0)
    parser.add_argument("--running-s", type=float, default=3.0)
    parser.add_argument("--url-ttl-s", type=float, default=None)
    args = parser.parse_args()

    fake = FakeArk(api_key=args.api_key, port=args.port, queued_s=args.queued_s,
                   running_s=args.running_s, url_ttl_s=args.url_ttl_s)
    serve_until_interrupted(fake, lambda: (
        f"fake Ark on {fake.base_url} (key {args.api_key!r}); Ctrl-C stops it\n"
        f"  export VIDEO_PROVIDER=ark ARK_BASE_URL={fake.base_url} "
        f"ARK_API_KEY={args.api_key}"))


if __name__ == "__main__":
    main()
