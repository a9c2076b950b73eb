"""Nothing lost: every created task reaches exactly one terminal state, whatever dies.

Real processes on the real stack: the API and workers run as `python -m service ...`
subprocesses, PostgreSQL and PgBouncer are the session's own. Workers use the simulated
provider with short parts, so a task is reliably "mid-task" when a fault hits, and log
every rendered part to a file: that is how the tests see which part was rendered by
which process.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import random
import re
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psycopg
import pytest

from ops.stack import Stack, port_open, wait_until
from service import db, errors
from service.settings import Settings
from tests.helpers import WRITE_UP_REQUEST, ServiceProcess, ServiceProcesses, create_task

pytestmark = pytest.mark.asyncio

TERMINAL = ("completed", "failed")
# Generous bounds: the machine has 2 cores and other suites may run at the same time.
MAX_ANSWER_S = 6.0
RECOVERY_TIMEOUT_S = 20.0
DRAIN_TIMEOUT_S = 90.0


# --- fixtures and helpers -----------------------------------------------------------


@pytest.fixture
def render_log(stack: Stack) -> Path:
    return stack.root / f"renders-{uuid.uuid4().hex[:8]}.log"


@pytest.fixture
async def healthy_stack(stack: Stack, pool) -> Any:
    """Whatever a fault test did, leave PostgreSQL and PgBouncer up for the tests after
    it, and a pool through PgBouncer working again."""
    yield stack
    if not stack.postgres_pid():
        stack.start_postgres(log=lambda _msg: None)
    if not stack.pgbouncer_pid():
        stack.start_pgbouncer(log=lambda _msg: None)
    deadline = time.monotonic() + 30
    while True:
        try:
            await pool.check()
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def simulated(render_log: Path, *, part_s: float, **overrides: Any) -> dict[str, Any]:
    """Worker settings: the simulated provider with short parts, logging its renders."""
    return {"video_provider": "simulated", "simulated_part_s": part_s,
            "simulated_render_log": str(render_log), **overrides}


def renders(render_log: Path) -> dict[str, list[tuple[int, int]]]:
    """task_id -> [(part, pid)] in render order, from the simulated provider's log."""
    found: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
    if render_log.exists():
        for line in render_log.read_text().splitlines():
            task_id, part, pid = line.split()[:3]
            found[task_id].append((int(part), int(pid)))
    return found


def rows(direct: psycopg.Connection, task_ids: list[str]) -> dict[str, dict[str, Any]]:
    cur = direct.execute(
        "SELECT task_id::text, status, current_part, total_parts, attempts, worker_id, "
        "lease_expires_at, video_url, error_message FROM video_generation_tasks "
        "WHERE task_id = ANY(%s::uuid[])", [task_ids])
    names = [d.name for d in cur.description]
    return {row[0]: dict(zip(names, row, strict=True)) for row in cur.fetchall()}


async def wait_rows(direct: psycopg.Connection, task_ids: list[str], predicate,
                    timeout_s: float, what: str) -> dict[str, dict[str, Any]]:
    """Wait until `predicate(row)` holds for every task."""
    return await wait_all(direct, task_ids,
                          lambda found: all(predicate(r) for r in found.values()),
                          timeout_s, what)


async def wait_all(direct: psycopg.Connection, task_ids: list[str], predicate,
                   timeout_s: float, what: str) -> dict[str, dict[str, Any]]:
    """Wait until `predicate({task_id: row})` holds."""
    deadline = time.monotonic() + timeout_s
    while True:
        current = rows(direct, task_ids)
        if len(current) == len(task_ids) and predicate(current):
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout_s:.0f} s: {current}")
        await asyncio.sleep(0.1)


async def wait_exit(proc: ServiceProcess, timeout_s: float) -> int:
    return await asyncio.to_thread(proc.wait, timeout_s)


def outcomes(direct: psycopg.Connection, task_ids: list[str]) -> dict[str, list[str | None]]:
    """task_id -> how each of its claims ended, oldest first, from the attempts audit."""
    found: dict[str, list[str | None]] = {task_id: [] for task_id in task_ids}
    for task_id, outcome in direct.execute(
            "SELECT task_id::text, outcome FROM video_task_attempts "
            "WHERE task_id = ANY(%s::uuid[]) ORDER BY claimed_at", [task_ids]):
        found[task_id].append(outcome)
    return found


