"""The /ops dashboard's data: the doctor's own sample and report, shared by every viewer.

One `Snapshots` per API process keeps one `probe.Probe` (its connections reused between
refreshes, like `doctor --watch`) and answers every dashboard request from the newest
report: a report younger than MIN_INTERVAL_S is answered as it is, and requests that
arrive while a sample is being taken wait for that one. So however many dashboards are
open, the process samples at most once per refresh, each sample bounded by
DOCTOR_TIMEOUT_S like the doctor's. The probe's connections (one to PostgreSQL, one
through PgBouncer, one to its console) are closed when nobody has asked for IDLE_CLOSE_S.

`dashboard_json` adds the figures the charts plot (`points`), read from the same sample:
nothing here queries anything the doctor does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from datetime import UTC, datetime
from typing import Any

from service.doctor import checks, pgbouncer, probe
from service.doctor.checks.base import usable_connections
from service.doctor.report import Report
from service.settings import Settings

logger = logging.getLogger(__name__)

# A report younger than this (since its sample finished) is answered without sampling.
MIN_INTERVAL_S = 1.0
# The probe's connections are closed after this long without a request.
IDLE_CLOSE_S = 30.0
# What the charts plot, in this order; None when the part could not be read.
POINTS = (
    # PgBouncer, summed over the app's pools (SHOW POOLS); maxwait is the largest.
    "cl_active", "cl_waiting", "sv_active", "sv_idle", "maxwait_s",
    # SHOW STATS between this read and the one before (the doctor's pgbouncer_traffic).
    "xact_per_s", "avg_wait_ms",
    # PostgreSQL's client backends against max_connections (and what ordinary roles get).
    "pg_connections", "pg_usable_connections", "pg_max_connections",
    # This API process's own psycopg pool (get_stats()).
    "app_pool_size", "app_pool_idle", "app_pool_waiting", "app_pool_max",
    # The queue (doctor_queue_summary).
    "pending", "runnable", "running", "completed_10m", "failed_10m", "queue_lag_s",
)


class Snapshots:
    """The newest doctor report of this process, refreshed at most every MIN_INTERVAL_S."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.samples_taken = 0
        self._probe: probe.Probe | None = None
        self._previous: probe.Sample | None = None
        self._last: Report | None = None
        self._last_at = 0.0  # time.monotonic() when the last sample finished
        self._in_flight: asyncio.Task[Report] | None = None
        self._last_request = 0.0
        self._idle_check: asyncio.TimerHandle | None = None
        self._closing: asyncio.Task[None] | None = None

    async def report(self) -> Report:
        """The newest report: the last one, the one being taken, or a new one."""
        self._last_request = time.monotonic()
        self._arm_idle_check()
        if self._last is not None and time.monotonic() - self._last_at < MIN_INTERVAL_S:
            return self._last
        if self._in_flight is None:
            self._in_flight = asyncio.create_task(self._sample())
        # Shielded: a viewer who goes away must not cancel the sample the others wait for.
        return await asyncio.shield(self._in_flight)

    async def _sample(self) -> Report:
        try:
            if self._closing is not None:
                await self._closing
            if self._probe is None:
                self._probe = probe.Probe(self.settings)
            sample = await self._probe.sample(previous=self._previous)
            report = Report(checks.evaluate(self.settings, sample), sample, self.settings)
            self._previous, self._last = sample, report
            self._last_at = time.monotonic()
            self.samples_taken += 1
            return report
        finally:
            self._in_flight = None

    def _arm_idle_check(self) -> None:
        if self._idle_check is None:
            self._idle_check = asyncio.get_running_loop().call_later(
                IDLE_CLOSE_S, self._idle_check_due)

    def _idle_check_due(self) -> None:
        self._idle_check = None
        idle_s = time.monotonic() - self._last_request
        if idle_s < IDLE_CLOSE_S or self._in_flight is not None:
            self._idle_check = asyncio.get_running_loop().call_later(
                max(IDLE_CLOSE_S - idle_s, 0.1), self._idle_check_due)
            return
        if self._probe is not None and self._closing is None:
            logger.debug("dashboard: no viewer for %.0f s, closing the probe", idle_s)
            self._closing = asyncio.create_task(self._close_probe())

    async def _close_probe(self) -> None:
        prober, self._probe = self._probe, None
        # Rates over a gap of minutes would mislead: the next viewer starts afresh.
        self._previous = None
        try:
            if prober is not None:
                await prober.close()
        finally:
            self._closing = None

    async def close(self) -> None:
        """Stop: cancel a sample in flight and close the probe's connections."""
        if self._idle_check is not None:
            self._idle_check.cancel()
            self._idle_check = None
        if self._in_flight is not None:
            self._in_flight.cancel()
            with contextlib.suppress(BaseException):
                await self._in_flight
        if self._closing is not None:
            await self._closing
        await self._close_probe()


def points(report: Report, pool_stats: dict[str, int] | None) -> dict[str, float | None]:
    """The charts' figures of one report (and this process's pool), POINTS by name."""
    sample = report.sample
    found: dict[str, float | None] = dict.fromkeys(POINTS)
    if isinstance(sample.console, pgbouncer.Console):
        pools = sample.console.app_pools()
        for column in ("cl_active", "cl_waiting", "sv_active", "sv_idle"):
            found[column] = sum(int(p.get(column, 0)) for p in pools)
        found["maxwait_s"] = max((pgbouncer.maxwait_s(p) for p in pools), default=0.0)
    rates = report.finding("pgbouncer_traffic").facts.get("rates")
    if rates:
        xacts = sum(r["xact_per_s"] for r in rates)
        found["xact_per_s"] = xacts
        # Weighted by transactions: the average wait of one of all the transactions.
        waited = sum((r["avg_wait_ms"] or 0.0) * r["xact_per_s"] for r in rates)
        found["avg_wait_ms"] = waited / xacts if xacts else 0.0
    if isinstance(sample.postgres, probe.PgState):
        overview = sample.postgres.overview
        found["pg_connections"] = int(overview["connections"])
        found["pg_usable_connections"] = usable_connections(overview)
        found["pg_max_connections"] = int(overview["max_connections"])
    if pool_stats is not None:
        found["app_pool_size"] = pool_stats.get("pool_size", 0)
        found["app_pool_idle"] = pool_stats.get("pool_available", 0)
        found["app_pool_waiting"] = pool_stats.get("requests_waiting", 0)
        found["app_pool_max"] = pool_stats.get("pool_max", 0)
    if isinstance(sample.queue, probe.QueueState):
        summary = sample.queue.summary
        for name in ("pending", "runnable", "running", "completed_10m", "failed_10m"):
            found[name] = int(summary[name])
        found["queue_lag_s"] = float(summary["oldest_pending_s"]) if summary["runnable"] \
            else 0.0
    return found


def dashboard_json(report: Report, pool_stats: dict[str, int] | None) -> dict[str, Any]:
    """GET /ops/data: the doctor's report (`video-tasks doctor --json`), its verdict in
    words, the points to plot, and this process's pool."""
    return {
        "taken_at": datetime.fromtimestamp(report.sample.taken_at, UTC).isoformat(),
        "verdict": report.level.value,
        "verdict_text": report.verdict(),
        "points": points(report, pool_stats),
        "app_pool": {"pid": os.getpid(), "stats": pool_stats},
        "doctor": report.to_json(),
    }
