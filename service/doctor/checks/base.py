"""What every check reads: the sample, the settings, and the constants it reasons about.

The constants of the service itself are imported from where they are defined, never
copied: the running statuses (service.tasks), the rescuer's interval (the worker), the
app pool's max_idle (the pool service.db builds).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from psycopg.conninfo import conninfo_to_dict

from service import capacity, db
from service.doctor import pgbouncer
from service.doctor.findings import UNREADABLE, Finding, Level
from service.doctor.probe import Failure, PgState, QueueState, Sample
from service.settings import Settings
from service.worker import runner

# The application_name of the API's and the worker's pools (db.create_pool(name=...) in
# service/api/app.py and service/worker/__init__.py, which name no constant for it).
API_APP = "video-tasks-api"
WORKER_APP = "video-tasks-worker"
# A SELECT 1 slower than this means an overloaded host or network.
SLOW_PING_MS = 100.0
# Shares of a limit that make a warning, and a critical.
WARN_SHARE = 0.8
CRITICAL_SHARE = 0.95
# A running worker's rescuer hands on an expired lease within one interval; three
# intervals without it mean no rescuer runs.
RESCUE_GRACE_S = 3 * runner.RESCUE_INTERVAL_S
# A backlog this many times doctor_queue_lag_warn_s with nothing completed is critical.
BACKLOG_CRITICAL_FACTOR = 10
# With no worker connected, a runnable task older than this many poll intervals waits
# for nobody.
NO_WORKER_AFTER_POLLS = 4


@dataclass
class Context:
    """One sample, the settings, and the check being evaluated (for its findings)."""

    settings: Settings
    sample: Sample
    check: str = ""
    section: str = ""

    def for_check(self, section: str, check: str) -> Context:
        return dataclasses.replace(self, section=section, check=check)

    def found(self, level: Level, outcome: str, **facts: Any) -> Finding:
        return Finding(self.check, self.section, level, outcome, facts)

    def unreadable(self, needs: str) -> Finding:
        """UNKNOWN: the part `needs` names ("console", "postgres", "queue", ...) is unread."""
        reasons = {part: self.reason(part) for part in ("console", "postgres", "queue")
                   if part in needs}
        return self.found(Level.UNKNOWN, UNREADABLE, needs=needs, reasons=reasons)

    @property
    def console(self) -> pgbouncer.Console | None:
        c = self.sample.console
        return c if isinstance(c, pgbouncer.Console) else None

    @property
    def reads(self) -> list[pgbouncer.Console]:
        """POOLS/STATS reads in time order (one or two)."""
        reads = [r for r in (self.console, self.sample.console_other) if r is not None]
        return sorted(reads, key=lambda r: r.taken_at)

    @property
    def pg(self) -> PgState | None:
        p = self.sample.postgres
        return p if isinstance(p, PgState) else None

    @property
    def queue(self) -> QueueState | None:
        q = self.sample.queue
        return q if isinstance(q, QueueState) else None

    def reason(self, part: str) -> str:
        """Why a part of the sample could not be read."""
        value = getattr(self.sample, part, None)
        return value.reason if isinstance(value, Failure) else "?"

    def pg_room(self) -> int | None:
        """Connections PostgreSQL can still accept from ordinary roles."""
        if self.pg is None:
            return None
        o = self.pg.overview
        return usable_connections(o) - int(o["connections"])

    @cached_property
    def app_pool_max_idle_s(self) -> float:
        """The app pool's max_idle: PgBouncer must not close idle clients sooner."""
        # The pool the API and worker build from these settings; made, never opened.
        return float(db.create_pool(self.settings, name="video-tasks-doctor").max_idle)


def usable_connections(overview: dict[str, Any]) -> int:
    return capacity.usable_connections(
        int(overview["max_connections"]),
        int(overview["superuser_reserved"]) + int(overview["reserved"]))


def share_level(used: float, limit: float) -> Level:
    if limit <= 0:
        return Level.OK
    if used >= limit * CRITICAL_SHARE:
        return Level.CRITICAL
    if used >= limit * WARN_SHARE:
        return Level.WARNING
    return Level.OK


def address(url: str) -> str:
    try:
        info = conninfo_to_dict(url)
    except Exception:
        return "?"
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}"
