"""Migrations: plain SQL files, applied once each, safe twice and from two processes."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from service import migrate, queries, tasks
from service.settings import PROJECT_DIR


@pytest.fixture
def empty_database(stack, settings):
    name = f"migrate_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(stack.superuser_url(), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} OWNER app").format(sql.Identifier(name)))
    try:
        yield settings.replace(database_direct_url=make_conninfo(
            settings.database_direct_url, dbname=name))
    finally:
        with psycopg.connect(stack.superuser_url(), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def applied_versions(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [row[0] for row in conn.execute(
            "SELECT version FROM schema_migrations ORDER BY version")]


def test_migrations_apply_in_order_once(empty_database):
    expected = [path.stem for path in migrate.migration_files()]
    assert migrate.migrate(empty_database) == expected
    assert migrate.migrate(empty_database) == []
    assert applied_versions(empty_database.database_direct_url) == expected


def test_two_processes_migrating_at_once_apply_each_file_once(empty_database):
    env = {"DATABASE_DIRECT_URL": empty_database.database_direct_url, "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen([sys.executable, "-m", "service", "migrate"], env=env,
                              cwd=PROJECT_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outputs = [proc.communicate(timeout=60)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    assert sum("applied:" in out for out in outputs) == 1, outputs
    assert applied_versions(empty_database.database_direct_url) == [
        path.stem for path in migrate.migration_files()]


def test_status_constraint_matches_the_status_vocabulary(direct):
    valid = {status.value for status in tasks.Status}
    with pytest.raises(psycopg.errors.CheckViolation):
        direct.execute(
            "INSERT INTO video_generation_tasks (task_id, product_name, theme, duration, "
            "total_parts, status) VALUES (%s, 'x', 'y', 5, 1, 'exploded')", [uuid.uuid4()])
    definition = direct.execute(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conname = 'video_generation_tasks_status_check'").fetchone()[0]
    assert all(f"'{status}'" in definition for status in valid)


def test_every_named_statement_parses_in_postgresql(direct):
    """EXPLAIN each statement: a typo in queries.sql fails here, not in production."""
    for name, text in queries.all_queries().items():
        # EXPLAIN needs parameters; give NULLs of unknown type where placeholders are.
        with direct.transaction(force_rollback=True):
            placeholders = {key: None for key in _placeholders(text)}
            cur = direct.cursor()
            cur.execute("EXPLAIN " + text, placeholders)
            assert cur.fetchall(), name


def test_claim_uses_the_partial_index(direct):
    with direct.transaction(force_rollback=True):
        direct.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(row[0] for row in direct.execute(
            "EXPLAIN " + queries.get("claim_tasks"),
            {"worker_id": "w", "limit": 4, "lease_s": 30, "running": []}))
    assert "video_generation_tasks_claim_idx" in plan, plan


def _placeholders(text: str) -> set[str]:
    return set(re.findall(r"%\((\w+)\)s", text))
