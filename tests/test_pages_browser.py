"""The demo page at / and the /ops dashboard, in a real browser and over HTTP.

The browser is Debian's Chromium (`chromium`, installed by ops/bootstrap.sh) driven by
Playwright's bundled driver: nothing is downloaded at test time (never `playwright
install`). The pages run against real API and worker processes on the test's database.

VIDEO_TASKS_SCREENSHOTS=1 also saves docs/screenshots/demo.png and ops.png (the README's),
from the same runs.
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import shutil
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from ops.ports import free_port
from service import auth
from service.api import dev_login, pages
from service.api.app import create_app
from service.doctor import snapshot
from service.settings import PROJECT_DIR, Settings
from tests.helpers import ServiceProcesses

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS_VARIABLE = "VIDEO_TASKS_SCREENSHOTS"
SCREENSHOTS_DIR = PROJECT_DIR / "docs" / "screenshots"
METRICS_TOKEN = "ops-test-token"
# The mini-program's screen (iPhone SE/6/7/8), which the demo page is laid out for.
PHONE = {"width": 375, "height": 667}
DESKTOP = {"width": 1280, "height": 1000}


def screenshots_wanted() -> bool:
    return os.environ.get(SCREENSHOTS_VARIABLE, "") not in ("", "0")


# ---- the browser ----------------------------------------------------------------------

@pytest.fixture
def browser() -> Iterator[Any]:
    """A Chromium for one test: Playwright's sync API keeps an event loop running in this
    thread while it lives, which the asyncio tests of this module must not meet."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no Chromium at {CHROMIUM}: `apt-get install chromium` (ops/bootstrap.sh "
                    "installs it when run as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # As root Chromium needs --no-sandbox, which Playwright passes by default.
        launched = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield launched
        finally:
            launched.close()


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def watch(page: Any) -> list[str]:
    """The page's script errors and console errors (a CSP refusal among them); the
    failed loads that are the API's answers (400, 429) are what the page shows."""
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda message: problems.append(message.text) if (
        message.type == "error" and not message.text.startswith("Failed to load resource"))
        else None)
    return problems


# ---- the demo page --------------------------------------------------------------------

