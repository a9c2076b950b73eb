"""/metrics: Prometheus text that parses, moves with requests, and stays off the public port."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import time
import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from ops.stack import free_port, port_open
from service import db, metrics, queries, tasks
from service.api.app import create_app

pytestmark = pytest.mark.asyncio

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
PROGRESS_ROUTE = "/api/progress/{task_id}"


@contextlib.asynccontextmanager
async def served(settings, **overrides: Any) -> AsyncIterator[tuple[str, str]]:
    """An API app in this process: (public base URL, metrics URL)."""
    app_settings = settings.replace(metrics_port=free_port(), **overrides)
    runner = web.AppRunner(create_app(app_settings))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield (f"http://127.0.0.1:{port}",
               f"http://127.0.0.1:{app_settings.metrics_port}/metrics")
    finally:
        await runner.cleanup()


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


async def scrape(http, url: str, **headers: str) -> Samples:
    async with http.get(url, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "text/plain"
        return parse(await resp.text())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_parse_and_move_with_requests(settings, http):
    async with served(settings) as (api, metrics_url):
        before = await scrape(http, metrics_url)
        for _ in range(3):
            async with http.get(f"{api}/api/progress/{uuid.uuid4()}") as resp:
                assert resp.status == 404
        for _ in range(2):
            async with http.get(f"{api}/healthz") as resp:
                assert resp.status == 200
        after = await scrape(http, metrics_url)

    requests = "video_tasks_http_requests_total"
    assert (value(after, requests, route=PROGRESS_ROUTE, method="GET", status="404")
            - value(before, requests, route=PROGRESS_ROUTE, method="GET", status="404")) == 3
    assert (value(after, requests, route="/healthz", method="GET", status="200")
            - value(before, requests, route="/healthz", method="GET", status="200")) == 2
    count = "video_tasks_http_request_duration_seconds_count"
    assert value(after, count, route=PROGRESS_ROUTE) - value(before, count,
                                                              route=PROGRESS_ROUTE) == 3
    # Routes are patterns, never raw paths with ids in them.
    routes = {dict(labels).get("route") for (name, labels) in after if name == requests}
    assert routes <= {PROGRESS_ROUTE, "/healthz"}

    assert value(after, "video_tasks_pool_max_connections", pool="api") == settings.app_pool_max
    assert (value(after, "video_tasks_pool_requests_total", pool="api")
            > value(before, "video_tasks_pool_requests_total", pool="api"))
    for metric in metrics.POOL_METRICS.values():
        assert (metric.sample_name, frozenset({("pool", "api")})) in after
    assert value(after, "video_tasks_db_up") == 1
    assert ("video_tasks_queue_tasks", frozenset({("status", "pending")})) in after
    assert ("video_tasks_finished_tasks_last_minute", frozenset({("status", "failed")})) in after
    assert ("video_tasks_queue_lag_seconds", frozenset()) in after


async def test_public_port_hides_metrics_without_a_token(settings, http):
    async with served(settings) as (api, _), http.get(f"{api}/metrics") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "not_found"


async def test_public_port_serves_metrics_with_the_bearer_token(settings, http):
    async with served(settings, metrics_token="s3cret-token") as (api, _):
        async with http.get(f"{api}/metrics") as resp:
            assert resp.status == 401
        async with http.get(f"{api}/metrics",
                            headers={"Authorization": "Bearer wrong"}) as resp:
            assert resp.status == 401
        samples = await scrape(http, f"{api}/metrics", Authorization="Bearer s3cret-token")
    assert value(samples, "video_tasks_db_up") == 1


async def test_a_scrape_answers_with_db_up_0_when_the_database_is_unreachable(settings):
    dead = settings.replace(pgbouncer_port=free_port(), database_url="")
    api_metrics = metrics.ServiceMetrics("api")
    api_metrics.pool = db.create_pool(dead, name="video-tasks-api")
    await api_metrics.pool.open(wait=False)  # its connections never come
    try:
        samples = parse((await api_metrics.render()).decode())
    finally:
        await api_metrics.pool.close()
    assert value(samples, "video_tasks_db_up") == 0
    assert not any(name.startswith(("video_tasks_queue_tasks", "video_tasks_finished"))
                   for name, _ in samples)
    assert ("video_tasks_pool_request_errors_total", frozenset({("pool", "api")})) in samples


async def test_worker_serves_its_metrics_on_its_own_port(processes, http):
    port = free_port()
    worker = processes.start_worker(worker_metrics_port=port, video_provider="simulated",
                                    simulated_part_s=0.05)
    try:
        deadline = time.monotonic() + 30
        while not port_open(port):
            assert worker.proc.poll() is None, worker.log()
            assert time.monotonic() < deadline, worker.log()
            await asyncio.sleep(0.1)
        url = f"http://127.0.0.1:{port}/metrics"
        first = await scrape(http, url)
        # The idle claim loop polls the database: its pool's request count must grow.
        second = await scrape(http, url)
        while (value(second, "video_tasks_pool_requests_total", pool="worker")
               <= value(first, "video_tasks_pool_requests_total", pool="worker")):
            assert time.monotonic() < deadline, worker.log()
            await asyncio.sleep(0.1)
            second = await scrape(http, url)
    finally:
        # SIGTERM: the worker hands unfinished tasks back instead of leaving leases.
        worker.signal(signal.SIGTERM)
        await asyncio.to_thread(worker.wait, 30)
    assert value(second, "video_tasks_pool_max_connections", pool="worker") > 0
    assert (value(second, "video_tasks_pool_requests_total", pool="worker")
            > value(first, "video_tasks_pool_requests_total", pool="worker"))
    assert value(second, "video_tasks_worker_concurrency") >= 1
    for counter in ("tasks_completed", "tasks_failed", "clip_creates",
                    "possible_duplicate_creates", "parts_reused", "clip_usage_tokens"):
        assert (f"video_tasks_worker_{counter}_total", frozenset()) in second
    assert ("video_tasks_worker_running_tasks", frozenset()) in second
    assert value(second, "video_tasks_db_up") == 1


def families(text: str) -> dict[str, str]:
    """{family name: type} of an exposition text."""
    return {f.name: f.type for f in text_string_to_metric_families(text)}


async def test_names_follow_prometheus_conventions(pool):
    api_metrics = metrics.ServiceMetrics("api")
    api_metrics.pool = pool
    worker = SimpleNamespace(running={}, settings=SimpleNamespace(worker_concurrency=4),
                             completed=1, failed=0, clip_creates=2,
                             possible_duplicate_creates=0, parts_reused=1, usage_tokens=99,
                             notifier=SimpleNamespace(outcomes={"sent": 3}))
    api_metrics.extra.append(metrics.worker_collector(worker))
    text = (await api_metrics.render()).decode()
    found = families(text)
    ours = {name: kind for name, kind in found.items() if name.startswith("video_tasks_")}
    assert len(ours) > 20
    for name, kind in ours.items():
        words = name.split("_")
        assert all(a != b for a, b in itertools.pairwise(words)), f"{name} stutters"
        assert not name.endswith(("_ms", "_num")), f"{name}: base units, whole words"
        assert kind in ("counter", "gauge", "histogram"), name
    sample_names = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
                    if line.startswith("video_tasks_")}
    for name in sample_names:
        family = name.removesuffix("_total")
        if name.endswith("_total"):
            assert ours[family] == "counter", name
        elif family in ours:
            assert ours[family] != "counter", f"{name}: a counter ends in _total"
    # Milliseconds from get_stats() are exported as seconds.
    parsed = parse(text)
    wait_ms = pool.get_stats().get("requests_wait_ms", 0)
    assert value(parsed, "video_tasks_pool_request_wait_seconds_total",
                 pool="api") == pytest.approx(wait_ms / 1000, abs=0.01)
    assert value(parsed, "video_tasks_worker_clip_usage_tokens_total") == 99


def insert_task(direct, status: str, *, finished_ago: str | None = None) -> None:
    running = status in {s.value for s in tasks.RUNNING}
    direct.execute(
        "INSERT INTO video_generation_tasks (task_id, product_name, theme, duration, "
        "total_parts, status, worker_id, claim_token, lease_expires_at, video_url, "
        "error_message, finished_at) VALUES (%(id)s, 'bolt', 'quality', 5, 1, %(status)s, "
        "%(worker)s, %(token)s, %(lease)s, %(url)s, %(error)s, "
        "now() - %(ago)s::interval)",
        {"id": uuid.uuid4(), "status": status,
         "worker": "w" if running else None, "token": uuid.uuid4() if running else None,
         "lease": "infinity" if running else None,
         "url": "http://x/v.mp4" if status == "completed" else None,
         "error": "no" if status == "failed" else None, "ago": finished_ago})


async def test_tasks_by_status_are_unfinished_now_and_finished_in_the_last_minute(pool,
                                                                                   direct):
    api_metrics = metrics.ServiceMetrics("api")
    api_metrics.pool = pool
    before = parse((await api_metrics.render()).decode())
    for status in ("pending", "pending", "generating", "merging"):
        insert_task(direct, status)
    insert_task(direct, "completed", finished_ago="1 second")
    insert_task(direct, "failed", finished_ago="2 seconds")
    # Finished before the window: not counted (a count since the beginning scans all).
    insert_task(direct, "completed", finished_ago="2 hours")
    after = parse((await api_metrics.render()).decode())

    def moved(name: str, status: str) -> float:
        return value(after, name, status=status) - value(before, name, status=status)

    unfinished = "video_tasks_queue_tasks"
    assert {s: moved(unfinished, s) for s in ("pending", "generating", "merging",
                                              "uploading")} == {
        "pending": 2, "generating": 1, "merging": 1, "uploading": 0}
    assert (unfinished, frozenset({("status", "uploading")})) in after
    assert not any(name == unfinished and dict(labels)["status"] in ("completed", "failed")
                   for name, labels in after)
    finished = "video_tasks_finished_tasks_last_minute"
    assert {s: moved(finished, s) for s in ("completed", "failed")} == {
        "completed": 1, "failed": 1}
    assert value(after, "video_tasks_db_up") == 1


async def test_counting_tasks_by_status_never_scans_the_whole_table(direct):
    with direct.transaction(force_rollback=True):
        direct.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(row[0] for row in direct.execute(
            "EXPLAIN " + queries.get("count_tasks_for_metrics"),
            {"finished_window_s": metrics.FINISHED_WINDOW_S}))
    assert "Seq Scan" not in plan, plan
    for index in ("claim_idx", "lease_idx", "finished_idx"):
        assert f"video_generation_tasks_{index}" in plan, plan
