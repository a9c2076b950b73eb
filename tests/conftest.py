"""Test fixtures: a throwaway PostgreSQL cluster and PgBouncer on free ports.

The session starts them with the same code as `make up` (ops.stack.Stack), in a
temporary directory, so the tests pass whether or not a local stack is running, and
stops them (and every process a test started) at the end.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import psycopg
import pytest
from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from ops.stack import Stack, free_port
from service import db
from service.api.app import create_app
from service.settings import Settings
from tests.fakes.ark import FakeArk, FakeArkThread
from tests.fakes.s3 import MotoS3, running_moto
from tests.helpers import ServiceProcesses

# PgBouncer's server pool for the tests: small, so that bounds are visible.
TEST_POOL_SIZE = 6


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    root = Path(tempfile.mkdtemp(prefix="video-tasks-test-", dir="/tmp"))
    stack = Stack.on_free_ports(
        root,
        pgbouncer_env={"PGBOUNCER_DEFAULT_POOL_SIZE": str(TEST_POOL_SIZE),
                       "PGBOUNCER_MAX_DB_CONNECTIONS": str(TEST_POOL_SIZE + 4),
                       "PGBOUNCER_RESERVE_POOL_SIZE": "0",
                       "PGBOUNCER_MAX_CLIENT_CONN": "400"},
        lease_s=6.0,
        heartbeat_interval_s=1.0,
        worker_poll_interval_s=0.2,
        retry_base_delay_s=0.2,
        shutdown_grace_s=10.0,
    )
    try:
        stack.up(app=False, log=lambda _msg: None)
        yield stack
    finally:
        stack.down(log=lambda _msg: None)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def fake_ark() -> Iterator[FakeArk]:
    """A local server speaking Ark's video-task protocol, for worker subprocesses."""
    with FakeArkThread(api_key="test-ark-key") as fake:
        yield fake


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """A real S3 server on loopback (moto's server mode)."""
    with running_moto(bucket="video-tasks-test") as server:
        yield server


@pytest.fixture(scope="session")
def settings(stack: Stack) -> Settings:
    return stack.settings


@pytest.fixture(scope="session")
async def pool(settings: Settings) -> AsyncIterator[AsyncConnectionPool]:
    """A pool through PgBouncer, as the API and worker have."""
    pool = db.create_pool(settings, name="video-tasks-tests", max_size=8)
    await pool.open(wait=True, timeout=10)
    yield pool
    await pool.close()


@pytest.fixture
def direct(settings: Settings) -> Iterator[psycopg.Connection]:
    """A direct connection to PostgreSQL, for looking behind PgBouncer."""
    with psycopg.connect(settings.database_direct_url, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="session")
async def api_url(settings: Settings) -> AsyncIterator[str]:
    """The API app served in this process on a real port."""
    runner = web.AppRunner(create_app(settings))
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


@pytest.fixture
def processes(stack: Stack) -> Iterator[ServiceProcesses]:
    """Start API and worker subprocesses against the test stack; all stopped at the end.

    The queue starts empty: workers would otherwise first work through the tasks that
    earlier tests created and left pending.
    """
    with psycopg.connect(stack.settings.database_direct_url, autocommit=True) as conn:
        conn.execute("DELETE FROM video_generation_tasks")
    procs = ServiceProcesses(stack)
    try:
        yield procs
    finally:
        procs.stop_all()