def test_the_demo_page_makes_a_video_plays_it_and_shows_the_apis_errors(
        processes: ServiceProcesses, browser: Any) -> None:
    port = free_port()
    # video_url is written by the worker: both must name this API (the test stack's
    # own PUBLIC_BASE_URL is a placeholder).
    public = f"http://127.0.0.1:{port}"
    # One create a minute: the second submit meets the 429 with its Retry-After.
    api = processes.start_api(api_port=port, public_base_url=public, user_creates_per_minute=1)
    processes.start_worker(video_provider="ffmpeg", public_base_url=public)
    context = browser.new_context(viewport=PHONE, locale="zh-CN")
    page = context.new_page()
    problems = watch(page)
    page.goto(f"{api.url}/")
    assert page.evaluate("document.documentElement.lang") == "zh-CN"
    expect(page.locator("#who")).to_contain_text("dev:demo-")  # the development login

    # A 400 is shown next to the field it names.
    page.fill("#theme", "品质保证")
    page.click("#submit")
    expect(page.locator("#product_name-error")).to_contain_text("product_name must not be empty")
    expect(page.locator("#product_name")).to_have_attribute("aria-invalid", "true")
    assert page.locator("#task").is_hidden()

    # Create, follow the progress, play the video.
    page.fill("#product_name", "高强度螺栓")
    expect(page.locator("#product_name")).not_to_have_attribute("aria-invalid", "true")
    page.evaluate("""() => {
        window.seenStages = [];
        new MutationObserver(() => window.seenStages.push(
            document.getElementById('stage').textContent))
          .observe(document.getElementById('stage'), {childList: true, characterData: true,
                                                      subtree: true});
    }""")
    page.click("#submit")
    expect(page.locator("#task")).to_be_visible()
    expect(page.locator("#task-name")).to_have_text("高强度螺栓")
    page.wait_for_function("() => document.getElementById('player').readyState >= 3",
                           timeout=90_000)
    expect(page.locator("#stage")).to_have_text("已完成")
    assert page.evaluate("document.getElementById('bar').value") == 100
    assert page.evaluate("document.getElementById('player').duration") == pytest.approx(5, abs=0.3)
    stages = set(page.evaluate("window.seenStages"))
    assert "已完成" in stages
    assert stages <= {"排队中…", "生成第 1/1 段", "合成视频中…", "上传中…", "已完成"}, stages

    # "My videos" lists it, done.
    task_id = page.evaluate("window.demoState.taskId")
    mine = page.locator(f'#mine button[data-task-id="{task_id}"]')
    expect(mine).to_contain_text("高强度螺栓")
    expect(mine.locator(".badge")).to_have_text("已完成")
    if screenshots_wanted():
        SCREENSHOTS_DIR.mkdir(parents=True, exist_ok=True)
        page.evaluate("document.getElementById('player').currentTime = 2.5")
        page.wait_for_function("() => document.getElementById('player').readyState >= 2")
        page.screenshot(path=str(SCREENSHOTS_DIR / "demo.png"), full_page=True)

    # A second create within the minute: 429, and the button waits out Retry-After.
    page.click("#submit")
    message = page.locator("#form-message")
    expect(message).to_contain_text("秒后可再试")
    expect(page.locator("#submit")).to_be_disabled()
    first = _seconds_left(message.text_content())
    assert 1 < first <= 60
    page.wait_for_timeout(2100)
    assert _seconds_left(message.text_content()) < first  # counting down

    # The English toggle, remembered.
    page.click("#lang")
    assert page.evaluate("document.documentElement.lang") == "en"
    expect(page.locator("#stage")).to_have_text("Done")
    expect(message).to_contain_text("try again in")
    page.reload()
    expect(page.locator("h1")).to_have_text("AI marketing video")
    assert not problems, problems
    context.close()


def _seconds_left(text: str | None) -> int:
    numbers = re.findall(r"(\d+) 秒后可再试|try again in (\d+) s", text or "")
    assert numbers, text
    return int(next(n for n in numbers[-1] if n))


# ---- the dashboard --------------------------------------------------------------------

@dataclass
class Burst:
    """Many clients creating and polling through the API, in a thread, until stopped
    (at most `max_s`): more transactions at once than PgBouncer has server connections."""

    url: str
    clients: int = 48
    max_s: float = 40.0

    def __post_init__(self) -> None:
        self.statuses: collections.Counter[int] = collections.Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Burst:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    async def _run(self) -> None:
        deadline = time.monotonic() + self.max_s
        timeout = aiohttp.ClientTimeout(total=15)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            async def client(number: int) -> None:
                body = {"product_name": f"螺栓 {number}", "theme": "品质保证", "duration": 5,
                        "type": "video"}
                while not self._stop.is_set() and time.monotonic() < deadline:
                    try:
                        async with http.post(f"{self.url}/api/generate-video",
                                             json=body) as resp:
                            created = await resp.json()
                            self.statuses[resp.status] += 1
                        if resp.status == 202:
                            async with http.get(f"{self.url}/api/progress/"
                                                f"{created['task_id']}") as resp:
                                await resp.read()
                                self.statuses[resp.status] += 1
                    except (aiohttp.ClientError, TimeoutError):
                        self.statuses[0] += 1

            await asyncio.gather(*(client(i) for i in range(self.clients)))


