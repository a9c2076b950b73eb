"""Prometheus metrics of one API or worker process, on a registry of its own.

Served on their own address (METRICS_HOST:METRICS_PORT for the API, process i of
API_PROCESSES on METRICS_PORT + i; WORKER_METRICS_PORT for a worker; port 0 turns the
listener off), and on the public port only with `Authorization: Bearer METRICS_TOKEN`.

Names follow Prometheus' conventions: base units (seconds), counters end in `_total`
(prometheus_client adds it to a counter family's name), no repeated words. The pool
metrics are named like prometheus-community/pgbouncer_exporter's (`..._idle_connections`,
`..._wait_seconds_total`), not like CloudNativePG's raw SHOW columns, so that the app's
pools and PgBouncer's read alike on one dashboard. ops/README.md documents every name; a
benchmark scrapes them (bench/sampler.py reads POOL_METRICS), keep them stable:
- video_tasks_http_requests_total{route,method,status}: answered requests; route is the
  route's pattern (/api/progress/{task_id}), never the raw path.
- video_tasks_http_request_duration_seconds{route}: histogram of answer times.
- video_tasks_pool_*{pool="api"|"worker"}: psycopg_pool's get_stats() at scrape time
  (POOL_METRICS): gauges for what is now, `_total` counters for what accumulates.
- video_tasks_queue_tasks{status}: unfinished tasks by status;
  video_tasks_finished_tasks_last_minute{status}: tasks completed or failed in the last
  FINISHED_WINDOW_S; video_tasks_queue_lag_seconds: age of the oldest runnable pending
  task. Two statements per scrape, both on partial or finished_at indexes (never a scan
  of the whole table), bounded by a short timeout.
- video_tasks_api_content_checks_total{verdict}, video_tasks_api_creates_refused_total
  {reason}: what content safety and the fairness limits did to creates.
- video_tasks_api_progress_waiting, video_tasks_api_progress_waits_total{outcome}: polls
  held until their task changes (?wait=), and how they ended.
- video_tasks_db_up: 1 when those statements answered, else 0 (and no task figures).
- video_tasks_worker_*: the worker's running tasks and concurrency (gauges); tasks
  completed and failed, clip creates, possible duplicate creates, parts reused and clip
  usage tokens (counters, `_total`).
- process_*: CPU, memory and file descriptors of the process.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
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
# Finished tasks are counted over this window only (the finished_at index), not since the
# beginning: a full count would scan the whole table on every scrape.
FINISHED_WINDOW_S = 60
# The status labels, in the vocabulary's order; each is exported, 0 when it has no task.
UNFINISHED = [s.value for s in tasks.Status if s not in tasks.TERMINAL]
FINISHED = [s.value for s in tasks.Status if s in tasks.TERMINAL]
# Answer times from sub-millisecond reads to the 503 after POOL_TIMEOUT_S.
HTTP_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class PoolMetric:
    """How one psycopg_pool get_stats() key is exported."""

    name: str  # the family's name; a counter's samples get `_total` appended
    counter: bool
    help: str
    # get_stats() unit to the metric's: milliseconds to seconds.
    scale: float = 1.0

    @property
    def sample_name(self) -> str:
        """The name as it appears in the exposition text."""
        return self.name + "_total" if self.counter else self.name


def _pool(name: str, counter: bool, help_text: str, scale: float = 1.0) -> PoolMetric:
    return PoolMetric(f"video_tasks_pool_{name}", counter, help_text, scale)


# Every get_stats() key, by key. psycopg_pool leaves a counter out until it first moves;
# these are always exported. A key not listed here (a newer psycopg_pool) is not exported
# until it has a name here.
POOL_METRICS: dict[str, PoolMetric] = {
    "pool_min": _pool("min_connections", False, "Connections the pool keeps at least"),
    "pool_max": _pool("max_connections", False, "Connections the pool opens at most"),
    "pool_size": _pool("connections", False,
                       "Connections in the pool now, lent out or being made"),
    "pool_available": _pool("idle_connections", False, "Idle connections in the pool now"),
    "requests_waiting": _pool("waiting_requests", False,
                              "Requests waiting for a connection now"),
    "requests_num": _pool("requests", True, "Connection requests"),
    "requests_queued": _pool("queued_requests", True,
                             "Connection requests that had to wait for a connection"),
    "requests_wait_ms": _pool("request_wait_seconds", True,
                              "Seconds requests waited for a connection", 0.001),
    "requests_errors": _pool("request_errors", True,
                             "Connection requests that failed (timeout, queue full): a 503"),
    "usage_ms": _pool("usage_seconds", True, "Seconds connections were lent out", 0.001),
    "returns_bad": _pool("bad_returns", True, "Connections returned in a bad state"),
    "connections_num": _pool("connection_attempts", True,
                             "Attempts to open a connection to PgBouncer"),
    "connections_ms": _pool("connecting_seconds", True,
                            "Seconds spent opening connections", 0.001),
    "connections_errors": _pool("connection_errors", True,
                                "Attempts to open a connection that failed"),
    "connections_lost": _pool("lost_connections", True,
                              "Broken connections found (by a check or a failed statement)"),
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
        self.content_checks = Counter(
            "video_tasks_api_content_checks",
            "Create requests screened by WeChat's msg_sec_check, by verdict (pass, review, "
            "risky; unavailable_accepted and unavailable_refused when WeChat gave none)",
            ["verdict"], registry=self.registry)
        self.creates_refused = Counter(
            "video_tasks_api_creates_refused",
            "Creates refused by the fairness limits, by reason (rate_limited, "
            "too_many_unfinished)", ["reason"], registry=self.registry)
        self.progress_waits = Counter(
            "video_tasks_api_progress_waits",
            "Progress polls that waited for a change (?wait=), by outcome (changed, "
            "timeout; capped and stopping: answered at once)", ["outcome"],
            registry=self.registry)
        # Label lookups cost more than the increments: keep the children by key.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._db_up = 0
        self._tasks: dict[tuple[str, bool], int] | None = None
        self._lag_s: float | None = None
        self.registry.register(_ScrapeCollector(self))
        ProcessCollector(registry=self.registry)

    def observe_request(self, request: web.Request, status: int, seconds: float) -> None:
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
                rows = await tasks.count_for_metrics(self.pool,
                                                     finished_window_s=FINISHED_WINDOW_S)
                lag_s = await tasks.queue_lag_s(self.pool)
        except Exception as exc:  # the scrape answers whatever the database does
            logger.debug("metrics: database figures unavailable: %r", exc)
            self._db_up, self._tasks, self._lag_s = 0, None, None
            return
        # Every status is exported, 0 when no row came back for it.
        counts = {(status, False): 0 for status in UNFINISHED}
        counts.update({(status, True): 0 for status in FINISHED})
        counts.update({(row["status"], row["finished"]): row["tasks"] for row in rows})
        self._db_up, self._tasks, self._lag_s = 1, counts, lag_s

    def collect_scrape_time(self) -> Iterator[Metric]:
        if self.pool is not None:
            stats = self.pool.get_stats()
            for key, metric in POOL_METRICS.items():
                family = (CounterMetricFamily if metric.counter else GaugeMetricFamily)(
                    metric.name, f"{metric.help} (psycopg_pool get_stats() {key})",
                    labels=["pool"])
                family.add_metric([self.component], stats.get(key, 0) * metric.scale)
                yield family
        yield GaugeMetricFamily("video_tasks_db_up",
                                "1 if the database answered this scrape's queries",
                                value=self._db_up)
        if self._tasks is not None:
            unfinished = GaugeMetricFamily(
                "video_tasks_queue_tasks",
                f"Unfinished tasks by status ({', '.join(UNFINISHED)}), counted through "
                "the partial indexes", labels=["status"])
            finished = GaugeMetricFamily(
                "video_tasks_finished_tasks_last_minute",
                f"Tasks that finished in the last {FINISHED_WINDOW_S} s by status "
                f"({', '.join(FINISHED)}), counted through the finished_at index: finished "
                "tasks are not counted since the beginning", labels=["status"])
            for (status, done), count in self._tasks.items():
                (finished if done else unfinished).add_metric([status], count)
            yield unfinished
            yield finished
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


def waits_collector(waits: Any) -> Collect:
    """The progress polls an API process holds now (service.api.waits.ProgressWaits)."""

    def collect() -> Iterator[Metric]:
        yield GaugeMetricFamily("video_tasks_api_progress_waiting",
                                "Progress polls held until their task changes",
                                value=waits.waiting)

    return collect


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
        notices = CounterMetricFamily(
            "video_tasks_worker_notices",
            "Subscribe messages this worker settled from the outbox, by outcome (sent; "
            "retried; skipped: no subscription; failed; unknown: the answer was lost, never "
            "resent)", labels=["outcome"])
        outcomes = worker.notifier.outcomes if worker.notifier is not None else {}
        for outcome, count in sorted(outcomes.items()):
            notices.add_metric([outcome], count)
        yield notices

    return collect


async def response(metrics: ServiceMetrics) -> web.Response:
    return web.Response(body=await metrics.render(),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


def authorized(header: str | None, token: str) -> bool:
    """`Authorization: Bearer <token>`, compared in constant time."""
    scheme, _, given = (header or "").partition(" ")
    return (bool(token) and scheme.lower() == "bearer"
            and hmac.compare_digest(given.strip().encode(), token.encode()))


async def serve(metrics: ServiceMetrics, host: str, port: int, *,
                routes: Iterable[web.RouteDef] = ()) -> web.AppRunner | None:
    """/metrics on its own listener; None when port is 0 or the port cannot be bound.
    `routes` are served beside it (the API's /ops dashboard, service.api.pages).

    SO_REUSEPORT lets a restarted process bind before the old one has left (rolling
    restart). A port that cannot be bound is logged, not fatal: the service runs on.
    """
    if not port:
        return None

    async def handler(_request: web.Request) -> web.Response:
        return await response(metrics)

    app = web.Application()
    app.router.add_get("/metrics", handler)
    app.router.add_routes(routes)
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
