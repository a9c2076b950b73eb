"""PgBouncer in transaction mode: no prepared-statement errors, no session state left on
the server connections, bounded server connections.

Each test has a database of its own, so PgBouncer's pool for it, its SHOW STATS row and
its server connections in pg_stat_activity are this test's alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from dataclasses import dataclass

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from service import db, tasks
from service.settings import Settings
from tests.conftest import TEST_POOL_SIZE
from tests.helpers import WRITE_UP_REQUEST

pytestmark = pytest.mark.asyncio

# psycopg prepares a statement on the server once it has run this many times (its default).
PSYCOPG_PREPARE_THRESHOLD = 5


def pgbouncer_rows(settings: Settings, command: str) -> list[dict]:
    with psycopg.connect(settings.pgbouncer_admin_url, autocommit=True,
                         cursor_factory=psycopg.ClientCursor) as console:
        cur = console.execute(command)
        names = [column.name for column in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur]


def database_name(settings: Settings) -> str:
    return conninfo_to_dict(settings.database_url)["dbname"]


def statement_totals(settings: Settings) -> tuple[int, int]:
    """(statements, transactions) PgBouncer has passed on to the test's database."""
    (row,) = [r for r in pgbouncer_rows(settings, "SHOW STATS")
              if r["database"] == database_name(settings)]
    return row["total_query_count"], row["total_xact_count"]


@dataclass(frozen=True)
class ServerSession:
    """What a server connection of PgBouncer's pool carries from one client to the next."""

    pid: int
    prepared: list[str]
    listening: int
    advisory_locks: int
    holdable_cursors: int
    temp_schema: bool
    # Settings changed with a session SET, except those PgBouncer itself sets for each
    # client it hands the connection to.
    session_settings: list[str]

    @property
    def clean(self) -> bool:
        return not (self.prepared or self.listening or self.advisory_locks
                    or self.holdable_cursors or self.temp_schema or self.session_settings)


SESSION_STATE = """
SELECT pg_backend_pid(),
       ARRAY(SELECT name FROM pg_prepared_statements ORDER BY name),
       (SELECT count(*) FROM pg_listening_channels()),
       (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()),
       (SELECT count(*) FROM pg_cursors WHERE is_holdable),
       pg_my_temp_schema() <> 0,
       ARRAY(SELECT name FROM pg_settings WHERE source = 'session'
             AND name NOT IN ('application_name', 'client_encoding', 'DateStyle', 'TimeZone',
                              'standard_conforming_strings')
             ORDER BY name)
"""


async def server_sessions(settings: Settings) -> list[ServerSession]:
    """The state of every server connection PgBouncer holds for the app's role in the
    test's database: one client per server connection, each in a transaction until all
    have looked, so PgBouncer hands each client a different one of them."""
    user = conninfo_to_dict(settings.database_url)["user"]
    # A server connection still logging in shows remote_pid 0: wait until none does.
    deadline = time.monotonic() + 5
    while True:
        servers = {r["remote_pid"] for r in pgbouncer_rows(settings, "SHOW SERVERS")
                   if r["database"] == database_name(settings) and r["user"] == user}
        if 0 not in servers or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert servers, "PgBouncer holds no server connection for the test's database"
    async with contextlib.AsyncExitStack() as stack:
        found = []
        for _ in servers:
            conn = await stack.enter_async_context(await psycopg.AsyncConnection.connect(
                settings.database_url, prepare_threshold=None, application_name="probe"))
            row = await (await conn.execute(SESSION_STATE)).fetchone()
            found.append(ServerSession(*row))
    assert {s.pid for s in found} == servers, "the probe did not reach every server connection"
    return found


async def test_hundreds_of_repeated_statements_raise_no_prepared_statement_error(pool, settings):
    """psycopg would prepare a statement after 5 runs; through PgBouncer 1.18 that breaks
    as soon as two clients share server connections. Many clients, many repeats."""
    clients = [db.create_pool(settings, name=f"prepare-check-{i}", min_size=1, max_size=2)
               for i in range(6)]
    for client in clients:
        await client.open(wait=True)
    new = tasks.NewTask(product_name="螺栓", theme="质量", duration=5, type="video",
                        total_parts=1)
    try:
        async def hammer(client) -> None:
            for _ in range(60):
                created = await tasks.create(client, new)
                row = await tasks.get_progress(client, created.task_id)
                assert row is not None and row["task_id"] == created.task_id
                await tasks.count_by_status(client)

        await asyncio.gather(*(hammer(client) for client in clients))
    finally:
        for client in clients:
            await client.close()