def test_ops_shows_the_pools_and_the_queue_moving_during_a_burst(
        processes: ServiceProcesses, browser: Any) -> None:
    metrics_port = free_port()
    # An app pool larger than PgBouncer's (6 in the tests): clients queue in PgBouncer.
    api = processes.start_api(metrics_token=METRICS_TOKEN, metrics_port=metrics_port,
                              app_pool_max=12)
    processes.start_worker(video_provider="simulated", simulated_part_s=0.2)
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    problems = watch(page)
    page.goto(f"{api.url}/ops#token={METRICS_TOKEN}")
    expect(page.locator("#verdict")).to_have_text(re.compile(r"^(OK|WARNING|CRITICAL)$"),
                                                  timeout=15_000)
    assert "token" not in page.url  # the fragment is taken out of the address bar
    with Burst(api.url) as burst:
        # cl_waiting is the second series of the pools chart (after cl_active).
        page.wait_for_function(
            "() => window.opsState.charts.pools.data[2].some((v) => v > 0)", timeout=30_000)
        page.wait_for_function(
            "() => window.opsState.series.pending.some((v) => v > 0)"
            " && window.opsState.series.running.some((v) => v > 0)", timeout=20_000)
        if screenshots_wanted():
            page.wait_for_timeout(4000)  # a few more points on every chart
            SCREENSHOTS_DIR.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS_DIR / "ops.png"), full_page=True)
    assert burst.statuses[202] > 0, burst.statuses
    state = page.evaluate("""() => ({
        waiting: Math.max(...window.opsState.series.cl_waiting.filter((v) => v != null)),
        samples: window.opsState.samples,
        verdict: document.getElementById('verdict').textContent,
        checks: document.querySelectorAll('#checks tbody tr').length,
        pools: document.querySelectorAll('#pools tbody tr').length,
    })""")
    assert state["waiting"] > 0 and state["samples"] >= 2, state
    assert state["verdict"] in {"OK", "WARNING", "CRITICAL"}
    assert state["checks"] > 10 and state["pools"] >= 1, state
    assert not problems, problems
    context.close()


# ---- the routes over HTTP ---------------------------------------------------------------

@dataclass(frozen=True)
class Served:
    url: str  # the public port
    metrics_url: str  # METRICS_HOST:METRICS_PORT


@pytest.fixture
async def served(settings: Settings) -> AsyncIterator[Served]:
    """The API in this process with METRICS_TOKEN set, on a public and a metrics port."""
    metrics_port, port = free_port(), free_port()
    runner = web.AppRunner(create_app(settings.replace(metrics_port=metrics_port,
                                                       metrics_token=METRICS_TOKEN)))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield Served(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}")
    await runner.cleanup()


@pytest.mark.asyncio
async def test_dev_login_answers_a_token_of_a_dev_openid(served: Served, settings: Settings,
                                                         http: aiohttp.ClientSession) -> None:
    async with http.post(f"{served.url}{dev_login.PATH}", json={"user": "alice"}) as resp:
        assert resp.status == 200
        answer = await resp.json()
    assert answer["expires_in"] == settings.auth_token_ttl_s
    assert auth.verify(answer["token"], secret=settings.auth_token_secret) == "dev:alice"
    headers = {"Authorization": f"Bearer {answer['token']}"}
    async with http.get(f"{served.url}/api/tasks", headers=headers) as resp:
        assert resp.status == 200 and (await resp.json())["tasks"] == []


@pytest.mark.asyncio
@pytest.mark.parametrize(("body", "field"), [
    ({}, "user"), ({"user": ""}, "user"), ({"user": "a b"}, "user"),
    ({"user": "x" * 33}, "user"), ({"user": "alice\n"}, "user"), ({"user": 7}, "user"),
    ({"user": "alice", "openid": "o1"}, "openid"), (["alice"], "body"),
])
async def test_dev_login_refuses_bad_input_naming_the_field(
        served: Served, http: aiohttp.ClientSession, body: Any, field: str) -> None:
    async with http.post(f"{served.url}{dev_login.PATH}", json=body) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert (error["code"], error["field"]) == ("validation_error", field)


def test_dev_login_exists_only_where_dev_login_is_on(tmp_path: Path) -> None:
    def paths(settings: Settings) -> set[str]:
        return {r.canonical for r in create_app(settings).router.resources()}

    assert dev_login.PATH in paths(Settings(media_dir=tmp_path))
    assert dev_login.PATH not in paths(Settings(media_dir=tmp_path, dev_login=False))
    assert dev_login.PATH not in paths(Settings(media_dir=tmp_path, wechat_appid="wx1",
                                                wechat_secret="s", content_check=False))


