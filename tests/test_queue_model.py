"""A model of the queue against real PostgreSQL, through PgBouncer: Hypothesis drives three
workers through every statement a worker and the rescuer run (claim, heartbeat, part
intent, finish part, stage, complete, fail, retry, release, rescue) in any order, with
time moved forward for one task at a time (a lease or a backoff running out, as if the
worker had frozen or the delay passed), stalled runs that carry on, and takeovers by
another worker; after every step it checks that the database is what the model says and
that the queue's invariants hold:

- each statement changes a task exactly when its claim owns it (the token is the task's
  and the lease is live): a stale or expired claim's statement returns nothing and leaves
  the task, its parts and its attempts byte for byte as they were;
- the table CHECKs hold (a statement that broke one would raise CheckViolation here);
- at most one claim of a task is open (live or not yet rescued), and it is the task's;
- a task is completed by one claim at most, and a completed task never changes again;
- current_part never goes back, and the stored parts are exactly those before it.

The workers are sequential (one statement at a time); concurrency itself (SKIP LOCKED,
FOR SHARE) is tested with real processes elsewhere. The test has its own copy of the
template database, emptied for each example.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from hypothesis import event
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from service import queries, tasks
from tests.conftest import Databases

WORKERS = 3
MAX_TASKS = 3
# Tasks of two users: the fairness counters must stay exact for each.
REQUESTERS = ("openid:a", "addr:127.0.0.1")
# Leases never run out by themselves during a run: time moves only when a rule says so.
LEASE_S = 600.0
# A retry delay that is still running at the end of any run, unless time moves.
LONG_DELAY_S = 3600.0
RUNNING = {status.value for status in tasks.RUNNING}
STAGE_FROM = {"merging": {"generating", "merging"}, "uploading": {"merging", "uploading"}}


@dataclass
class Claim:
    """One run of a task, as its worker sees it."""

    worker: int
    task_id: uuid.UUID
    token: uuid.UUID
    total_parts: int
    # Parts this run believes are stored: the claim's current_part, plus its own.
    parts_done: int
    # The stage this run believes the task is in.
    stage: str = "generating"


@dataclass
class Task:
    """What the row, its parts and its attempts must be."""

    total_parts: int
    status: str = "pending"
    current_part: int = 0
    attempts: int = 0
    token: uuid.UUID | None = None
    live: bool = False  # the lease has not run out
    runnable: bool = True  # run_after <= now()
    stored: set[int] = field(default_factory=set)
    outcomes: dict[uuid.UUID, str | None] = field(default_factory=dict)


@dataclass
class Connections:
    """One test's database, reached as the model needs it: a client connection through
    PgBouncer per worker, as in production, and one straight to PostgreSQL to read the
    truth and to move time."""

    workers: list[psycopg.Connection]
    direct: psycopg.Connection


@contextlib.contextmanager
def connections(databases: Databases) -> Iterator[Connections]:
    with contextlib.ExitStack() as stack:
        test_db = stack.enter_context(databases.copy("queue_model"))
        workers = [stack.enter_context(psycopg.connect(
            test_db.settings.database_url, autocommit=True, prepare_threshold=None,
            application_name=f"model-worker-{n}")) for n in range(WORKERS)]
        direct = stack.enter_context(psycopg.connect(test_db.settings.database_direct_url,
                                                     autocommit=True))
        yield Connections(workers, direct)


class QueueModel(RuleBasedStateMachine):
    def __init__(self, conns: Connections) -> None:
        super().__init__()
        self.workers, self.direct = conns.workers, conns.direct
        # The test's own database, emptied for each example: a copy of the template (and
        # new connections) per example would cost more than the example's steps.
        # DELETE, not TRUNCATE: the app's role may not TRUNCATE. Parts and attempts go
        # with their tasks (ON DELETE CASCADE).
        self.direct.execute("DELETE FROM video_task_requesters")
        self.direct.execute("DELETE FROM video_generation_tasks")
        self.tasks: dict[uuid.UUID, Task] = {}
        self.requester_of: dict[uuid.UUID, str] = {}
        self.claims: list[Claim] = []
        # What each worker believes it runs (it passes them to claim_tasks).
        self.running: list[list[Claim]] = [[] for _ in range(WORKERS)]
        self.highest_part: dict[uuid.UUID, int] = {}
        self.completed_rows: dict[uuid.UUID, tuple] = {}

    # --- running statements ------------------------------------------------------------

    def run(self, worker: int, name: str, params: dict[str, Any]) -> list[tuple]:
        return self.workers[worker].execute(queries.get(name), params).fetchall()

    def snapshot(self, task_id: uuid.UUID) -> tuple:
        """Everything about one task, byte for byte."""
        return tuple(self.direct.execute(query, [task_id]).fetchall() for query in (
            "SELECT * FROM video_generation_tasks WHERE task_id = %s",
            "SELECT * FROM video_task_parts WHERE task_id = %s ORDER BY part_index",
            "SELECT * FROM video_task_attempts WHERE task_id = %s ORDER BY claim_token"))

    def guarded(self, claim: Claim, name: str, params: dict[str, Any],
                expected: bool) -> bool:
        """Run a statement guarded by the claim; it must change the task exactly when the
        model says, and change nothing at all otherwise."""
        before = self.snapshot(claim.task_id)
        rows = self.run(claim.worker, name, {"task_id": claim.task_id,
                                             "claim_token": claim.token, **params})
        assert bool(rows) == expected, (name, rows, claim, self.tasks[claim.task_id])
        if not expected:
            assert self.snapshot(claim.task_id) == before, f"{name} by a stale claim changed"
        event(f"{name}: {'changed the task' if expected else 'refused'}")
        return expected

    def owns(self, claim: Claim) -> bool:
        task = self.tasks[claim.task_id]
        return task.token == claim.token and task.live

    def end_claim(self, claim: Claim, outcome: str) -> Task:
        task = self.tasks[claim.task_id]
        task.outcomes[claim.token] = outcome
        task.token, task.live = None, False
        self.forget(claim)
        return task

    def forget(self, claim: Claim) -> None:
        with contextlib.suppress(ValueError):
            self.running[claim.worker].remove(claim)

    def pick(self, data: st.DataObject, candidates: list[Claim]) -> Claim:
        """Half the time a run its worker still believes in, else any run ever claimed,
        stale ones included (a worker that froze, or lost the database for a while)."""
        believed = [c for c in candidates if c in self.running[c.worker]]
        pools = [pool for pool in (believed, candidates) if pool]
        pool = data.draw(st.sampled_from(pools), label="kind of run")
        return data.draw(st.sampled_from(pool), label="claim")

    # --- the API and the workers -------------------------------------------------------

    @initialize(total_parts=st.integers(1, 2))
    def first_task(self, total_parts: int) -> None:
        self.create(total_parts)

    @precondition(lambda self: len(self.tasks) < MAX_TASKS)
    @rule(total_parts=st.integers(1, 2), requester=st.sampled_from(REQUESTERS))
    def create(self, total_parts: int, requester: str = REQUESTERS[0]) -> None:
        task_id = uuid.uuid4()
        (row,) = self.run(0, "create_task", {
            "task_id": task_id, "product_name": "螺栓", "theme": "品质",
            "duration": 5 * total_parts, "type": "video", "total_parts": total_parts,
            "idempotency_key": None, "request_fingerprint": None, "owner_openid": None,
            "requester": requester, "notice_template_id": None, "creates_per_minute": 0,
            "max_unfinished": 0, "unfinished_retry_s": 30})
        assert row[0] == task_id
        self.tasks[task_id] = Task(total_parts)
        self.requester_of[task_id] = requester

    @rule(worker=st.integers(0, WORKERS - 1), limit=st.integers(1, 3))
    def claim(self, worker: int, limit: int) -> None:
        running = [c.task_id for c in self.running[worker]]
        eligible = {task_id for task_id, task in self.tasks.items()
                    if task.status == "pending" and task.runnable and task_id not in running}
        rows = self.run(worker, "claim_tasks", {"worker_id": f"worker-{worker}",
                                                "limit": limit, "lease_s": LEASE_S,
                                                "running": running})
        assert len(rows) == min(limit, len(eligible)), (rows, eligible)
        # RETURNING comes in no set order (and task ids are random): taken in the order the
        # model made the tasks, so that a replayed example draws the same claims.
        made = list(self.tasks)
        rows = sorted(rows, key=lambda row: made.index(row[0]))
        for task_id, token, _name, _theme, _duration, total_parts, current_part, attempts in rows:
            assert task_id in eligible
            task = self.tasks[task_id]
            assert (current_part, attempts) == (task.current_part, task.attempts + 1)
            task.status, task.token, task.live = "generating", token, True
            task.attempts += 1
            task.outcomes[token] = None
            claim = Claim(worker, task_id, token, total_parts, parts_done=current_part)
            self.claims.append(claim)
            self.running[worker].append(claim)

    @rule(worker=st.integers(0, WORKERS - 1))
    def heartbeat(self, worker: int) -> None:
        mine = list(self.running[worker])
        rows = self.run(worker, "heartbeat_tasks", {
            "claim_tokens": [c.token for c in mine], "lease_s": LEASE_S})
        assert {row[0] for row in rows} == {c.token for c in mine if self.owns(c)}
        for claim in mine:
            if not self.owns(claim):
                self.forget(claim)  # the worker drops the run, as service.worker does

    @precondition(lambda self: any(c.parts_done < c.total_parts for c in self.claims))
    @rule(data=st.data())
    def start_part(self, data: st.DataObject) -> None:
        claim = self.pick(data, [c for c in self.claims if c.parts_done < c.total_parts])
        task = self.tasks[claim.task_id]
        expected = (self.owns(claim) and task.status == "generating"
                    and claim.parts_done not in task.stored)
        self.guarded(claim, "record_part_intent", {"part_index": claim.parts_done,
                                                   "provider": "simulated"}, expected)

    @precondition(lambda self: self.claims)
    @rule(data=st.data(), steps=st.integers(1, 4))
    def advance(self, data: st.DataObject, steps: int) -> None:
        """A run takes its next steps, as service.worker does, until one is refused or
        the run is over: store the next part; once all are stored, merging, then
        uploading (either may be sent twice, as a retried statement is), then complete."""
        claim = self.pick(data, self.claims)
        for _ in range(steps):
            if not self.step(data, claim) or claim.stage == "completed":
                return

    @precondition(lambda self: any(self.owns(c) for c in self.claims))
    @rule(data=st.data(), before=st.integers(0, 5), after=st.integers(1, 3))
    def stall(self, data: st.DataObject, before: int, after: int) -> None:
        """A run takes some steps, then stalls for longer than its lease (a frozen
        process, a long pause, the database out of reach) and carries on as if nothing
        had happened: every step after the stall is refused."""
        claim = self.pick(data, [c for c in self.claims if self.owns(c)])
        for _ in range(before):
            if claim.stage == "completed" or not self.step(data, claim):
                break
        if not self.owns(claim):
            return
        self.lease_runs_out(claim.task_id)
        event(f"stall: at {claim.stage}")
        for _ in range(after):
            assert not self.step(data, claim), "a run went on after its lease ran out"

    @precondition(lambda self: any(self.owns(c) for c in self.claims))
    @rule(data=st.data(), rescuer=st.integers(0, WORKERS - 1),
          claimer=st.integers(0, WORKERS - 1), limit=st.integers(1, 3))
    def taken_over(self, data: st.DataObject, rescuer: int, claimer: int, limit: int) -> None:
        """A run's worker freezes past its lease, a rescuer hands the task back, and a
        worker claims (another, or the frozen one's own claim loop, which must not take
        the task its stale run still holds); the frozen run has not noticed."""
        claim = self.pick(data, [c for c in self.claims if self.owns(c)])
        self.lease_runs_out(claim.task_id)
        self.rescue(rescuer, max_attempts=3)
        self.claim(claimer, limit)

    @precondition(lambda self: any(self.overtaken(c) for c in self.claims))
    @rule(data=st.data(), statement=st.sampled_from([
        "heartbeat_tasks", "record_part_intent", "record_part_stored", "set_stage",
        "complete_task", "fail_task", "retry_task", "release_task"]))
    def overtaken_run_speaks(self, data: st.DataObject, statement: str) -> None:
        """A run whose task another claim has taken over sends any of its statements:
        each is refused and changes nothing."""
        claim = data.draw(st.sampled_from([c for c in self.claims if self.overtaken(c)]),
                          label="claim")
        part = min(claim.parts_done, claim.total_parts - 1)
        params = {
            "heartbeat_tasks": {"claim_tokens": [claim.token], "lease_s": LEASE_S},
            "record_part_intent": {"part_index": part, "provider": "simulated"},
            "record_part_stored": {"part_index": part, "provider": "simulated",
                                   "remote_task_id": None, "object_key": "parts/stale.mp4",
                                   "usage_tokens": None, "parts_done": part + 1,
                                   "progress": 0, "lease_s": LEASE_S},
            "set_stage": {"status": "uploading", "progress": tasks.UPLOADING_PROGRESS,
                          "lease_s": LEASE_S},
            "complete_task": {"video_url": "http://x/stale.mp4",
                              "video_key": "videos/stale.mp4"},
            "fail_task": {"error_message": "stale", "error_code": "generation_failed"},
            "retry_task": {"error_message": "stale", "delay_s": 0.0},
            "release_task": {},
        }[statement]
        event("overtaken run speaks")
        self.guarded(claim, statement, params, expected=False)

    def overtaken(self, claim: Claim) -> bool:
        return self.tasks[claim.task_id].token not in (None, claim.token)

    def step(self, data: st.DataObject, claim: Claim) -> bool:
        task = self.tasks[claim.task_id]
        owns = self.owns(claim)
        if claim.parts_done < claim.total_parts:
            part = claim.parts_done
            if not self.guarded(claim, "record_part_stored", {
                    "part_index": part, "provider": "simulated", "remote_task_id": None,
                    "object_key": f"parts/{claim.task_id}/{part}.mp4", "usage_tokens": None,
                    "parts_done": part + 1,
                    "progress": tasks.progress_after_parts(part + 1, claim.total_parts),
                    "lease_s": LEASE_S}, owns and task.status == "generating"):
                return False
            claim.parts_done += 1
            task.stored.add(part)
            task.current_part = max(task.current_part, part + 1)
            return True
        repeat = claim.stage in STAGE_FROM and data.draw(st.booleans(), label="repeat")
        if claim.stage in ("uploading", "completed") and not repeat:
            if not self.guarded(claim, "complete_task", {
                    "video_url": f"http://x/{claim.task_id}.mp4",
                    "video_key": f"videos/{claim.task_id}.mp4"},
                    owns and task.status == "uploading"):
                return False
            task = self.end_claim(claim, "completed")
            task.status, task.current_part = "completed", task.total_parts
            claim.stage = "completed"
            return True
        target = claim.stage if repeat else {"generating": "merging",
                                             "merging": "uploading"}[claim.stage]
        if not self.guarded(claim, "set_stage", {
                "status": target, "lease_s": LEASE_S,
                "progress": {"merging": tasks.MERGING_PROGRESS,
                             "uploading": tasks.UPLOADING_PROGRESS}[target]},
                owns and task.status in STAGE_FROM[target]):
            return False
        claim.stage = task.status = target
        return True

    @precondition(lambda self: self.claims)
    @rule(data=st.data(), how=st.sampled_from(["fail", "retry", "retry later", "release"]))
    def end_run(self, data: st.DataObject, how: str) -> None:
        """The run ends before completing: a permanent error, a transient one (runnable
        again at once, or after a backoff), or a graceful hand-back."""
        claim = self.pick(data, self.claims)
        if how == "fail":
            if self.guarded(claim, "fail_task", {"error_message": "the provider refused",
                                                 "error_code": "content_rejected"},
                            self.owns(claim)):
                self.end_claim(claim, "failed").status = "failed"
        elif how.startswith("retry"):
            delay_s = LONG_DELAY_S if how == "retry later" else 0.0
            if self.guarded(claim, "retry_task", {"error_message": "try again",
                                                   "delay_s": delay_s}, self.owns(claim)):
                task = self.end_claim(claim, "retried")
                task.status, task.runnable = "pending", delay_s == 0
        elif self.guarded(claim, "release_task", {}, self.owns(claim)):
            task = self.end_claim(claim, "released")
            task.status, task.runnable = "pending", True
            task.attempts = max(task.attempts - 1, 0)

    # --- the rescuer, and time ---------------------------------------------------------

    @rule(worker=st.integers(0, WORKERS - 1), max_attempts=st.integers(1, 3))
    def rescue(self, worker: int, max_attempts: int) -> None:
        expired = {task_id for task_id, task in self.tasks.items()
                   if task.status in RUNNING and not task.live}
        rows = self.run(worker, "rescue_expired_tasks",
                        {"max_attempts": max_attempts, "limit": tasks.RESCUE_BATCH})
        assert {row[0] for row in rows} == expired
        for task_id, status in rows:
            task = self.tasks[task_id]
            expected = "failed" if task.attempts >= max_attempts else "pending"
            assert status == expected
            task.outcomes[task.token] = "expired"
            task.status, task.token, task.runnable = expected, None, True
            event(f"rescue_expired_tasks: {expected}")

    @precondition(lambda self: any(t.live or not t.runnable for t in self.tasks.values()))
    @rule(data=st.data())
    def time_passes(self, data: st.DataObject) -> None:
        """For one task, as if longer than its lease had passed without a word from its
        worker, or its retry's backoff had run out."""
        task_id = data.draw(st.sampled_from(
            [task_id for task_id, task in self.tasks.items()
             if task.live or not task.runnable]), label="task")
        task = self.tasks[task_id]
        if task.live:
            self.lease_runs_out(task_id)
        else:
            self.direct.execute("UPDATE video_generation_tasks SET run_after = "
                                "now() - interval '1 second' WHERE task_id = %s", [task_id])
            task.runnable = True

    def lease_runs_out(self, task_id: uuid.UUID) -> None:
        self.direct.execute("UPDATE video_generation_tasks SET lease_expires_at = "
                            "now() - interval '1 second' WHERE task_id = %s", [task_id])
        self.tasks[task_id].live = False

    # --- what must hold after every step -----------------------------------------------

    @invariant()
    def database_is_what_the_model_says(self) -> None:
        found = {row[0]: row[1:] for row in self.direct.execute(
            "SELECT task_id, status, current_part, attempts, claim_token, "
            "coalesce(lease_expires_at > now(), false), run_after <= now() "
            "FROM video_generation_tasks")}
        assert set(found) == set(self.tasks)
        for task_id, task in self.tasks.items():
            status, current_part, attempts, token, live, runnable = found[task_id]
            assert (status, current_part, attempts, token, live) == (
                task.status, task.current_part, task.attempts, task.token, task.live), task
            if status == "pending":
                assert runnable == task.runnable, task
        outcomes: dict[uuid.UUID, dict[uuid.UUID, str | None]] = {t: {} for t in self.tasks}
        for task_id, token, outcome in self.direct.execute(
                "SELECT task_id, claim_token, outcome FROM video_task_attempts"):
            outcomes[task_id][token] = outcome
        assert outcomes == {task_id: task.outcomes for task_id, task in self.tasks.items()}

    @invariant()
    def each_requesters_unfinished_count_is_exact(self) -> None:
        """The fairness cap's counter, kept by create, complete, fail and the rescuer in
        their own statements, always equals the requester's unfinished tasks."""
        counted = dict(self.direct.execute(
            "SELECT requester, unfinished FROM video_task_requesters").fetchall())
        for requester in REQUESTERS:
            unfinished = sum(1 for task_id, task in self.tasks.items()
                             if self.requester_of[task_id] == requester
                             and task.status not in ("completed", "failed"))
            assert counted.get(requester, 0) == unfinished, (requester, counted)

    @invariant()
    def at_most_one_open_claim_per_task_and_it_is_the_tasks(self) -> None:
        rows = self.direct.execute(
            "SELECT t.task_id, t.status, t.claim_token, "
            "       array_agg(a.claim_token) "
            "       FILTER (WHERE a.claim_token IS NOT NULL AND a.outcome IS NULL) "
            "FROM video_generation_tasks t LEFT JOIN video_task_attempts a USING (task_id) "
            "GROUP BY t.task_id, t.status, t.claim_token").fetchall()
        for task_id, status, token, open_claims in rows:
            if status in RUNNING:
                assert open_claims == [token], (task_id, status, open_claims)
            else:
                assert open_claims is None and token is None, (task_id, status, open_claims)

    @invariant()
    def a_task_completes_once_and_never_changes_after(self) -> None:
        twice = self.direct.execute(
            "SELECT task_id FROM video_task_attempts WHERE outcome = 'completed' "
            "GROUP BY task_id HAVING count(*) > 1").fetchall()
        assert twice == []
        for (task_id,) in self.direct.execute(
                "SELECT task_id FROM video_generation_tasks WHERE status = 'completed'"):
            now = self.snapshot(task_id)
            assert self.completed_rows.setdefault(task_id, now) == now, "a completed task moved"

    @invariant()
    def parts_never_go_back(self) -> None:
        stored: dict[uuid.UUID, list[int]] = {task_id: [] for task_id in self.tasks}
        for task_id, part in self.direct.execute(
                "SELECT task_id, part_index FROM video_task_parts WHERE state = 'stored' "
                "ORDER BY task_id, part_index"):
            stored[task_id].append(part)
        for task_id, current_part in self.direct.execute(
                "SELECT task_id, current_part FROM video_generation_tasks"):
            assert current_part >= self.highest_part.get(task_id, 0), "current_part went back"
            self.highest_part[task_id] = current_part
            assert stored[task_id] == sorted(self.tasks[task_id].stored) == list(
                range(current_part))


def test_the_queue_keeps_its_invariants_whatever_the_workers_do(databases: Databases) -> None:
    with connections(databases) as conns:
        run_state_machine_as_test(
            lambda: QueueModel(conns),
            settings=hypothesis_settings(max_examples=100, stateful_step_count=40,
                                         deadline=None, database=None))
