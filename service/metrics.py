"""Prometheus metrics of one API or worker process, on a registry of its own.

Served on their own address (METRICS_HOST:METRICS_PORT for the API, process i of
API_PROCESSES on METRICS_PORT + i; WORKER_METRICS_PORT for a worker; port 0 turns the
listener off), and on the public port only with `Authorization: Bearer METRICS_TOKEN`.

Names (ops/README.md documents them; a benchmark scrapes them, keep them stable):
- video_tasks_http_requests_total{route,method,status}: answered requests; route is the
  route's pattern (/api/progress/{task_id}), never the raw path.
- video_tasks_http_request_duration_seconds{route}: histogram of answer times.
- video_tasks_pool_<key>{pool="api"|"worker"}: psycopg_pool's get_stats() at scrape time,
  each key a gauge (requests_wait_ms, requests_errors, pool_available, ...; the cumulative
  ones only grow, so rate() works on them).
- video_tasks_tasks{status}: tasks by status; video_tasks_queue_lag_seconds: age of the
  oldest runnable pending task. One query each per scrape, bounded by a short timeout.
- video_tasks_db_up: 1 when those queries answered, else 0 (and no task figures).
- video_tasks_worker_running_tasks, video_tasks_worker_concurrency,
  video_tasks_worker_tasks_completed_total, video_tasks_worker_tasks_failed_total.
- process_*: CPU, memory and file descriptors of the process.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
)
from prometheus_client import generate_latest as _generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from psycopg_pool import AsyncConnectionPool

from service import tasks

logger = logging.getLogger(__name__)

# The tasks and lag queries of one scrape give up after this; the scrape still answers.
SCRAPE_DB_TIMEOUT_S = 1.0
# Answer times from sub-millisecond reads to the 503 after POOL_TIMEOUT_S.
HTTP_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# psycopg_pool leaves a counter out until it first moves; these are always exported.
POOL_STATS_KEYS = (
    "pool_min", "pool_max", "pool_size", "pool_available", "requests_waiting",
    "requests_num", "requests_queued", "requests_wait_ms", "requests_errors", "usage_ms",
    "returns_bad", "connections_num", "connections_ms", "connections_errors",
    "connections_lost",
)
POOL_STATS_HELP = {
    "pool_size": "connections in the pool, lent out or being made",
    "pool_available": "idle connections in the pool",
    "requests_waiting": "requests waiting for a connection now",
    "requests_num": "connection requests so far",
    "requests_queued": "connection requests that had to wait so far",
    "requests_wait_ms": "milliseconds requests waited for a connection so far",
    "requests_errors": "connection requests that failed (timeout, queue full) so far",
    "usage_ms": "milliseconds connections were lent out so far",
    "connections_lost": "broken connections found so far",
}
# Methods beyond these are counted as "other": the label must stay small.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"

Collect = Callable[[], Iterable[Metric]]

# No `_created` series beside every counter and histogram: half the text, no use here.
disable_created_metrics()


class ServiceMetrics:
    """The metrics of one process; `component` ("api" or "worker") labels its pool."""

    def __init__(self, component: str) -> None:
        self.component = component
        self.registry = CollectorRegistry()
        self.pool: AsyncConnectionPool | None = None
        self.extra: list[Collect] = []
        self._requests = Counter(
            "video_tasks_http_requests", "HTTP requests answered, by route, method and status",
            ["route", "method", "status"], registry=self.registry)
        self._latency = Histogram(
            "video_tasks_http_request_duration_seconds", "Seconds to answer an HTTP request",
            ["route"], buckets=HTTP_BUCKETS_S, registry=self.registry)
        # Label lookups cost more than the increments: keep the children by key.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._db_up = 0
        self._tasks: dict[str, int] | None = None
        self._lag_s: float | None = None
        self.registry.register(_ScrapeCollector(self))
        ProcessCollector(registry=self.registry)

    def observe_request(self, request: web.BaseRequest, status: int, seconds: float) -> None:
        """A REQUEST_OBSERVERS_KEY hook: count and time one answered request."""
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else UNMATCHED_ROUTE
        method = request.method if request.method in METHODS else "other"
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = (self._requests.labels(route, method, str(status)),
                        self._latency.labels(route))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    async def render(self) -> bytes:
        """The exposition text, with the database figures read now."""
        await self._refresh_db()
        return _generate_latest(self.registry)

    async def _refresh_db(self) -> None:
        if self.pool is None:
            self._db_up, self._tasks, self._lag_s = 0, None, None
            return
        try:
            async with asyncio.timeout(SCRAPE_DB_TIMEOUT_S):
                counts = await tasks.count_by_status(self.pool)
                lag_s = await tasks.queue_lag_s(self.pool)
        except Exception as exc:  # the scrape answers whatever the database does
            logger.debug("metrics: database figures unavailable: %r", exc)
            self._db_up, self._tasks, self._lag_s = 0, None, None
            return
        self._db_up, self._tasks, self._lag_s = 1, counts, lag_s

    def collect_scrape_time(self) -> Iterator[Metric]:
        if self.pool is not None:
            stats = self.pool.get_stats()
            for key in sorted(set(POOL_STATS_KEYS) | set(stats)):
                gauge = GaugeMetricFamily(
                    f"video_tasks_pool_{key}",
                    f"psycopg_pool get_stats() {key}: {POOL_STATS_HELP.get(key, key)}",
                    labels=["pool"])
                gauge.add_metric([self.component], stats.get(key, 0))
                yield gauge
        yield GaugeMetricFamily("video_tasks_db_up",
                                "1 if the database answered this scrape's queries",
                                value=self._db_up)
        if self._tasks is not None:
            gauge = GaugeMetricFamily("video_tasks_tasks", "Tasks by status", labels=["status"])
            for status, count in sorted(self._tasks.items()):
                gauge.add_metric([status], count)
            yield gauge
        if self._lag_s is not None:
            yield GaugeMetricFamily("video_tasks_queue_lag_seconds",
                                    "Seconds the oldest runnable pending task has waited",
                                    value=self._lag_s)
        for collect in self.extra:
            yield from collect()


class _ScrapeCollector:
    def __init__(self, metrics: ServiceMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics.collect_scrape_time()

    def describe(self) -> list[Metric]:
        # Nothing at registration: the pool may not exist yet.
        return []


def worker_collector(worker: Any) -> Collect:
    """The worker's own figures, read from a runner.Worker at scrape time."""

    def collect() -> Iterator[Metric]:
        yield GaugeMetricFamily("video_tasks_worker_running_tasks",
                                "Tasks this worker is processing now", value=len(worker.running))
        yield GaugeMetricFamily("video_tasks_worker_concurrency",
                                "Tasks this worker runs at most at once",
                                value=worker.settings.worker_concurrency)
        yield CounterMetricFamily("video_tasks_worker_tasks_completed",
                                  "Tasks this worker completed", value=worker.completed)
        yield CounterMetricFamily("video_tasks_worker_tasks_failed",
                                  "Tasks this worker failed for good", value=worker.failed)
        yield CounterMetricFamily("video_tasks_worker_clip_creates",
                                  "Remote clip tasks this worker created (each one billed)",
                                  value=worker.clip_creates)
        yield CounterMetricFamily(
            "video_tasks_worker_possible_duplicate_creates",
            "Creates of a part whose earlier create answer was never recorded (a crash or a "
            "lost answer): the provider may have run, and billed, one extra task",
            value=worker.possible_duplicate_creates)
        yield CounterMetricFamily("video_tasks_worker_parts_reused",
                                  "Parts taken from the ledger instead of made again",
                                  value=worker.parts_reused)
        yield CounterMetricFamily("video_tasks_worker_clip_usage_tokens",
                                  "Provider usage (Ark completion tokens) of the clips this "
                                  "worker stored", value=worker.usage_tokens)

    return collect


async def response(metrics: ServiceMetrics) -> web.Response:
    return web.Response(body=await metrics.render(),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


def authorized(header: str | None, token: str) -> bool:
    """`Authorization: Bearer <token>`, compared in constant time."""
    scheme, _, given = (header or "").partition(" ")
    return (bool(token) and scheme.lower() == "bearer"
            and hmac.compare_digest(given.strip().encode(), token.encode()))


async def serve(metrics: ServiceMetrics, host: str, port: int) -> web.AppRunner | None:
    """/metrics on its own listener; None when port is 0 or the port cannot be bound.

    SO_REUSEPORT lets a restarted process bind before the old one has left (rolling
    restart). A port that cannot be bound is logged, not fatal: the service runs on.
    """
    if not port:
        return None

    async def handler(_request: web.Request) -> web.Response:
        return await response(metrics)

    app = web.Application()
    app.router.add_get("/metrics", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_port=True).start()
    except OSError as exc:
        logger.error("metrics: cannot listen on %s:%d (%s); /metrics is not served",
                     host, port, exc)
        await runner.cleanup()
        return None
    logger.info("metrics: http://%s:%d/metrics", host, port)
    return runner
