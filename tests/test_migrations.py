"""Migrations: plain SQL files, applied once each, safe twice and from two processes."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from service import migrate, queries, tasks
from service.settings import PROJECT_DIR


@pytest.fixture
def empty_database(stack, settings):
    name = f"migrate_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(stack.superuser_url(), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
            sql.Identifier(name), sql.Identifier(str(conninfo_to_dict(
                settings.database_owner_url)["user"]))))
    try:
        yield settings.replace(
            database_direct_url=make_conninfo(settings.database_direct_url, dbname=name),
            database_owner_url=make_conninfo(settings.database_owner_url, dbname=name))
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
    env = {"DATABASE_DIRECT_URL": empty_database.database_direct_url,
           "DATABASE_OWNER_URL": empty_database.database_owner_url, "PATH": "/usr/bin:/bin"}
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


# A queue after some weeks: many finished tasks (each with its claim in the audit), a
# backlog of pending ones, some running with a few leases already expired.
REALISTIC_QUEUE = [
    """WITH finished AS (
           INSERT INTO video_generation_tasks (task_id, product_name, theme, duration,
               total_parts, status, progress, current_part, video_url, attempts, created_at,
               run_after, finished_at)
           SELECT gen_random_uuid(), 'p', 't', 10, 2, 'completed', 100, 2, 'http://x/v.mp4',
                  1, now() - i * interval '1 minute', now() - i * interval '1 minute',
                  now() - i * interval '1 minute' + interval '30 s'
           FROM generate_series(1, 50000) AS i
           RETURNING task_id)
       INSERT INTO video_task_attempts (claim_token, task_id, worker_id, outcome, ended_at)
       SELECT gen_random_uuid(), task_id, 'w', 'completed', now() FROM finished""",
    """INSERT INTO video_generation_tasks (task_id, product_name, theme, duration, total_parts,
           created_at, run_after)
       SELECT gen_random_uuid(), 'p', 't', 10, 2, now() - i * interval '1 s',
              now() + (50 - i) * interval '1 s'
       FROM generate_series(1, 100) AS i""",
    """WITH running AS (
           INSERT INTO video_generation_tasks (task_id, product_name, theme, duration,
               total_parts, status, worker_id, claim_token, lease_expires_at, attempts)
           SELECT gen_random_uuid(), 'p', 't', 10, 2, 'generating', 'w', gen_random_uuid(),
                  now() + (i - 5) * interval '1 s', 1
           FROM generate_series(1, 20) AS i
           RETURNING task_id, claim_token)
       INSERT INTO video_task_attempts (claim_token, task_id, worker_id)
       SELECT claim_token, task_id, 'w' FROM running""",
    "ANALYZE video_generation_tasks",
    "ANALYZE video_task_attempts",
]


def test_claim_and_rescue_use_their_indexes_on_a_realistic_queue(direct, owner):
    """With real statistics, not a planner told to avoid sequential scans: the claim and
    the rescuer, which every worker runs every poll, read through their partial indexes
    and never scan the tasks or the attempts."""
    for statement in REALISTIC_QUEUE:
        owner.execute(statement)  # ANALYZE is the owner's

    def plan(name: str, params: dict) -> str:
        return "\n".join(row[0] for row in direct.execute("EXPLAIN " + queries.get(name),
                                                          params))

    claim = plan("claim_tasks", {"worker_id": "w", "limit": 4, "lease_s": 30, "running": []})
    # The fair claim reads the unfinished tasks only, through the partial indexes of the
    # pending and the running ones, never the 50,000 finished.
    assert "video_generation_tasks_claim_idx" in claim, claim
    assert "video_generation_tasks_requester_idx" in claim, claim
    assert "Seq Scan" not in claim, claim
    rescue = plan("rescue_expired_tasks", {"max_attempts": 3, "limit": 100})
    assert "Index Scan using video_generation_tasks_lease_idx" in rescue, rescue
    assert "Seq Scan" not in rescue, rescue


def test_a_test_database_is_a_copy_of_the_migrated_and_provisioned_template(direct, settings):
    """What conftest's template gives every test: all migrations, and PgBouncer's auth
    lookup (its auth_query runs in the database the client asks for)."""
    assert applied_versions(settings.database_direct_url) == [
        path.stem for path in migrate.migration_files()]
    assert direct.execute(
        "SELECT p.prosecdef, r.rolsuper FROM pg_proc p JOIN pg_namespace n "
        "ON n.oid = p.pronamespace JOIN pg_roles r ON r.oid = p.proowner "
        "WHERE n.nspname = 'pgbouncer' AND p.proname = 'user_lookup'").fetchall() == [
            (True, True)]
    with psycopg.connect(settings.database_url, prepare_threshold=None) as through_pgbouncer:
        assert through_pgbouncer.execute("SELECT current_database()").fetchone() == (
            direct.info.dbname,)


def _placeholders(text: str) -> set[str]:
    return set(re.findall(r"%\((\w+)\)s", text))