@pytest.mark.asyncio
async def test_ops_is_protected_like_metrics(served: Served, settings: Settings,
                                             http: aiohttp.ClientSession) -> None:
    async with http.get(f"{served.url}/ops") as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        async with http.get(f"{served.url}/ops/data", headers=headers) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == "Bearer"
    bearer = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    async with http.get(f"{served.url}/ops/data", headers=bearer) as resp:
        assert resp.status == 200
        data = await resp.json()
    assert set(data["points"]) == set(snapshot.POINTS)
    assert data["verdict"] in {"OK", "WARNING", "CRITICAL"}
    assert data["points"]["pg_max_connections"] > 0
    assert data["app_pool"]["stats"]["pool_max"] == settings.app_pool_max
    # The metrics listener serves the page, its files and its data without a token.
    for path in ("/ops", "/ops/data", "/static/ops.js", "/static/uPlot.iife.min.js"):
        async with http.get(f"{served.metrics_url}{path}") as resp:
            assert resp.status == 200, path
    # Without METRICS_TOKEN, the public port has neither (as it has no /metrics).
    assert {r.canonical for r in create_app(settings).router.resources()} >= {"/ops"}
    plain = web.AppRunner(create_app(settings.replace(metrics_port=0)))
    await plain.setup()
    port = free_port()
    await web.TCPSite(plain, "127.0.0.1", port).start()
    try:
        for path in ("/ops", "/ops/data", "/metrics"):
            async with http.get(f"http://127.0.0.1:{port}{path}", headers=bearer) as resp:
                assert resp.status == 404, path
                assert (await resp.json())["error"]["code"] == "not_found"
    finally:
        await plain.cleanup()


@pytest.mark.asyncio
async def test_the_pages_serve_their_own_files_only(served: Served,
                                                    http: aiohttp.ClientSession) -> None:
    async with http.get(f"{served.url}/") as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
        assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
        html = await resp.text()
    assert '<html lang="zh-CN">' in html and "/static/demo.js" in html
    for name, (_, content_type) in pages.ASSETS.items():
        async with http.get(f"{served.url}/static/{name}") as resp:
            assert resp.status == 200 and resp.content_type == content_type, name
    for name in ("index.html", "..%2Fpages.py", "vendor", "nothing.js"):
        async with http.get(f"{served.url}/static/{name}") as resp:
            assert resp.status == 404, name
            assert resp.content_type == "application/json"
    # No page loads anything from elsewhere (it works offline).
    for name in ("index.html", "ops.html", "demo.js", "ops.js", "demo.css", "ops.css"):
        text = (pages.STATIC_DIR / name).read_text()
        assert not re.search(r"(src|href)=\"(https?:)?//", text), name
        assert "cdn" not in text.lower(), name
    assert (pages.STATIC_DIR / "vendor" / "uplot" / "LICENSE").read_text().startswith(
        "The MIT License")


# ---- one sample for every viewer ---------------------------------------------------------

@pytest.mark.asyncio
async def test_concurrent_viewers_share_one_doctor_sample(settings: Settings,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshot, "IDLE_CLOSE_S", 1.5)
    snaps = snapshot.Snapshots(settings)
    try:
        reports = await asyncio.gather(*(snaps.report() for _ in range(20)))
        assert snaps.samples_taken == 1
        assert all(r is reports[0] for r in reports)
        assert await snaps.report() is reports[0]  # younger than MIN_INTERVAL_S
        await asyncio.sleep(snapshot.MIN_INTERVAL_S + 0.1)
        again = await snaps.report()
        assert snaps.samples_taken == 2 and again is not reports[0]
        points = snapshot.points(again, None)
        assert points["pg_max_connections"] and points["pending"] == 0
        # Two reads of SHOW STATS: the rates are there.
        assert points["xact_per_s"] is not None
        assert points["app_pool_size"] is None  # no pool given
        # Nobody looking: the probe's connections are closed.
        await asyncio.sleep(snapshot.IDLE_CLOSE_S + 0.5)
        assert snaps._probe is None
        await snaps.report()
        assert snaps.samples_taken == 3
    finally:
        await snaps.close()