def assert_completed_once(direct: psycopg.Connection, settings: Settings,
                          task_ids: list[str]) -> None:
    """Completed by exactly one claim, every other claim ended, one stored video and no
    leftovers."""
    found = rows(direct, task_ids)
    assert set(found) == set(task_ids)
    for task_id, row in found.items():
        assert row["status"] == "completed", row
        assert row["video_url"].endswith(f"/media/videos/{task_id}.mp4"), row
        assert row["worker_id"] is None and row["lease_expires_at"] is None, row
        assert row["current_part"] == row["total_parts"], row
    ended = outcomes(direct, task_ids)
    wrong = {t: o for t, o in ended.items() if o.count("completed") != 1 or None in o}
    assert not wrong, f"not completed by exactly one claim, or a claim still open: {wrong}"
    videos = settings.media_dir / "videos"
    names = {path.name for path in videos.iterdir()}
    for task_id in task_ids:
        assert f"{task_id}.mp4" in names
        assert [n for n in names if task_id in n] == [f"{task_id}.mp4"]
        # The runs' work directories (parts, merged file, temp files) go right after the
        # completing statement commits, which this may have seen first.
        deadline = time.monotonic() + 3
        while work_left(settings, task_id) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not work_left(settings, task_id)
    assert not [n for n in names if n.endswith(".tmp")], names


def work_left(settings: Settings, task_id: str) -> list[str]:
    """What runs of the task left in the work directory (one directory per claim)."""
    return [p.name for p in settings.work_dir.glob(f"{task_id}*")]


def pids(parts: list[tuple[int, int]], pid: int) -> list[int]:
    return [part for part, by in parts if by == pid]


# --- a burst of creates and polls against one API -----------------------------------


@dataclass
class Answer:
    kind: str  # "create" or "poll"
    at: float  # time.monotonic() when the request was sent
    seconds: float
    status: int | None = None
    retry_after: str | None = None
    error: str | None = None  # the client got no answer: connection error or timeout


@dataclass
class Burst:
    """Clients that create tasks (with an Idempotency-Key, retried on 503 with the same
    key, as the mini-program does) and poll their progress, until stopped."""

    http: aiohttp.ClientSession
    base_url: str
    creators: int = 3
    create_every_s: float = 0.4
    poll_every_s: float = 0.05
    answers: list[Answer] = field(default_factory=list)
    created: dict[str, str] = field(default_factory=dict)  # task_id -> idempotency key
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def _request(self, kind: str, method: str, url: str,
                       **kwargs: Any) -> tuple[Answer, Any]:
        t0 = time.monotonic()
        answer = Answer(kind, t0, 0.0)
        body = None
        try:
            async with self.http.request(method, url, timeout=aiohttp.ClientTimeout(
                    total=MAX_ANSWER_S + 4), **kwargs) as resp:
                answer.status = resp.status
                answer.retry_after = resp.headers.get("Retry-After")
                body = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            answer.error = f"{type(exc).__name__}: {exc}"
        answer.seconds = time.monotonic() - t0
        self.answers.append(answer)
        return answer, body

    async def _creator(self, index: int) -> None:
        key, number = None, 0
        while not self.stop.is_set():
            if key is None:
                key, number = uuid.uuid4().hex, number + 1
            body = {**WRITE_UP_REQUEST, "duration": 10, "product_name": f"螺栓 {index}-{number}"}
            answer, raw = await self._request(
                "create", "POST", f"{self.base_url}/api/generate-video", json=body,
                headers={"Idempotency-Key": key})
            if answer.status == 202:
                self.created[orjson.loads(raw)["task_id"]] = key
                key = None
            await asyncio.sleep(self.create_every_s)

    async def _poller(self) -> None:
        """A poll every poll_every_s, without waiting for the previous one: while the
        database is away the answers take seconds, and the first success after it is
        back shows when service resumed."""
        in_flight: set[asyncio.Task[Any]] = set()
        while not self.stop.is_set():
            if self.created:
                task_id = random.choice(list(self.created))
                poll = asyncio.create_task(
                    self._request("poll", "GET", f"{self.base_url}/api/progress/{task_id}"))
                in_flight.add(poll)
                poll.add_done_callback(in_flight.discard)
            await asyncio.sleep(self.poll_every_s)
        if in_flight:
            await asyncio.wait(in_flight)

    async def run(self) -> None:
        await asyncio.gather(*(self._creator(i) for i in range(self.creators)),
                             self._poller())

    def first_success_after(self, t: float, kinds: tuple[str, ...] = ("create", "poll")
                            ) -> float | None:
        """When the first request sent at or after t got a 2xx."""
        times = [a.at + a.seconds for a in self.answers
                 if a.kind in kinds and a.at >= t and a.status is not None
                 and 200 <= a.status < 300]
        return min(times) if times else None

    def assert_only_2xx_or_503_with_retry_after(self) -> None:
        assert self.answers
        no_answer = [a for a in self.answers if a.error]
        assert not no_answer, no_answer[:5]
        bad = [a for a in self.answers
               if not (200 <= a.status < 300 or (a.status == 503 and a.retry_after))]
        assert not bad, bad[:5]
        slow = [a for a in self.answers if a.seconds > MAX_ANSWER_S]
        assert not slow, slow[:5]

    def summary(self) -> str:
        counts = collections.Counter((a.kind, a.status) for a in self.answers)
        worst = max((a.seconds for a in self.answers), default=0.0)
        return f"answers {dict(counts)}, slowest {worst:.2f} s, created {len(self.created)}"


