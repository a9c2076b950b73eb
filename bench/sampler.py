"""Once a second, what the database side looks like while the users run.

- PostgreSQL: server connections of the app's role (pg_stat_activity), by state.
- PgBouncer: SHOW POOLS of the app's database, through the admin console (simple query
  protocol: ClientCursor, autocommit).
- The app's psycopg pools: get_stats() as the service exports it on /metrics
  (video_tasks_pool_*{pool="..."}, read back into get_stats() keys and units through
  service.metrics.POOL_METRICS), per API process and worker.
- CPU: the machine's busy share and each component's share (API, worker, PgBouncer,
  PostgreSQL, the load generator), from /proc.

Sampling must never stop the run: whatever fails in a sample is recorded as null, and
a broken connection is opened again on the next tick (PgBouncer restarts do that).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from ops.procs import children  # noqa: F401  (the one /proc reader; bench/run.py uses it)
from service import metrics, show

logger = logging.getLogger(__name__)

INTERVAL_S = 1.0
CONNECT_TIMEOUT_S = 2
# The service reads its task counts from the database for every /metrics page (up to
# 1 s when its pool is busy): give the page that long and a little more.
SCRAPE_TIMEOUT_S = 1.5
# /metrics sample name -> (get_stats() key, the metric's scale from get_stats()' unit).
POOL_SAMPLES = {m.sample_name: (key, m.scale) for key, m in metrics.POOL_METRICS.items()}
POOL_COLUMNS = ("cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_used", "sv_tested",
                "sv_login")
ACTIVITY_SQL = """
SELECT count(*) FILTER (WHERE usename = %(user)s) AS app,
       count(*) FILTER (WHERE usename = %(user)s AND state = 'active') AS app_active,
       count(*) FILTER (WHERE usename = %(user)s AND state = 'idle') AS app_idle,
       count(*) FILTER (WHERE usename = %(user)s AND state LIKE 'idle in transaction%%')
           AS app_idle_in_transaction,
       count(*) AS all_client_backends
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
"""
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Sampler:
    def __init__(self, *, superuser_conninfo: str, admin_url: str, app_user: str,
                 app_db: str, metrics_urls: dict[str, str],
                 component_pids: Callable[[], dict[str, list[int]]]) -> None:
        self.superuser_conninfo = superuser_conninfo
        self.admin_url = admin_url
        self.app_user = app_user
        self.app_db = app_db
        self.metrics_urls = metrics_urls
        self.component_pids = component_pids
        self.samples: list[dict[str, Any]] = []
        self._pg: psycopg.AsyncConnection | None = None
        self._admin: psycopg.AsyncConnection | None = None
        self._http: aiohttp.ClientSession | None = None
        self._cpu_before: tuple[float, dict[str, float], tuple[int, int]] | None = None
        # Samples may overlap (a slow scrape); each connection serves one at a time.
        self._pg_lock = asyncio.Lock()
        self._admin_lock = asyncio.Lock()

    async def run(self, duration_s: float) -> list[dict[str, Any]]:
        """Sample every second for duration_s (bounded: at most duration_s + 1 samples).

        Each tick starts its sample and moves on: a slow source (a /metrics page whose
        database figures wait behind a busy pool) delays its own sample, never the ticks.
        """
        loop = asyncio.get_running_loop()
        start = loop.time()
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_S))
        pending: list[asyncio.Task[dict[str, Any]]] = []
        try:
            self._cpu_mark()
            for tick in range(1, int(duration_s / INTERVAL_S) + 2):
                await asyncio.sleep(max(0.0, start + tick * INTERVAL_S - loop.time()))
                pending.append(asyncio.create_task(self._sample_at(round(loop.time() - start,
                                                                         3))))
                if loop.time() - start >= duration_s:
                    break
            self.samples = list(await asyncio.gather(*pending))
        finally:
            for task in pending:
                task.cancel()
            await self.close()
        return self.samples

    async def _sample_at(self, t: float) -> dict[str, Any]:
        cpu = self._cpu_mark()
        sample = await self.sample_once()
        sample["t"] = t
        sample["cpu"] = cpu
        return sample

    async def close(self) -> None:
        for conn in (self._pg, self._admin):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
        self._pg = self._admin = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def sample_once(self) -> dict[str, Any]:
        postgres, pools, app_pools = await asyncio.gather(
            self._postgres(), self._pgbouncer(), self._app_pools())
        return {"postgres": postgres, "pgbouncer": pools, "app_pools": app_pools}

    async def _postgres(self) -> dict[str, int] | None:
        async with self._pg_lock:
            return await self._postgres_locked()

    async def _postgres_locked(self) -> dict[str, int] | None:
        try:
            if self._pg is None or self._pg.closed:
                self._pg = await psycopg.AsyncConnection.connect(
                    self.superuser_conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                    application_name="bench-sampler")
            cur = await self._pg.execute(ACTIVITY_SQL, {"user": self.app_user})
            row = await cur.fetchone()
            names = [d.name for d in cur.description or []]
            return dict(zip(names, row, strict=True)) if row else None
        except (psycopg.Error, OSError) as exc:
            logger.debug("pg_stat_activity sample failed: %s", exc)
            await self._drop("_pg")
            return None

    async def _pgbouncer(self) -> dict[str, float] | None:
        async with self._admin_lock:
            return await self._pgbouncer_locked()

    async def _pgbouncer_locked(self) -> dict[str, float] | None:
        try:
            if self._admin is None or self._admin.closed:
                self._admin = await psycopg.AsyncConnection.connect(
                    self.admin_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                    cursor_factory=psycopg.AsyncClientCursor)
            rows = await show.show_async(self._admin, "POOLS")
        except (psycopg.Error, OSError) as exc:
            logger.debug("SHOW POOLS failed: %s", exc)
            await self._drop("_admin")
            return None
        total: dict[str, float] = dict.fromkeys(POOL_COLUMNS, 0)
        total["maxwait_s"] = 0.0
        for row in rows:
            # The app's pool only (the auth_query user has a pool of its own).
            if row.get("database") != self.app_db or row.get("user") != self.app_user:
                continue
            for column in POOL_COLUMNS:
                total[column] += int(row.get(column) or 0)
            wait = int(row.get("maxwait") or 0) + int(row.get("maxwait_us") or 0) / 1e6
            total["maxwait_s"] = max(total["maxwait_s"], wait)
        return total

    async def _drop(self, attr: str) -> None:
        conn = getattr(self, attr)
        setattr(self, attr, None)
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def _app_pools(self) -> dict[str, Any]:
        names = list(self.metrics_urls)
        results = await asyncio.gather(*(self._scrape(self.metrics_urls[n]) for n in names))
        return dict(zip(names, results, strict=True))

    async def _scrape(self, url: str) -> dict[str, dict[str, float]] | None:
        """{pool name: {get_stats key: value}} from one /metrics page, or None."""
        assert self._http is not None
        try:
            async with self._http.get(url) as resp:
                if resp.status != 200:
                    return None
                text = await resp.text()
            return parse_pool_metrics(text)
        except (aiohttp.ClientError, TimeoutError, ValueError, UnicodeDecodeError):
            return None

    def _cpu_mark(self) -> dict[str, float] | None:
        """Each component's CPU share (% of one core) since the previous mark."""
        try:
            now = os.times().elapsed
            per = {name: sum(_process_cpu_s(pid) for pid in pids)
                   for name, pids in self.component_pids().items()}
            machine = _machine_ticks()
        except OSError:
            return None
        before, self._cpu_before = self._cpu_before, (now, per, machine)
        if before is None or now <= before[0]:
            return None
        wall = now - before[0]
        shares = {f"{name}_pct": round(max(0.0, per[name] - before[1].get(name, 0.0))
                                       / wall * 100, 1) for name in per}
        total, idle = machine[0] - before[2][0], machine[1] - before[2][1]
        busy = (1 - idle / total) if total else 0.0
        shares["machine_busy_pct"] = round(busy * 100, 1)
        # What else ran on the machine (other users, the OS), in the same unit as the
        # components: % of one core. Shared machines make this large; say so in reports.
        cores = os.cpu_count() or 1
        shares["other_pct"] = round(max(0.0, busy * cores * 100 - sum(
            v for k, v in shares.items() if k != "machine_busy_pct")), 1)
        return shares


def parse_pool_metrics(text: str) -> dict[str, dict[str, float]]:
    """{pool label: {get_stats() key: value in get_stats()' unit}} from /metrics text."""
    pools: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            known = POOL_SAMPLES.get(sample.name)
            if known is None:
                continue
            key, scale = known
            pools.setdefault(sample.labels.get("pool", ""), {})[key] = sample.value / scale
    return pools


def _process_cpu_s(pid: int) -> float:
    """user + system CPU seconds of one process; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _machine_ticks() -> tuple[int, int]:
    """(all ticks, idle + iowait ticks) of the whole machine."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return sum(values), values[3] + values[4]
