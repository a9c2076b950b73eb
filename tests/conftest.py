"""Test fixtures: a throwaway PostgreSQL cluster and PgBouncer on free ports.

The session starts them with the same code as `make up` (ops.stack.Stack), in a
temporary directory, so the tests pass whether or not a local stack is running, and
stops them (and every process a test started) at the end.

Every test that touches the database gets a database of its own: a copy of one template
database, provisioned and migrated once per session (as pgqueuer and procrastinate test),
made with CREATE DATABASE ... TEMPLATE (about 15 ms) and dropped when the test ends. The
app reaches it through PgBouncer like production does (the "*" entry of pgbouncer.ini
routes any database name; its auth_query runs in that database, so the template carries
the auth lookup). `settings`, `pool`, `direct`, `api_url` and `processes` all point at the
test's database; a module may override `database` with a module-scoped copy when its
tests only run statements they roll back.

Tiers: tests that need PostgreSQL and PgBouncer are marked `db` here, by the fixtures they
use (see pytest_collection_modifyitems); `make test-fast` runs the others.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import shutil
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from aiohttp import web
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool

from ops import provision
from ops.stack import Stack, free_port
from service import db, migrate
from service.api import protocol
from service.api.app import create_app
from service.settings import Settings
from tests.fakes.ark import FakeArk, FakeArkThread
from tests.fakes.s3 import MotoS3, running_moto
from tests.helpers import ServiceProcess, ServiceProcesses

# PgBouncer's server pool for the tests: small, so that bounds are visible.
TEST_POOL_SIZE = 6
# Provisioned and migrated once per session; every test database is a copy of it.
TEMPLATE_DATABASE = "videotasks_template"
# Fixtures that bring up the session's PostgreSQL and PgBouncer: a test using any of them,
# directly or through other fixtures, is in the `db` tier.
STACK_FIXTURES = frozenset({"stack"})
# Test modules that start a PostgreSQL and PgBouncer of their own.
OWN_STACK_MODULES = frozenset({"test_bench_smoke.py"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark `db` every test that needs PostgreSQL and PgBouncer: `make test-fast` runs
    `-m "not db"`. By fixture closure, so a new test is put in the right tier without
    anyone remembering a marker."""
    for item in items:
        uses_stack = STACK_FIXTURES & set(getattr(item, "fixturenames", ()))
        if uses_stack or item.path.name in OWN_STACK_MODULES:
            item.add_marker(pytest.mark.db)


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    root = Path(tempfile.mkdtemp(prefix="video-tasks-test-", dir="/tmp"))
    stack = Stack.on_free_ports(
        root,
        pgbouncer_env={"PGBOUNCER_ANY_DATABASE": "1",
                       "PGBOUNCER_DEFAULT_POOL_SIZE": str(TEST_POOL_SIZE),
                       "PGBOUNCER_MAX_DB_CONNECTIONS": str(TEST_POOL_SIZE + 4),
                       "PGBOUNCER_RESERVE_POOL_SIZE": "0",
                       "PGBOUNCER_MAX_CLIENT_CONN": "400"},
        lease_s=6.0,
        heartbeat_interval_s=1.0,
        worker_poll_interval_s=0.2,
        retry_base_delay_s=0.2,
        shutdown_grace_s=10.0,
        # Tests create many tasks from one address; the fairness tests set their own.
        user_creates_per_minute=0,
        user_max_unfinished=0,
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


def with_dbname(url: str, name: str) -> str:
    """The same connection string naming another database; a URL stays a URL (tests
    rewrite its user and password as text)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in ("postgresql", "postgres"):
        return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))
    return make_conninfo(url, dbname=name)


@dataclass(frozen=True)
class DatabaseCopy:
    """A database of one test (or one module): a copy of the migrated template."""

    name: str
    # The stack's settings, with DATABASE_URL (through PgBouncer) and DATABASE_DIRECT_URL
    # naming this database.
    settings: Settings


class Databases:
    """Makes and drops copies of the template database, as the cluster's superuser."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self._numbers = itertools.count(1)
        self._make_template()

    def _admin(self) -> psycopg.Connection:
        return psycopg.connect(self.stack.superuser_url(), autocommit=True)

    def settings_for(self, name: str) -> Settings:
        s = self.stack.settings
        return s.replace(database_url=with_dbname(s.database_url, name),
                         database_direct_url=with_dbname(s.database_direct_url, name),
                         database_owner_url=with_dbname(s.database_owner_url, name))

    def _make_template(self) -> None:
        """Provision (roles, database, PgBouncer's auth lookup) and migrate the template
        with the same code as the stack's own database; then nobody may connect to it, so
        CREATE DATABASE ... TEMPLATE never finds it in use."""
        template = self.settings_for(TEMPLATE_DATABASE)
        values = self.stack.pgbouncer_values()
        provision.provision(self.stack.superuser_url(), template,
                            auth_user=values["auth_user"], auth_password=values["auth_password"])
        migrate.migrate(template)
        with self._admin() as admin:
            admin.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true "
                                  "ALLOW_CONNECTIONS false").format(
                sql.Identifier(TEMPLATE_DATABASE)))

    @contextlib.contextmanager
    def copy(self, label: str) -> Iterator[DatabaseCopy]:
        """A fresh copy for the duration of the block, dropped after it."""
        slug = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")
        name = f"test_{next(self._numbers)}_{slug}"[:63].rstrip("_")
        with self._admin() as admin:
            admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER {}").format(
                sql.Identifier(name), sql.Identifier(TEMPLATE_DATABASE),
                sql.Identifier(psycopg.conninfo.conninfo_to_dict(
                    self.stack.settings.database_owner_url)["user"])))
        copied = self.settings_for(name)
        # A copy does not inherit its template's database settings (the timeouts) nor
        # needs new grants; migrate finds every file applied and sets just those.
        migrate.migrate(copied)
        try:
            yield DatabaseCopy(name, copied)
        finally:
            self.drop(name)

    def drop(self, name: str) -> None:
        """End the database's sessions (PgBouncer's idle server connections to it among
        them), wait until they are gone, then drop it: DROP ... WITH (FORCE) alone would
        wait 100 ms for every session it signals. Its PgBouncer pool is freed a moment
        later (autodb_idle_timeout), so PgBouncer's server connections never add up
        across the session's databases."""
        # PgBouncer first: KILL drops its client and server connections to the database,
        # so its pool is empty (and freed) at once rather than holding idle server
        # connections to a database that no longer exists until server_idle_timeout.
        with contextlib.suppress(psycopg.Error), psycopg.connect(
                self.stack.settings.pgbouncer_admin_url, autocommit=True) as console:
            console.execute(sql.SQL("KILL {}").format(sql.Identifier(name)))
        with self._admin() as admin:
            sessions = ("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()")
            deadline = time.monotonic() + 10
            while admin.execute(sessions, [name]).fetchone()[0]:
                if time.monotonic() > deadline:
                    break  # WITH (FORCE) below ends what is left
                time.sleep(0.005)
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


