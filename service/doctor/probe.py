"""Taking one sample: PostgreSQL direct, PgBouncer, its console, and the queue.

Every step is bounded by `doctor_timeout_s`; a step that fails or times out becomes a
`Failure` with the reason, never an exception, so the report can say "unreachable".
Connections are kept between samples (`--watch`) and dropped when a step fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row

from service import queries
from service.doctor import pgbouncer
from service.settings import Settings, redact_url

T = TypeVar("T")
Row = dict[str, Any]
APPLICATION_NAME = pgbouncer.APPLICATION_NAME
CLOSE_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class Failure:
    """A part of the system that could not be read, and why."""

    reason: str
    # Connected, but the statement got no answer in time (e.g. queued in PgBouncer).
    connected: bool = False


class Unanswered(Exception):
    """Raised when a connection was made but a statement got no answer in time."""


@dataclass(frozen=True)
class Ping:
    roundtrip_ms: float
    connect_ms: float | None  # None: the connection was already open


@dataclass
class PgState:
    overview: Row
    sessions: list[Row]
    idle_in_transaction: list[Row]
    long_statements: list[Row]
    # The threshold used for long_statements: the role's statement timeout if it has one.
    long_after_s: float
    via: str


@dataclass
class QueueState:
    summary: Row
    last_hour: list[Row]
    running_too_long: list[Row]
    expired_leases: list[Row]
    via: str


@dataclass
class Sample:
    direct: Ping | Failure
    bouncer: Ping | Failure
    console: pgbouncer.Console | Failure
    postgres: PgState | Failure
    queue: QueueState | Failure
    # Another POOLS/STATS read (a second later, or the previous --watch refresh): rates
    # come from the two reads' deltas, and "clients have been waiting" from both.
    console_other: pgbouncer.Console | None = None
    taken_at: float = field(default_factory=time.time)


def describe_error(exc: BaseException) -> str:
    """One line, no password: what an operator needs from a connection error."""
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    primary = exc.diag.message_primary if isinstance(exc, psycopg.Error) else None
    text = " ".join((primary or str(exc)).split()) or type(exc).__name__
    # libpq's wording around the cause adds nothing for an operator.
    text = text.removeprefix("connection failed: ")
    text = text.replace(" Is the server running on that host and accepting TCP/IP "
                        "connections?", "")
    return redact_url(text)[:300]


class Probe:
    """Reads the system; keep one across --watch refreshes to reuse its connections."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.timeout_s = max(settings.doctor_timeout_s, 0.1)
        self._direct: psycopg.AsyncConnection[Any] | None = None
        self._bouncer: psycopg.AsyncConnection[Any] | None = None
        self._console: psycopg.AsyncConnection[Any] | None = None
        self._role_statement_timeout_ms: int | None = None

    async def close(self) -> None:
        for conn in (self._direct, self._bouncer, self._console):
            await _discard(conn)
        self._direct = self._bouncer = self._console = None

    async def sample(self, *, previous: Sample | None = None,
                     second_read_after_s: float = 0.0) -> Sample:
        """Read everything once; with `second_read_after_s`, POOLS/STATS again after it."""
        direct_task = asyncio.create_task(self._direct_part())
        # The ping may wait in PgBouncer's queue: connect, then up to timeout_s for it.
        bouncer_task = asyncio.create_task(self._bounded(
            self._ping_bouncer, timeout_s=self._connect_timeout() + self.timeout_s + 1))
        console = await self._bounded(self._read_console)
        direct, postgres, queue = await direct_task
        bouncer = await bouncer_task
        if isinstance(direct, Failure) and not isinstance(bouncer, Failure):
            # No direct route (a production doctor may only reach PgBouncer): the same
            # reads through PgBouncer, where they may queue behind the app.
            postgres = await self._bounded(lambda: self._read_postgres(self._bouncer, "pgbouncer"))
            queue = await self._bounded(lambda: self._read_queue(self._bouncer, "pgbouncer"))
        other = None
        if isinstance(console, pgbouncer.Console):
            if second_read_after_s > 0:
                await asyncio.sleep(max(0.0, console.taken_at + second_read_after_s
                                        - time.monotonic()))
                later = await self._bounded(lambda: self._read_console(full=False))
                other = later if isinstance(later, pgbouncer.Console) else None
            elif previous is not None and isinstance(previous.console, pgbouncer.Console):
                other = previous.console
        return Sample(direct=direct, bouncer=bouncer, console=console, postgres=postgres,
                      queue=queue, console_other=other)

    # --- steps ------------------------------------------------------------------------

    async def _bounded(self, step: Callable[[], Awaitable[T]], *,
                       timeout_s: float | None = None) -> T | Failure:
        timeout_s = timeout_s or self.timeout_s
        try:
            return await asyncio.wait_for(step(), timeout_s)
        except TimeoutError:
            return Failure(f"no answer within {timeout_s:g} s")
        except Unanswered as exc:
            return Failure(str(exc), connected=True)
        except (psycopg.Error, OSError) as exc:
            return Failure(describe_error(exc))
        except Exception as exc:  # e.g. a SHOW without an expected column: report it
            return Failure(f"{type(exc).__name__}: {describe_error(exc)}")

    async def _direct_part(self) -> tuple[Ping | Failure, PgState | Failure,
                                          QueueState | Failure]:
        ping = await self._bounded(self._ping_direct,
                                   timeout_s=self._connect_timeout() + self.timeout_s)
        if isinstance(ping, Failure):
            await self._drop("direct")
            return ping, ping, ping
        postgres = await self._bounded(lambda: self._read_postgres(self._direct, "direct"))
        queue = await self._bounded(lambda: self._read_queue(self._direct, "direct"))
        if isinstance(postgres, Failure) or isinstance(queue, Failure):
            await self._drop("direct")
        return ping, postgres, queue

    async def _ping_direct(self) -> Ping:
        connect_ms = None
        if self._direct is None or self._direct.closed:
            started = time.perf_counter()
            conn = await psycopg.AsyncConnection.connect(
                self.settings.database_direct_url, autocommit=True,
                connect_timeout=self._connect_timeout(), application_name=APPLICATION_NAME)
            connect_ms = (time.perf_counter() - started) * 1000
            self._direct = conn
            # A direct session is the doctor's own: bound its statements on the server too.
            # Not the role's setting, which doctor_pg_overview reads from pg_settings first.
            rows = await _fetch(conn, "doctor_role_statement_timeout")
            self._role_statement_timeout_ms = int(rows[0]["statement_timeout_ms"]) if rows else 0
            await _fetch(conn, "doctor_bound_session",
                         {"timeout_ms": str(int(self.timeout_s * 1000))})
        return Ping(roundtrip_ms=await _roundtrip(self._direct), connect_ms=connect_ms)

    async def _ping_bouncer(self) -> Ping:
        connect_ms = None
        if self._bouncer is None or self._bouncer.closed:
            started = time.perf_counter()
            conn = await psycopg.AsyncConnection.connect(
                self.settings.database_url, autocommit=True, prepare_threshold=None,
                connect_timeout=self._connect_timeout(), application_name=APPLICATION_NAME)
            connect_ms = (time.perf_counter() - started) * 1000
            self._bouncer = conn
        try:
            roundtrip = await asyncio.wait_for(_roundtrip(self._bouncer), self.timeout_s)
        except TimeoutError:
            await self._drop("bouncer")
            raise Unanswered(f"connected, but SELECT 1 got no server connection within "
                             f"{self.timeout_s:g} s") from None
        except BaseException:
            # A cancelled or failed statement leaves the connection in an unknown state.
            await self._drop("bouncer")
            raise
        return Ping(roundtrip_ms=roundtrip, connect_ms=connect_ms)

    async def _read_console(self, *, full: bool = True) -> pgbouncer.Console:
        if self._console is None or self._console.closed:
            self._console = await pgbouncer.connect(self.settings.pgbouncer_admin_url,
                                                    timeout_s=self._connect_timeout())
        try:
            return await pgbouncer.read(self._console, full=full)
        except BaseException:
            await self._drop("console")
            raise

    async def _read_postgres(self, conn: psycopg.AsyncConnection[Any] | None,
                             via: str) -> PgState:
        if conn is None:
            raise psycopg.OperationalError("not connected")
        overview = (await _fetch(conn, "doctor_pg_overview"))[0]
        if via == "direct" and self._role_statement_timeout_ms is not None:
            # doctor_pg_overview saw the doctor's own SET; report the role's value.
            overview["statement_timeout_ms"] = self._role_statement_timeout_ms
        timeout_ms = int(overview["statement_timeout_ms"] or 0)
        long_after_s = timeout_ms / 1000 if timeout_ms else LONG_STATEMENT_FALLBACK_S
        return PgState(
            overview=overview,
            sessions=await _fetch(conn, "doctor_pg_sessions"),
            idle_in_transaction=await _fetch(conn, "doctor_idle_in_transaction", {
                "older_than_s": float(self.settings.doctor_idle_in_transaction_s)}),
            long_statements=await _fetch(conn, "doctor_long_statements",
                                         {"longer_than_s": float(long_after_s)}),
            long_after_s=long_after_s, via=via)

    async def _read_queue(self, conn: psycopg.AsyncConnection[Any] | None,
                          via: str) -> QueueState:
        if conn is None:
            raise psycopg.OperationalError("not connected")
        return QueueState(
            summary=(await _fetch(conn, "doctor_queue_summary",
                                  {"max_attempts": self.settings.max_attempts}))[0],
            last_hour=await _fetch(conn, "doctor_tasks_last_hour"),
            running_too_long=await _fetch(conn, "doctor_tasks_running_too_long", {
                "older_than_s": float(self.settings.doctor_stuck_after_s)}),
            expired_leases=await _fetch(conn, "doctor_expired_leases"),
            via=via)

    def _connect_timeout(self) -> int:
        # libpq counts whole seconds, and at least 2 (smaller values become 2).
        return max(2, round(self.timeout_s))

    async def _drop(self, which: str) -> None:
        attr = f"_{which}"
        conn = getattr(self, attr)
        setattr(self, attr, None)
        await _discard(conn)


# Without a statement timeout on the role, statements running longer than this are named.
LONG_STATEMENT_FALLBACK_S = 30.0


async def _roundtrip(conn: psycopg.AsyncConnection[Any]) -> float:
    started = time.perf_counter()
    await conn.execute(queries.get("ping"))
    return (time.perf_counter() - started) * 1000


async def _fetch(conn: psycopg.AsyncConnection[Any], name: str,
                 params: dict[str, Any] | None = None) -> list[Row]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(queries.get(name), params)
    return await cur.fetchall()


async def _discard(conn: psycopg.AsyncConnection[Any] | None) -> None:
    if conn is None or conn.closed:
        return
    with contextlib.suppress(Exception):
        await asyncio.wait_for(conn.close(), CLOSE_TIMEOUT_S)