def test_the_points_need_no_database(tmp_path: Path) -> None:
    """A sample whose parts were all unreadable: every point is None, nothing raises."""
    from service.doctor import checks, probe
    from service.doctor.report import Report

    down = probe.Failure("no answer")
    sample = probe.Sample(direct=down, bouncer=down, console=down, postgres=down, queue=down)
    settings = Settings(media_dir=tmp_path)
    report = Report(checks.evaluate(settings, sample), sample, settings)
    found = snapshot.points(report, None)
    assert set(found) == set(snapshot.POINTS) and set(found.values()) == {None}
    data = snapshot.dashboard_json(report, None)
    assert data["verdict"] == "CRITICAL" and data["doctor"]["recommendations"]


def test_the_package_ships_the_pages() -> None:
    text = (PROJECT_DIR / "pyproject.toml").read_text()
    for pattern in ('"api/static/*"', '"api/static/vendor/uplot/*"'):
        assert pattern in text
    shipped = {p.relative_to(pages.STATIC_DIR).as_posix() for p in pages.STATIC_DIR.rglob("*")
               if p.is_file()}
    needed = {file for file, _ in pages.ASSETS.values()} | {"index.html", "ops.html"}
    assert needed <= shipped


# ---- the spec -------------------------------------------------------------------------

# The operations of service.api.pages and service.api.dev_login.
PAGES_PATHS = [pages.DEMO_PATH, pages.ASSET_PATH, pages.OPS_PATH, pages.OPS_DATA_PATH,
               dev_login.PATH]


def test_the_pages_answer_as_the_spec_says(databases: Any) -> None:
    """schemathesis (every phase and check) on the pages' operations, with what
    tests/test_openapi.py's run has off: DEV_LOGIN and METRICS_TOKEN on."""
    import schemathesis
    import schemathesis.engine
    from schemathesis.engine import events as st_events

    from service.api import openapi
    from tests.fakes.threaded import ServedInThread
    from tests.test_openapi import Run, _record_scenario, _ServedApp

    with databases.copy("pages_spec") as database:
        app_settings = database.settings.replace(metrics_port=free_port(),
                                                 metrics_token=METRICS_TOKEN)
        assert app_settings.dev_login
        served = _ServedApp(create_app(app_settings), free_port())
        with ServedInThread(served, name="pages-live-api"):
            config = schemathesis.Config.from_dict({
                "auth": {"openapi": {"metricsToken": {"bearer": METRICS_TOKEN}}},
                "generation": {"max-examples": 20, "deterministic": True,
                               "database": "none"},
                # No links among these operations: nothing stateful to follow.
                "phases": {"stateful": {"enabled": False}},
                "checks": {"enabled": True},
                "continue-on-failure": True,
                "cache": {"enabled": False},
            })
            loaded = schemathesis.openapi.from_url(
                f"http://127.0.0.1:{served.port}{openapi.SPEC_PATH}", config=config,
            ).include(path=PAGES_PATHS)
            run = Run()
            for event in schemathesis.engine.from_schema(loaded).execute():
                if isinstance(event, st_events.ScenarioFinished):
                    _record_scenario(run, event.recorder)
                elif isinstance(event, st_events.NonFatalError):
                    run.errors.append(f"{event.label}: {event.info.format()}")
                elif isinstance(event, st_events.FatalError):
                    run.errors.append(f"fatal: {event.exception!r}")
    assert not run.errors
    assert {("GET /", 200), ("GET /ops/data", 200), ("GET /ops/data", 401),
            ("POST /api/dev-login", 200), ("POST /api/dev-login", 400)} <= run.answered
    assert not run.failures, "\n".join(dict.fromkeys(run.failures))
