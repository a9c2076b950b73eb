"""PgBouncer in transaction mode: no prepared-statement errors, bounded server connections."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import psycopg
import pytest

from service import db, tasks
from tests.conftest import TEST_POOL_SIZE
from tests.helpers import SEED_REQUEST

pytestmark = pytest.mark.asyncio


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


async def test_the_pool_never_prepares_statements(pool):
    async with pool.connection() as conn:
        assert conn.prepare_threshold is None
        assert conn.autocommit


class ServerConnectionSampler:
    """Counts the app role's server connections in pg_stat_activity, every 20 ms."""

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
                    "WHERE usename = current_user AND backend_type = 'client backend' "
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
        body = {**SEED_REQUEST, "product_name": f"螺栓 {index}"}
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
    # The pool fixture, this test's workers and both APIs share one PgBouncer pool.
    assert max(sampler.samples) <= TEST_POOL_SIZE, max(sampler.samples)
    assert max(sampler.samples) > 0
    print(f"max server connections {max(sampler.samples)} of {len(sampler.samples)} samples")


async def test_unknown_ids_cost_one_statement_and_no_session_state(pool):
    for _ in range(50):
        assert await tasks.get_progress(pool, uuid.uuid4()) is None