async def run_with_fault(burst: Burst, fault, *, warmup_s: float = 1.5,
                         after_s: float = 2.0) -> dict[str, float]:
    """Start the burst, run `fault` (a blocking function, in a thread; returns the
    monotonic time the database came back), keep the burst going until the API creates
    tasks again, and a little longer. Returns the timeline."""
    runner = asyncio.create_task(burst.run())
    try:
        await asyncio.sleep(warmup_s)
        assert burst.first_success_after(0.0) is not None, burst.summary()
        started = time.monotonic()
        back = await asyncio.to_thread(fault)
        deadline = back + RECOVERY_TIMEOUT_S
        while burst.first_success_after(back, ("create",)) is None:
            assert time.monotonic() < deadline, \
                f"the API did not create tasks again {RECOVERY_TIMEOUT_S} s after the " \
                f"database came back: {burst.summary()}"
            await asyncio.sleep(0.05)
        await asyncio.sleep(after_s)
    finally:
        burst.stop.set()
        await runner
    recovered = burst.first_success_after(back)
    return {"fault_s": back - started, "api_recovery_s": recovered - back}


async def drain(direct: psycopg.Connection, timeout_s: float) -> None:
    """Wait until no task is waiting or running any more."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = direct.execute("SELECT status, count(*) FROM video_generation_tasks "
                              "WHERE status NOT IN ('completed', 'failed') "
                              "GROUP BY status").fetchall()
        if not left:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"tasks still not finished after {timeout_s:.0f} s: {left}")
        await asyncio.sleep(0.2)


def tasks_since(direct: psycopg.Connection, wall_start: float) -> dict[str, str]:
    """task_id -> status of every task created since `wall_start` (time.time())."""
    return dict(direct.execute(
        "SELECT task_id::text, status FROM video_generation_tasks "
        "WHERE created_at >= to_timestamp(%s)", [wall_start]).fetchall())


def first_completion_after(direct: psycopg.Connection, wall_time: float) -> float | None:
    """Seconds from `wall_time` to the first task finished after it."""
    return direct.execute(
        "SELECT extract(epoch FROM min(finished_at))::float8 - %s FROM video_generation_tasks "
        "WHERE finished_at >= to_timestamp(%s)", [wall_time, wall_time]).fetchone()[0]


async def burst_test(processes: ServiceProcesses, http: aiohttp.ClientSession,
                     direct_url: str, settings: Settings, render_log: Path, fault,
                     *, name: str) -> None:
    """The shared body of the outage tests: a burst against one API and two workers,
    the fault in the middle, then every created task must complete exactly once."""
    wall_start = time.time()
    api = processes.start_api()
    workers = [processes.start_worker(**simulated(render_log, part_s=0.2,
                                                  worker_concurrency=6))
               for _ in range(2)]
    burst = Burst(http, api.url)
    wall_back: list[float] = []

    def timed_fault() -> float:
        fault()
        wall_back.append(time.time())
        return time.monotonic()

    timeline = await run_with_fault(burst, timed_fault)
    burst.assert_only_2xx_or_503_with_retry_after()
    # A new direct connection: the fault may have cut the fixture's.
    with psycopg.connect(direct_url, autocommit=True) as direct:
        worker_recovery = None
        deadline = time.monotonic() + RECOVERY_TIMEOUT_S
        while worker_recovery is None and time.monotonic() < deadline:
            worker_recovery = first_completion_after(direct, wall_back[0])
            await asyncio.sleep(0.1)
        assert worker_recovery is not None, "no task completed after the database came back"
        await drain(direct, DRAIN_TIMEOUT_S)
        created = list(burst.created)
        assert created
        assert_completed_once(direct, settings, created)
        # Creates that got a 503 may still have stored their task (the connection broke
        # after the commit); those were drained above and must be completed as well.
        statuses = tasks_since(direct, wall_start)
        assert set(statuses.values()) == {"completed"}, collections.Counter(statuses.values())
        assert_completed_once(direct, settings, list(statuses))
    for proc in (api, *workers):
        assert proc.proc.poll() is None, f"{proc.name} exited:\n{proc.log()[-3000:]}"
    print(f"\n{name}: outage {timeline['fault_s']:.2f} s, API serving again "
          f"{timeline['api_recovery_s']:.2f} s after the database was back, worker "
          f"completing again after {worker_recovery:.2f} s; {burst.summary()}")


# --- workers dying ------------------------------------------------------------------


async def test_kill_9_mid_task_another_worker_resumes_at_the_next_unfinished_part(
        processes, http, direct, settings, render_log):
    api = processes.start_api()
    first = processes.start_worker(**simulated(render_log, part_s=0.6))
    ids = [(await create_task(http, api.url, {**WRITE_UP_REQUEST, "duration": 40}))["task_id"]
           for _ in range(3)]
    # Mid-task: every task has at least two of its eight parts done.
    await wait_rows(direct, ids, lambda r: r["current_part"] >= 2, 60, "two parts in")
    first.signal(signal.SIGKILL)
    assert await wait_exit(first, 10) == -signal.SIGKILL
    at_kill = rows(direct, ids)
    for row in at_kill.values():
        assert row["status"] == "generating" and row["current_part"] < row["total_parts"], row
        assert row["attempts"] == 1
    second = processes.start_worker(**simulated(render_log, part_s=0.2))
    # The second worker's rescuer reclaims each task once its lease has expired.
    await wait_rows(direct, ids, lambda r: r["status"] in TERMINAL, 60, "finished")
    assert_completed_once(direct, settings, ids)
    rendered = renders(render_log)
    for task_id in ids:
        done, total = at_kill[task_id]["current_part"], at_kill[task_id]["total_parts"]
        parts = rendered[task_id]
        # The parts recorded as finished were rendered once, by the first worker; the
        # second rendered exactly the unfinished ones, once each.
        assert sorted(pids(parts, first.proc.pid))[:done] == list(range(done)), parts
        assert sorted(pids(parts, second.proc.pid)) == list(range(done, total)), parts
        assert len(pids(parts, first.proc.pid)) <= done + 1, parts  # + the one in flight
        assert f"task {task_id}: claimed (attempt 2, {done}/{total} parts done)" \
            in second.log()
    assert all(r["attempts"] == 2 for r in rows(direct, ids).values())


async def test_a_frozen_worker_loses_its_lease_and_cannot_finish_the_task(
        processes, http, direct, settings, render_log):
    api = processes.start_api()
    frozen = processes.start_worker(**simulated(render_log, part_s=0.6))
    task_id = (await create_task(http, api.url, {**WRITE_UP_REQUEST, "duration": 30}))["task_id"]
    await wait_rows(direct, [task_id], lambda r: r["current_part"] >= 1, 60, "one part in")
    frozen.signal(signal.SIGSTOP)
    try:
        processes.start_worker(**simulated(render_log, part_s=0.2))
        await wait_rows(direct, [task_id], lambda r: r["status"] in TERMINAL, 60, "finished")
    finally:
        frozen.signal(signal.SIGCONT)
    # Thawed, the first worker finds its lease gone and drops the task.
    deadline = time.monotonic() + 20
    while "claim lost" not in frozen.log():
        assert time.monotonic() < deadline, frozen.log()[-3000:]
        await asyncio.sleep(0.1)
    # Stopped (and so done with whatever it still had to say), not given "long enough":
    # from here on the database holds everything it did.
    frozen.signal(signal.SIGTERM)
    assert await wait_exit(frozen, 30) == 0, frozen.log()[-3000:]
    assert_completed_once(direct, settings, [task_id])
    assert rows(direct, [task_id])[task_id]["attempts"] == 2


def render_spans(render_log: Path, task_id: str) -> list[tuple[int, float, float]]:
    """(part, started, ended) of every render of the task, in start order."""
    spans = []
    for line in render_log.read_text().splitlines():
        tid, part, _pid, started, ended = line.split()
        if tid == task_id:
            spans.append((int(part), float(started), float(ended)))
    return sorted(spans, key=lambda span: span[1])


async def test_an_outage_longer_than_the_lease_runs_the_task_once_and_parts_never_go_back(
        processes, http, stack, direct, settings, render_log, healthy_stack):
    """The database is away longer than LEASE_S mid-task, for one worker alone. Its own
    rescuer hands the task back and its claim loop takes it again: the old run must stop
    (its claim token is dead), never run beside the new one, and never move current_part
    back."""
    api = processes.start_api()
    # Parts long enough that the old run is still mid-part when the database is back.
    worker = processes.start_worker(**simulated(render_log, part_s=3.0))
    task_id = (await create_task(http, api.url, {**WRITE_UP_REQUEST, "duration": 25}))["task_id"]
    await wait_rows(direct, [task_id], lambda r: r["current_part"] >= 1, 60, "one part in")

    seen: list[int] = []
    sampling = True

    async def sample_parts() -> None:
        # Straight to PostgreSQL, so the samples go on while PgBouncer is away.
        while sampling:
            seen.append(rows(direct, [task_id])[task_id]["current_part"])
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample_parts())
    try:
        stack.stop_pgbouncer(log=lambda _msg: None, sig=signal.SIGQUIT)
        await asyncio.sleep(settings.lease_s + 3)
        stack.start_pgbouncer(log=lambda _msg: None)
        await wait_rows(direct, [task_id], lambda r: r["status"] in TERMINAL, 90, "finished")
    finally:
        sampling = False
        await sampler
    row = rows(direct, [task_id])[task_id]
    assert row["status"] == "completed", row
    # The lease ran out while the database was away: a second claim finished the task.
    assert row["attempts"] >= 2, row
    assert "claim lost" in worker.log()
    assert seen == sorted(seen), f"current_part went back: {seen}"
    # Never two runs of the task at once: no render starts before the previous one ended.
    spans = render_spans(render_log, task_id)
    for (part_a, _, ended), (part_b, started, _) in itertools.pairwise(spans):
        assert started >= ended - 0.01, f"part {part_b} started while {part_a} rendered"
    # The one video holds each part exactly once, in order (the simulated merge joins the
    # parts' bytes), and the ledger stored each part once.
    video = (settings.media_dir / "videos" / f"{task_id}.mp4").read_text()
    total = row["total_parts"]
    assert video.splitlines() == [f"simulated part {i}/{total} of {task_id}"
                                  for i in range(1, total + 1)]
    stored = direct.execute("SELECT part_index FROM video_task_parts WHERE task_id = %s "
                            "AND state = 'stored' ORDER BY part_index", [task_id]).fetchall()
    assert [r[0] for r in stored] == list(range(total))


async def test_sigterm_hands_the_task_back_and_another_worker_finishes_it(
        processes, http, direct, settings, render_log):
    api = processes.start_api()
    first = processes.start_worker(**simulated(render_log, part_s=0.6),
                                   worker_concurrency=2)
    ids = [(await create_task(http, api.url, {**WRITE_UP_REQUEST, "duration": 40}))["task_id"]
           for _ in range(3)]
    running = await wait_all(
        direct, ids, lambda found: sum(r["current_part"] >= 1 for r in found.values()) == 2,
        60, "two tasks one part in")
    running_ids = [t for t, r in running.items() if r["status"] == "generating"]
    waiting_ids = [t for t in ids if t not in running_ids]
    assert len(running_ids) == 2 and len(waiting_ids) == 1, running
    first.signal(signal.SIGTERM)
    assert await wait_exit(first, 30) == 0, first.log()[-3000:]
    handed_back = rows(direct, ids)
    rendered = renders(render_log)
    for task_id in running_ids:
        row = handed_back[task_id]
        assert row["status"] == "pending", row
        assert row["worker_id"] is None and row["lease_expires_at"] is None, row
        # The claim counted the attempt; the hand-back took it back.
        assert row["attempts"] == 0, row
        # The stage in flight at SIGTERM finished and was recorded before the hand-back.
        assert row["current_part"] == len(rendered[task_id]) >= 1, (row, rendered[task_id])
        assert f"task {task_id}: handed back" in first.log()
    # Stopping, it claimed nothing more.
    assert handed_back[waiting_ids[0]]["attempts"] == 0
    assert waiting_ids[0] not in first.log()

    second = processes.start_worker(**simulated(render_log, part_s=0.2))
    await wait_rows(direct, ids, lambda r: r["status"] in TERMINAL, 60, "finished")
    assert_completed_once(direct, settings, ids)
    rendered = renders(render_log)
    for task_id in running_ids:
        done, total = handed_back[task_id]["current_part"], handed_back[task_id]["total_parts"]
        assert sorted(pids(rendered[task_id], first.proc.pid)) == list(range(done))
        assert sorted(pids(rendered[task_id], second.proc.pid)) == list(range(done, total))
        assert f"task {task_id}: claimed (attempt 1, {done}/{total} parts done)" \
            in second.log()
    assert all(r["attempts"] == 1 for r in rows(direct, ids).values())


async def test_sigterm_hands_back_a_stage_that_outlasts_the_grace_period(
        processes, http, direct, settings, render_log):
    api = processes.start_api()
    slow = processes.start_worker(**simulated(render_log, part_s=60), shutdown_grace_s=1)
    task_id = (await create_task(http, api.url, {**WRITE_UP_REQUEST, "duration": 10}))["task_id"]
    await wait_rows(direct, [task_id], lambda r: r["status"] == "generating", 30, "claimed")
    t0 = time.monotonic()
    slow.signal(signal.SIGTERM)
    assert await wait_exit(slow, 30) == 0, slow.log()[-3000:]
    assert time.monotonic() - t0 < 15
    row = rows(direct, [task_id])[task_id]
    assert (row["status"], row["worker_id"], row["attempts"], row["current_part"]) == \
        ("pending", None, 0, 0), row
    processes.start_worker(**simulated(render_log, part_s=0.2))
    await wait_rows(direct, [task_id], lambda r: r["status"] in TERMINAL, 60, "finished")
    assert_completed_once(direct, settings, [task_id])


async def test_a_second_sigterm_exits_at_once_and_the_lease_covers_the_task(
        processes, http, direct, settings, render_log):
    api = processes.start_api()
    first = processes.start_worker(**simulated(render_log, part_s=60))
    task_id = (await create_task(http, api.url, {**WRITE_UP_REQUEST, "duration": 10}))["task_id"]
    await wait_rows(direct, [task_id], lambda r: r["status"] == "generating", 30, "claimed")
    # Mid-part (its 60 s render begun), not between the claim and the part (a few ms): a
    # stop there reaches a stage boundary at once, and the worker would be gone before the
    # second SIGTERM. The simulated provider shows nothing when a part starts.
    await asyncio.sleep(1.0)
    first.signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while "stopping after the current stages" not in first.log():
        assert time.monotonic() < deadline, first.log()
        await asyncio.sleep(0.05)
    first.signal(signal.SIGTERM)
    # Exits at once, with status 1: the task is not handed back, its lease still runs.
    assert await wait_exit(first, 5) == 1, first.log()[-3000:]
    row = rows(direct, [task_id])[task_id]
    assert row["status"] == "generating" and row["worker_id"] is not None, row
    processes.start_worker(**simulated(render_log, part_s=0.2))
    await wait_rows(direct, [task_id], lambda r: r["status"] in TERMINAL, 60, "finished")
    assert_completed_once(direct, settings, [task_id])
    assert rows(direct, [task_id])[task_id]["attempts"] == 2


# --- retries ------------------------------------------------------------------------


async def test_a_provider_that_fails_twice_is_retried_and_the_task_completes(
        processes, http, direct, settings, render_log):
    api = processes.start_api()
    worker = processes.start_worker(**simulated(render_log, part_s=0.1),
                                    simulated_fail_first=2, max_attempts=3)
    task_id = (await create_task(http, api.url, {**WRITE_UP_REQUEST, "duration": 10}))["task_id"]
    await wait_rows(direct, [task_id], lambda r: r["status"] in TERMINAL, 60, "finished")
    assert_completed_once(direct, settings, [task_id])
    row = rows(direct, [task_id])[task_id]
    assert row["attempts"] == 3 and row["error_message"] is None, row
    delays = [float(d) for d in re.findall(
        rf"task {task_id}: attempt \d failed \(the video provider failed \(simulated "
        rf"failure \d of 2 \(SIMULATED_FAIL_FIRST\)\)\), retrying in ([0-9.]+) s",
        worker.log())]
    assert len(delays) == 2, worker.log()[-3000:]
    # Exponential backoff with jitter: base x [0.5, 1], then 2 x base x [0.5, 1].
    base = settings.retry_base_delay_s
    assert base * 0.5 - 0.05 <= delays[0] <= base + 0.05
    assert base - 0.05 <= delays[1] <= 2 * base + 0.05


async def test_a_provider_that_always_fails_fails_the_task_after_max_attempts(
        processes, http, direct, settings, render_log):
    api = processes.start_api()
    worker = processes.start_worker(**simulated(render_log, part_s=0.1),
                                    simulated_fail_always=True, max_attempts=3)
    task_id = (await create_task(http, api.url, {**WRITE_UP_REQUEST, "duration": 10}))["task_id"]
    await wait_rows(direct, [task_id], lambda r: r["status"] in TERMINAL, 60, "finished")
    row = rows(direct, [task_id])[task_id]
    assert row["status"] == "failed" and row["attempts"] == 3, row
    assert row["video_url"] is None and row["worker_id"] is None
    assert row["error_message"] == (
        "The video could not be generated after 3 attempts: the video provider failed "
        "(simulated failure: SIMULATED_FAIL_ALWAYS is set).")
    async with http.get(f"{api.url}/api/progress/{task_id}") as resp:
        progress = await resp.json()
    assert progress["status"] == "failed"
    assert progress["error_message"] == row["error_message"]
    assert not (settings.media_dir / "videos" / f"{task_id}.mp4").exists()
    assert not work_left(settings, task_id)
    assert worker.log().count(f"task {task_id}: failed for good") == 1


async def test_a_create_retried_after_its_commit_still_counts_as_created(pool):
    """db retries a statement once after a lost connection: when the first try had
    committed, the retry finds its own row, which must not look like a reused key."""
    params = {"task_id": uuid.uuid4(), "product_name": "螺栓", "theme": "质量",
              "duration": 5, "type": "video", "total_parts": 1,
              "idempotency_key": uuid.uuid4().hex, "request_fingerprint": "f",
              "owner_openid": None, "requester": "addr:127.0.0.1", "notice_template_id": None,
              "creates_per_minute": 2, "max_unfinished": 1, "unfinished_retry_s": 30}
    first = await db.fetch_one(pool, "create_task", params)
    again = await db.fetch_one(pool, "create_task", params)
    assert first["created"] and again["created"]
    assert again["task_id"] == first["task_id"]
    # Another request with the same key is a replay, not a creation.
    other = await db.fetch_one(pool, "create_task", {**params, "task_id": uuid.uuid4()})
    assert other["task_id"] == first["task_id"] and not other["created"]
    # Neither was charged to the requester's limits (one unfinished task allowed).
    assert other["refused"] is None


# --- the database going away --------------------------------------------------------


@pytest.mark.parametrize("down_s", [0, 3], ids=["restart", "down-3s"])
async def test_pgbouncer_restart_during_a_burst_loses_nothing(
        processes, http, stack, settings, render_log, healthy_stack, down_s):
    def fault() -> None:
        if down_s:
            stack.stop_pgbouncer(log=lambda _msg: None, sig=signal.SIGQUIT)
            time.sleep(down_s)
            stack.start_pgbouncer(log=lambda _msg: None)
        else:
            stack.restart_pgbouncer(log=lambda _msg: None)

    await burst_test(processes, http, settings.database_direct_url, settings, render_log,
                     fault, name=f"PgBouncer {f'down {down_s} s' if down_s else 'restart'}")


async def test_postgres_restart_during_a_burst_loses_nothing(
        processes, http, stack, settings, render_log, healthy_stack):
    def fault() -> None:
        stack.stop_postgres(log=lambda _msg: None)
        time.sleep(2)
        stack.start_postgres(log=lambda _msg: None)

    await burst_test(processes, http, settings.database_direct_url, settings, render_log,
                     fault, name="PostgreSQL restart")


async def test_terminating_every_server_connection_during_a_burst_loses_nothing(
        processes, http, stack, settings, render_log, healthy_stack):
    def fault() -> None:
        with psycopg.connect(settings.database_direct_url, autocommit=True) as conn:
            for _ in range(3):
                terminated = conn.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE usename = 'app' AND pid <> pg_backend_pid()").fetchone()[0]
                assert terminated > 0
                time.sleep(0.7)

    await burst_test(processes, http, settings.database_direct_url, settings, render_log,
                     fault, name="pg_terminate_backend")


async def test_while_postgres_is_down_statements_fail_fast_and_recover_when_it_is_back(
        stack, settings, processes, http, healthy_stack):
    """PgBouncer 1.18 queues a statement for query_wait_timeout (10 s) when PostgreSQL is
    down; the service gives up at its own deadline, and serves again once it is back."""
    api = processes.start_api()
    created = await create_task(http, api.url)
    own = db.create_pool(settings, name="down-check", min_size=2, max_size=2)
    await own.open(wait=True)
    try:
        await db.fetch_one(own, "ping")
        await asyncio.to_thread(stack.stop_postgres, log=lambda _msg: None)
        t0 = time.monotonic()

        async def statement() -> float:
            started = time.monotonic()
            with pytest.raises(errors.DatabaseUnavailable):
                await db.fetch_one(own, "ping")
            return time.monotonic() - started

        async def request() -> float:
            started = time.monotonic()
            async with http.get(f"{api.url}/api/progress/{created['task_id']}") as resp:
                assert resp.status == 503 and resp.headers["Retry-After"]
                await resp.read()
            return time.monotonic() - started

        async def readiness() -> float:
            started = time.monotonic()
            async with http.get(f"{api.url}/readyz") as resp:
                assert resp.status == 503 and resp.headers["Retry-After"]
            return time.monotonic() - started

        waits = await asyncio.gather(*(statement() for _ in range(3)),
                                     *(request() for _ in range(3)), readiness())
        # Well under PgBouncer's 10 s: the pool timeout (2 s) plus db.ANSWER_MARGIN_S.
        assert max(waits) < MAX_ANSWER_S, waits
        # Down for a while, as in a real outage.
        await asyncio.sleep(max(0.0, 5 - (time.monotonic() - t0)))
        await asyncio.to_thread(stack.start_postgres, log=lambda _msg: None)
        back = time.monotonic()
        while True:
            try:
                await db.fetch_one(own, "ping")
                async with http.get(f"{api.url}/api/progress/{created['task_id']}") as resp:
                    if resp.status == 200:
                        break
            except errors.DatabaseUnavailable:
                pass
            assert time.monotonic() - back < RECOVERY_TIMEOUT_S, "no recovery"
            await asyncio.sleep(0.1)
        print(f"\nPostgreSQL down 5 s: answers within {max(waits):.2f} s, serving again "
              f"{time.monotonic() - back:.2f} s after it was back")
    finally:
        await own.close()


# --- the API stopping ---------------------------------------------------------------


async def test_api_sigterm_drains_in_flight_requests_and_exits_0(
        processes, http, direct, settings):
    api = processes.start_api()
    await create_task(http, api.url)  # the pool is open and warm
    answers: list[int] = []

    async def request(number: int) -> None:
        body = {**WRITE_UP_REQUEST, "product_name": f"drain {number}"}
        async with http.post(f"{api.url}/api/generate-video", json=body) as resp:
            answers.append(resp.status)
            await resp.read()

    # A lock held by another session keeps creates in flight inside the API: as many as
    # its pool has connections (lock_timeout on the role is 2 s: be quick).
    in_flight_count = settings.app_pool_max
    with direct.transaction():
        direct.execute("LOCK TABLE video_generation_tasks IN ACCESS EXCLUSIVE MODE")
        in_flight = [asyncio.create_task(request(n)) for n in range(in_flight_count)]
        await wait_for_lock_waiters(settings, in_flight_count)
        api.signal(signal.SIGTERM)
        # It stops accepting at once ...
        deadline = time.monotonic() + 5
        while port_open(api.port):
            assert time.monotonic() < deadline, "the API still accepts after SIGTERM"
            await asyncio.sleep(0.02)
        assert api.proc.poll() is None, "the API exited with requests in flight"
    # ... and the requests in flight finish once the lock is gone.
    await asyncio.wait_for(asyncio.gather(*in_flight), 15)
    assert answers == [202] * in_flight_count
    assert await wait_exit(api, 15) == 0, api.log()[-3000:]
    assert direct.execute("SELECT count(*) FROM video_generation_tasks "
                          "WHERE product_name LIKE 'drain %%'").fetchone()[0] == in_flight_count
    assert "Traceback" not in api.log(), api.log()[-3000:]


async def wait_for_lock_waiters(settings: Settings, count: int) -> None:
    """Wait until `count` statements of the app wait for a lock."""
    def waiting() -> bool:
        with psycopg.connect(settings.database_direct_url, autocommit=True) as probe:
            return probe.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = current_user "
                "AND datname = current_database() "
                "AND wait_event_type = 'Lock'").fetchone()[0] >= count

    await asyncio.to_thread(wait_until, waiting, 10, f"{count} statements waiting")