@pytest.fixture(scope="session")
def databases(stack: Stack) -> Databases:
    return Databases(stack)


@pytest.fixture
def database(databases: Databases, request: pytest.FixtureRequest) -> Iterator[DatabaseCopy]:
    """This test's own database, dropped when it ends."""
    with databases.copy(request.node.name) as test_db:
        yield test_db


@pytest.fixture
def settings(database: DatabaseCopy) -> Settings:
    """The stack's settings, pointing at this test's database."""
    return database.settings


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[AsyncConnectionPool]:
    """A pool through PgBouncer, as the API and worker have."""
    pool = db.create_pool(settings, name="video-tasks-tests", max_size=8)
    await pool.open(wait=True, timeout=10)
    yield pool
    await pool.close()


@pytest.fixture
def direct(settings: Settings) -> Iterator[psycopg.Connection]:
    """A direct connection to PostgreSQL (the test's database), for looking behind
    PgBouncer."""
    with psycopg.connect(settings.database_direct_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def owner(settings: Settings) -> Iterator[psycopg.Connection]:
    """A direct connection as the schema's owner, for what the app's role may not do
    (TRUNCATE, ANALYZE)."""
    with psycopg.connect(settings.database_owner_url, autocommit=True) as conn:
        yield conn


@dataclass(frozen=True)
class InProcessApi:
    url: str
    runner: web.AppRunner

    @property
    def app(self) -> web.Application:
        return self.runner.app


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[InProcessApi]:
    """The API app served in this process on a real port, on the test's database."""
    settings = settings.replace(metrics_port=free_port())
    runner = protocol.ApiRunner(create_app(settings), settings)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    yield InProcessApi(f"http://127.0.0.1:{port}", runner)
    await runner.cleanup()


@pytest.fixture
def api_url(api: InProcessApi) -> str:
    return api.url


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


class ProcessesOnDatabase(ServiceProcesses):
    """ServiceProcesses whose API and workers use the test's database."""

    def __init__(self, stack: Stack, settings: Settings) -> None:
        super().__init__(stack)
        self.database_urls = {"database_url": settings.database_url,
                              "database_direct_url": settings.database_direct_url}

    def start(self, command: str, **overrides: Any) -> ServiceProcess:
        return super().start(command, **{**self.database_urls, **overrides})


@pytest.fixture
def processes(stack: Stack, settings: Settings) -> Iterator[ServiceProcesses]:
    """Start API and worker subprocesses on the test's database (so the queue starts
    empty); all stopped at the end."""
    procs = ProcessesOnDatabase(stack, settings)
    try:
        yield procs
    finally:
        procs.stop_all()
