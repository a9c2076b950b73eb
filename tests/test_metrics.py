"""/metrics: Prometheus text that parses, moves with requests, and stays off the public port."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from ops.stack import free_port, port_open
from service import db, metrics
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

    assert value(after, "video_tasks_pool_pool_max", pool="api") == settings.app_pool_max
    assert (value(after, "video_tasks_pool_requests_num", pool="api")
            > value(before, "video_tasks_pool_requests_num", pool="api"))
    for key in metrics.POOL_STATS_KEYS:
        assert (f"video_tasks_pool_{key}", frozenset({("pool", "api")})) in after
    assert value(after, "video_tasks_db_up") == 1
    assert ("video_tasks_tasks", frozenset({("status", "pending")})) in after
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
    assert not any(name == "video_tasks_tasks" for name, _ in samples)
    assert ("video_tasks_pool_requests_errors", frozenset({("pool", "api")})) in samples


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
        await asyncio.sleep(1)  # the claim loop polls meanwhile
        second = await scrape(http, url)
    finally:
        # SIGTERM: the worker hands unfinished tasks back instead of leaving leases.
        worker.signal(signal.SIGTERM)
        await asyncio.to_thread(worker.wait, 30)
    assert value(second, "video_tasks_pool_pool_max", pool="worker") > 0
    assert (value(second, "video_tasks_pool_requests_num", pool="worker")
            > value(first, "video_tasks_pool_requests_num", pool="worker"))
    assert value(second, "video_tasks_worker_concurrency") >= 1
    assert ("video_tasks_worker_tasks_completed_total", frozenset()) in second
    assert ("video_tasks_worker_running_tasks", frozenset()) in second
    assert value(second, "video_tasks_db_up") == 1