async def test_statements_repeated_through_the_app_pool_prepare_nothing_on_the_servers(
        pool, settings):
    """Every statement the API runs most, many times over, one by one and at once: no
    server connection holds a prepared statement (or any other session state) afterwards.
    psycopg's default would have prepared each after PSYCOPG_PREPARE_THRESHOLD runs."""
    runs = 4 * PSYCOPG_PREPARE_THRESHOLD
    for _ in range(runs):
        assert await tasks.get_progress(pool, uuid.uuid4()) is None
        await tasks.count_by_status(pool)
    await asyncio.gather(*(tasks.get_progress_many(pool, [uuid.uuid4()]) for _ in range(runs)))
    sessions = await server_sessions(settings)
    assert [s for s in sessions if not s.clean] == []


async def test_the_session_probe_sees_a_statement_prepared_on_a_server(pool, settings):
    """The probe above can fail: a client with psycopg's preparing on leaves its statement
    on the server connection it happened to get."""
    await tasks.count_by_status(pool)
    async with await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True,
                                                     prepare_threshold=0) as preparing:
        await preparing.execute("SELECT count(*) FROM video_generation_tasks")
    sessions = await server_sessions(settings)
    # psycopg names it _pg3_0; the name is psycopg's business, the count is ours.
    assert [len(s.prepared) for s in sessions if not s.clean] == [1], sessions


class ServerConnectionSampler:
    """Counts the app role's connections to the test's database in pg_stat_activity, every
    20 ms: PgBouncer's server connections for its pool (the sampler's own excluded)."""

    def __init__(self, direct_url: str) -> None:
        self.direct_url = direct_url
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.direct_url, autocommit=True) as conn:
            while not self._stop.is_set():
                count = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE usename = current_user AND datname = current_database() "
                    "AND backend_type = 'client backend' "
                    "AND pid <> pg_backend_pid()").fetchone()[0]
                self.samples.append(count)
                time.sleep(0.02)

    def __enter__(self) -> ServerConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


async def test_200_clients_stay_within_pgbouncers_pool_size(processes, http, settings):
    """Two API processes and two workers, 200 concurrent clients creating and polling:
    PostgreSQL never sees more app connections than PgBouncer's pool, and every
    response is 2xx."""
    apis = [processes.start_api(app_pool_max=8), processes.start_api(app_pool_max=8)]
    for _ in range(2):
        processes.start_worker(video_provider="simulated", simulated_part_s=0.2,
                               worker_concurrency=20)
    statuses: list[int] = []

    async def client(index: int) -> None:
        base = apis[index % len(apis)].url
        body = {**WRITE_UP_REQUEST, "product_name": f"螺栓 {index}"}
        async with http.post(f"{base}/api/generate-video", json=body) as resp:
            statuses.append(resp.status)
            task_id = (await resp.json())["task_id"]
        for _ in range(10):
            async with http.get(f"{base}/api/progress/{task_id}") as resp:
                statuses.append(resp.status)
                await resp.read()
            await asyncio.sleep(0.05)

    with ServerConnectionSampler(settings.database_direct_url) as sampler:
        await asyncio.gather(*(client(i) for i in range(200)))
    assert len(statuses) == 200 * 11
    assert all(200 <= status < 300 for status in statuses), sorted(set(statuses))
    assert sampler.samples, "the sampler took no samples"
    # This test's workers and both APIs share one PgBouncer pool (its database's).
    assert max(sampler.samples) <= TEST_POOL_SIZE, max(sampler.samples)
    assert max(sampler.samples) > 0
    print(f"max server connections {max(sampler.samples)} of {len(sampler.samples)} samples")


async def test_an_unknown_id_costs_one_statement_and_leaves_no_session_state(pool, settings):
    assert await tasks.get_progress(pool, uuid.uuid4()) is None  # the pool is logged in
    before = statement_totals(settings)
    polls = 50
    for _ in range(polls):
        assert await tasks.get_progress(pool, uuid.uuid4()) is None
    queries, xacts = (after - first for after, first in zip(statement_totals(settings),
                                                             before, strict=True))
    # One statement, in a transaction of its own, per unknown id: nothing else.
    assert (queries, xacts) == (polls, polls)
    sessions = await server_sessions(settings)
    assert [s for s in sessions if not s.clean] == []
