"""GET /api/openapi.json: valid OpenAPI 3.1, the same routes and rules as the app, and
the live API answers as it says (schemathesis, stateless and stateful).

The spec is built from the constants the validators use; these tests make sure the
routes and the rules that are not one constant (the characters a text may hold) agree
with what the app does, and that every answer of the running API conforms.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
import schemathesis.engine
from aiohttp import web
from openapi_spec_validator import OpenAPIV31SpecValidator
from schemathesis.engine import events as st_events

from ops.stack import free_port
from service import auth
from service.api import app as api_app
from service.api import openapi, validation
from service.api.app import create_app
from service.settings import Settings
from tests.conftest import Databases
from tests.fakes.threaded import ServedInThread
from tests.fakes.wechat import DEFAULT_APPID, DEFAULT_SECRET, FakeWeChatThread
from tests.helpers import WRITE_UP_REQUEST

SPEC_URL_PATH = openapi.SPEC_PATH


def spec_settings(tmp_path: Path, **changes: Any) -> Settings:
    return Settings(media_dir=tmp_path / "media", **changes)


# ---- (a) valid OpenAPI 3.1 ------------------------------------------------------------

SETTINGS_VARIANTS = {
    "local": {},
    # What ENVIRONMENT=production turns on, without the rest production asks for.
    "auth-required": {"auth_required": True},
    "cloud-run": {"auth_trust_wx_openid_header": True, "wechat_appid": DEFAULT_APPID,
                  "wechat_secret": DEFAULT_SECRET},
    "s3": {"storage_backend": "s3", "s3_bucket": "videos"},
    "metrics-token": {"metrics_token": "metrics-secret"},
}


@pytest.mark.parametrize("changes", SETTINGS_VARIANTS.values(), ids=SETTINGS_VARIANTS.keys())
def test_the_spec_is_valid_openapi_3_1(tmp_path, changes):
    spec = openapi.build_spec(spec_settings(tmp_path, **changes))
    assert spec["openapi"].startswith("3.1.")
    errors = [error.message for error in OpenAPIV31SpecValidator(spec).iter_errors()]
    assert not errors


# ---- (b) the same routes and rules as the app ------------------------------------------

def routes(app: web.Application) -> set[tuple[str, str]]:
    """(path, method) of every route, as the spec spells them."""
    found = set()
    for resource in app.router.resources():
        for route in resource:
            # aiohttp answers HEAD on every GET route (allow_head): GET without the body,
            # as HTTP defines it, so the spec lists the GET alone.
            if route.method != "HEAD":
                found.add((resource.canonical, route.method.lower()))
    return found


def spec_routes(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, item in spec["paths"].items() for method in item}


@pytest.mark.parametrize("changes", SETTINGS_VARIANTS.values(), ids=SETTINGS_VARIANTS.keys())
def test_the_spec_lists_the_apps_routes(tmp_path, changes):
    settings = spec_settings(tmp_path, **changes)
    assert spec_routes(openapi.build_spec(settings)) == routes(create_app(settings))


def create_body(settings: Settings) -> dict[str, Any]:
    return openapi.build_spec(settings)["components"]["schemas"]["CreateTask"]


def creates(settings: Settings, key: str | None = None, **changes: Any) -> bool:
    try:
        validation.create_request({**WRITE_UP_REQUEST, "duration": settings.duration_min_s,
                                   **changes}, settings, key)
    except validation.Invalid:
        return False
    return True


def test_the_create_bounds_are_the_validators(tmp_path):
    settings = spec_settings(tmp_path, text_max_chars=12, duration_min_s=10,
                             duration_max_s=30)
    spec = openapi.build_spec(settings)
    text = spec["components"]["schemas"]["VideoText"]
    fields = create_body(settings)["properties"]
    assert text["maxLength"] == settings.text_max_chars and text["minLength"] == 1
    for name in ("product_name", "theme"):
        assert fields[name] == {"$ref": "#/components/schemas/VideoText"}
        assert creates(settings, **{name: "字" * settings.text_max_chars})
        assert not creates(settings, **{name: "字" * (settings.text_max_chars + 1)})
        # maxLength counts what is sent, whitespace around it too.
        assert not creates(settings, **{name: "字" + " " * settings.text_max_chars})
    duration = fields["duration"]
    assert (duration["minimum"], duration["maximum"]) == (10, 30)
    assert duration["type"] == "integer"
    for seconds, ok in ((9, False), (10, True), (30, True), (31, False)):
        assert creates(settings, duration=seconds) is ok
    assert fields["type"]["enum"] == sorted(validation.VIDEO_TYPES)
    assert not creates(settings, type="image")
    assert create_body(settings)["additionalProperties"] is False
    assert set(create_body(settings)["required"]) == validation.CREATE_FIELDS - {"template_id"}


def test_the_header_and_parameter_rules_are_the_validators(tmp_path):
    settings = spec_settings(tmp_path, wechat_appid=DEFAULT_APPID,
                             wechat_secret=DEFAULT_SECRET)
    spec = openapi.build_spec(settings)
    create = spec["paths"]["/api/generate-video"]["post"]
    (key,) = [p for p in create["parameters"] if p["name"] == "Idempotency-Key"]
    longest = validation.IDEMPOTENCY_KEY_MAX_CHARS
    assert key["in"] == "header" and key["schema"]["maxLength"] == longest
    key_pattern = re.compile(key["schema"]["pattern"])
    for value in ("k" * longest, "order 42/7", "~!"):
        assert creates(settings, value) and key_pattern.search(value)
    for value in ("k" * (longest + 1), "", "ключ", "a\x7fb", "a\tb"):
        assert not creates(settings, value)
        assert len(value) > longest or not key_pattern.search(value)

    fields = create_body(settings)["properties"]
    assert set(fields) == validation.CREATE_FIELDS
    assert fields["template_id"]["pattern"] == validation.TEMPLATE_ID_PATTERN.pattern
    assert fields["template_id"]["type"] == ["string", "null"]
    # Without WECHAT_APPID a template is refused (and null, no template, is not).
    without = spec_settings(tmp_path)
    assert create_body(without)["properties"]["template_id"]["type"] == "null"
    assert creates(without, template_id=None) and not creates(without, template_id="t1")

    login = spec["paths"]["/api/login"]["post"]
    code = login["requestBody"]["content"]["application/json"]["schema"]["properties"]["code"]
    assert code["maxLength"] == api_app.LOGIN_CODE_MAX_CHARS
    assert not re.search(code["pattern"], " \t\u3000") and re.search(code["pattern"], " x ")

    listing = {p["name"]: p["schema"] for p in spec["paths"]["/api/tasks"]["get"]["parameters"]}
    assert (listing["limit"]["minimum"], listing["limit"]["maximum"]) == (
        1, api_app.TASKS_PAGE_MAX)
    assert listing["limit"]["default"] == api_app.TASKS_PAGE_DEFAULT


def security(spec: dict[str, Any], path: str, method: str) -> list[dict[str, list[str]]]:
    return spec["paths"][path][method]["security"]


def test_who_may_call_follows_the_settings(tmp_path):
    local = openapi.build_spec(spec_settings(tmp_path))
    assert security(local, "/api/generate-video", "post") == [{"bearerAuth": []}, {}]
    assert security(local, "/api/progress/{task_id}", "get") == [{"bearerAuth": []}, {}]
    assert security(local, "/api/tasks", "get") == [{"bearerAuth": []}]
    assert security(local, "/api/login", "post") == []
    schemes = local["components"]["securitySchemes"]
    assert schemes["wxOpenid"]["type"] == "apiKey" and schemes["wxOpenid"]["in"] == "header"
    assert schemes["wxOpenid"]["name"] == "X-WX-OPENID"
    assert "Cloud Run" in schemes["wxOpenid"]["description"]

    required = openapi.build_spec(spec_settings(tmp_path, auth_required=True))
    assert security(required, "/api/generate-video", "post") == [{"bearerAuth": []}]
    cloud_run = openapi.build_spec(spec_settings(tmp_path, auth_required=True,
                                                 auth_trust_wx_openid_header=True))
    assert security(cloud_run, "/api/tasks", "get") == [{"bearerAuth": []}, {"wxOpenid": []}]

    assert security(local, "/metrics", "get") == []
    assert set(local["paths"]["/metrics"]["get"]["responses"]) == {"404", "405"}
    with_token = openapi.build_spec(spec_settings(tmp_path, metrics_token="metrics-secret"))
    assert security(with_token, "/metrics", "get") == [{"metricsToken": []}]


def test_the_text_pattern_is_the_validators_character_rule(tmp_path):
    """Every character of the BMP, and both ends of every run of one category above it,
    inside a text, alone, and (whitespace, or refused inside) at either end: the pattern
    accepts exactly what validation does."""
    settings = spec_settings(tmp_path)
    pattern = re.compile(openapi.video_text_pattern())
    astral_edges = {cp + d for low, high in _category_runs(0x10000, sys.maxunicode + 1)
                    for cp in (low, high) for d in (-1, 0, 1)}
    codepoints = [*range(0x10000), *sorted(cp for cp in astral_edges
                                           if 0x10000 <= cp <= sys.maxunicode)]
    disagree = []

    def agree(text: str) -> bool:
        accepted = creates(settings, product_name=text)
        if bool(pattern.search(text)) != accepted:
            disagree.append((f"U+{cp:04X}", text, accepted))
        return accepted

    for cp in codepoints:
        if 0xD800 <= cp <= 0xDFFF:
            continue  # no JSON body carries a lone surrogate (invalid JSON, 400)
        ch = chr(cp)
        inside, alone = agree(f"a{ch}b"), agree(ch)
        if ch.isspace() or not inside or not alone:
            agree(f"{ch}a")
            agree(f"a{ch}")
    assert not disagree[:20]


def _category_runs(start: int, stop: int) -> Iterator[tuple[int, int]]:
    """(first, last) code point of each run of one general category, and emoji or not."""
    def kind(cp: int) -> tuple[str, bool]:
        return unicodedata.category(chr(cp)), validation.is_emoji(chr(cp))
    first, current = start, kind(start)
    for cp in range(start + 1, stop):
        k = kind(cp)
        if k != current:
            yield first, cp - 1
            first, current = cp, k
    yield first, stop - 1


# ---- (c) the live API answers as the spec says -----------------------------------------

@dataclass
class _ServedApp:
    """The API app on a real port, started and stopped on the loop of a ServedInThread."""

    app: web.Application
    port: int
    runner: web.AppRunner | None = None

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@dataclass(frozen=True)
class LiveApi:
    url: str
    settings: Settings
    # A login token of OPENID: the run sends it as bearerAuth, so template_id and
    # GET /api/tasks are reachable (schemathesis also tries without it, and made-up ones).
    token: str

    @property
    def spec_url(self) -> str:
        return f"{self.url}{SPEC_URL_PATH}"


OPENID = "openid-schemathesis"


@pytest.fixture(scope="module")
def live_api(databases: Databases) -> Iterator[LiveApi]:
    """The API served in this process on a real port, like conftest's `api`, but on an
    event loop of its own in a thread (schemathesis calls it with blocking requests from
    the test's thread), and for the module: one database copy of its own, in which the
    tests only create tasks. WeChat is the fake: login answers 400 invalid_code to
    made-up codes (rather than 503, not configured) and template_id is offered. The
    content check is off (test_content_safety.py tests its answers)."""
    with databases.copy("openapi") as database, FakeWeChatThread() as wechat:
        app_settings = database.settings.replace(
            metrics_port=free_port(), wechat_api_base=wechat.base_url,
            wechat_appid=DEFAULT_APPID, wechat_secret=DEFAULT_SECRET, content_check=False,
            # A made-up `since` from the future holds a poll this long, not 25 s.
            progress_wait_max_s=0.3)
        served = _ServedApp(create_app(app_settings), free_port())
        with ServedInThread(served, name="openapi-live-api"):
            token = auth.issue(OPENID, secret=app_settings.auth_token_secret,
                               ttl_s=app_settings.auth_token_ttl_s)
            yield LiveApi(f"http://127.0.0.1:{served.port}", app_settings, token)


def schemathesis_config(token: str) -> schemathesis.Config:
    return schemathesis.Config.from_dict({
        "auth": {"openapi": {"bearerAuth": {"bearer": token}}},
        # Bounded and repeatable: the same cases every run, in seconds. deterministic is
        # Hypothesis' derandomize; the engine runs it without a deadline.
        "generation": {"max-examples": 30, "deterministic": True, "database": "none"},
        "phases": {"stateful": {"max-steps": 6}},
        "checks": {"enabled": True},
        # Every finding of the run in one report, not the first of each operation.
        "continue-on-failure": True,
        # Nothing written into the checkout.
        "cache": {"enabled": False},
        "operations": [
            # Any code the run makes up is one WeChat never issued: 400 invalid_code is
            # the right answer to data the schema allows.
            {"include-path": "/api/login",
             "checks": {"positive_data_acceptance": {"expected-statuses": [
                 "2xx", "400", "429"]}}},
            # A `since` of the right shape may still be no date (30 February).
            {"include-path": "/api/progress/{task_id}",
             "checks": {"positive_data_acceptance": {"expected-statuses": [
                 "2xx", "400", "401", "404"]}}},
            # Likewise a made-up cursor: only the `next` of a page is one.
            {"include-path": "/api/tasks",
             "checks": {"positive_data_acceptance": {"expected-statuses": [
                 "2xx", "400", "401"]}}},
        ],
    })


@dataclass
class Run:
    """What a schemathesis run found and what it covered."""

    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # Phase name -> its status ("success", "failure", "skip", ...).
    phases: dict[str, str] = field(default_factory=dict)
    # (operation, status code) of every answer.
    answered: set[tuple[str, int]] = field(default_factory=set)


def run_schemathesis(spec_url: str, config: schemathesis.Config) -> Run:
    """`schemathesis run` in process: every phase (examples, coverage, fuzzing, stateful
    through the spec's links) with every check. The engine rather than the pytest
    plugin's from_fixture, which fails on pytest 9 (it sets Function._nodeid)."""
    loaded = schemathesis.openapi.from_url(spec_url, config=config)
    run = Run()
    for event in schemathesis.engine.from_schema(loaded).execute():
        if isinstance(event, st_events.ScenarioFinished):
            _record_scenario(run, event.recorder)
        elif isinstance(event, st_events.PhaseFinished):
            run.phases[event.phase.name.value] = event.status.value
        elif isinstance(event, st_events.NonFatalError):
            run.errors.append(f"{event.label}: {event.info.format()}")
        elif isinstance(event, st_events.FatalError):
            run.errors.append(f"fatal: {event.exception!r}")
    return run


def _record_scenario(run: Run, recorder: Any) -> None:
    for case_id, interaction in recorder.interactions.items():
        if interaction.response is not None and case_id in recorder.cases:
            label = recorder.cases[case_id].value.operation.label
            run.answered.add((label, interaction.response.status_code))
    for case_id, checks in recorder.checks.items():
        for check in checks:
            if check.failure_info is None:
                continue
            interaction = recorder.interactions.get(case_id)
            response = interaction.response if interaction else None
            answer = (f"{response.status_code} {response.content[:300]!r}" if response
                      else "no response")
            failure = check.failure_info.failure
            run.failures.append(f"{check.name}: {failure.title}: {failure.message}\n"
                                f"    {check.failure_info.code_sample}\n    -> {answer}")


def test_every_answer_conforms_to_the_spec(live_api):
    run = run_schemathesis(live_api.spec_url, schemathesis_config(live_api.token))
    assert not run.errors
    # The create's link was followed: tasks were made and their progress read.
    assert run.phases.get("stateful") == "success"
    assert {("POST /api/generate-video", 202), ("GET /api/progress/{task_id}", 200)} <= (
        run.answered)
    assert not run.failures, "\n".join(dict.fromkeys(run.failures))


# Requests the spec refuses, each answered 400 validation_error naming the field.
REFUSED = {
    # Found by the schemathesis run (then a 500, a 500 and a 202), and by probing (a 202,
    # a 500 and a 200).
    "type-object": pytest.param(
        "POST", "/api/generate-video", {"json": {**WRITE_UP_REQUEST, "type": {}}}, "type"),
    "type-array": pytest.param(
        "POST", "/api/generate-video", {"json": {**WRITE_UP_REQUEST, "type": [None]}},
        "type"),
    "text-over-maxLength": pytest.param(
        "POST", "/api/generate-video",
        {"json": {**WRITE_UP_REQUEST, "theme": "品" + "\u0085" * 100}}, "theme"),
    "template-id-newline": pytest.param(
        "POST", "/api/generate-video", {"json": {**WRITE_UP_REQUEST, "template_id": "t1\n"}},
        "template_id"),
    "limit-superscript": pytest.param(
        "GET", "/api/tasks", {"params": {"limit": "²"}}, "limit"),
    "limit-arabic-indic": pytest.param(
        "GET", "/api/tasks", {"params": {"limit": "٣"}}, "limit"),
    "unknown-field-status": pytest.param(
        "POST", "/api/generate-video", {"json": {**WRITE_UP_REQUEST, "status": "completed"}},
        "status"),
    "unknown-field-video-url": pytest.param(
        "POST", "/api/generate-video",
        {"json": {**WRITE_UP_REQUEST, "video_url": "https://example.com/v.mp4"}}, "video_url"),
    "duration-fraction": pytest.param(
        "POST", "/api/generate-video", {"json": {**WRITE_UP_REQUEST, "duration": 5.5}},
        "duration"),
}


@pytest.mark.parametrize(("method", "path", "request_args", "field_name"), REFUSED.values(),
                         ids=REFUSED.keys())
def test_what_the_spec_refuses_is_refused(live_api, method, path, request_args, field_name):
    answer = requests.request(method, f"{live_api.url}{path}", timeout=10,
                              headers={"Authorization": f"Bearer {live_api.token}"},
                              **request_args)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["field"] == field_name


def test_the_served_spec_is_the_built_one(live_api):
    first = requests.get(live_api.spec_url, timeout=10)
    assert first.status_code == 200
    assert first.headers["Content-Type"].startswith("application/json")
    assert first.json() == openapi.build_spec(live_api.settings)
    # Built once per settings: the same bytes again.
    assert requests.get(live_api.spec_url, timeout=10).content == first.content
