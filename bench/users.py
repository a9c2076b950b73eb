"""Simulated mini-program users.

Each user creates a task, follows its progress until it is completed or failed, then
creates the next one. Users start evenly spread over the ramp (the first 10% of the run
by default) and stop when the run ends: the run stops by itself.

Two ways to follow a task:
- plain (today's mini-program): a poll every second. The next poll is sent one poll
  interval after the previous one was sent, or at once if that one took longer; a 503
  just waits for the next poll.
- waiting (`wait_s` set): `GET /api/progress/{id}?wait=W&since=T`, where T is the
  `updated_at` of the previous answer; the server holds the poll until the task changes
  or W seconds pass, and the next poll is sent as soon as one is answered. The first
  poll of a task has no `since` (answered at once). A failed poll waits its Retry-After
  (or one poll interval) before the next, so that errors never become a busy loop.
After the run's end no new request is sent; a held poll comes back by itself within W.

A user never has two requests in flight. A 503 on create is retried after its
Retry-After (as the mini-program does). Every request is recorded: endpoint, when it
ended, latency, status. So is every change a user sees: an answer whose `updated_at`
differs from the previous answer's for the same task, with its delay = the client's
wall clock when the answer arrived minus that `updated_at` (PostgreSQL's now() of the
writing statement; same machine, same clock).
"""

from __future__ import annotations

import asyncio
import resource
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from bench.httpclient import Answer, Connection, HttpClientError, get_request, post_json_request

CREATE, PROGRESS = 0, 1
ENDPOINTS = {CREATE: "POST /api/generate-video", PROGRESS: "GET /api/progress/{id}"}
# Status recorded for a request that got no HTTP answer (refused, reset, timed out).
CLIENT_ERROR = 0
TERMINAL = frozenset({"completed", "failed"})
LAG_PROBE_S = 0.1
# A waiting poll may be held wait_s (and one tick of the server's loop): it times out
# only this long after that.
WAIT_TIMEOUT_MARGIN_S = 10.0
# Waiting polls that came back unchanged before this share of their wait were not held
# (capped by the server, the API stopping, or a server that ignores ?wait=).
HELD_SHARE = 0.9
# How waiting polls came back (Recording.wait_outcomes).
CHANGED, HELD_UNCHANGED, EARLY_UNCHANGED = "changed", "unchanged after the wait", \
    "unchanged, early"


@dataclass(frozen=True)
class UserOptions:
    users: int
    duration_s: float
    ramp_s: float
    poll_interval_s: float = 1.0
    # The requested video length; with the service's part_seconds (5) 10 s is two parts.
    video_seconds: int = 10
    # If set, the lengths users ask for in turn instead: user i's n-th task asks for
    # video_mix[(i + n) % len(video_mix)], so tasks of different lengths run side by side.
    video_mix: tuple[int, ...] = ()
    request_timeout_s: float = 10.0
    # A Retry-After above this is shortened, so that a user still tries within the run.
    max_retry_after_s: float = 5.0
    # None: plain polling every poll_interval_s. Seconds: waiting polls (?wait=&since=).
    wait_s: float | None = None


@dataclass
class Recording:
    """Every request of a run, in columns (cheap to append, cheap to summarise)."""

    endpoint: array = field(default_factory=lambda: array("b"))
    ended_s: array = field(default_factory=lambda: array("d"))
    latency_s: array = field(default_factory=lambda: array("d"))
    status: array = field(default_factory=lambda: array("h"))
    client_errors: Counter = field(default_factory=Counter)
    unavailable_without_retry_after: int = 0
    # task_id -> (created_s, finished_s or None, final status seen or None)
    tasks: dict[str, list[Any]] = field(default_factory=dict)
    loop_lag_max_s: float = 0.0
    # Per second of the run: the largest event-loop lag of the load generator.
    loop_lag_s: list[float] = field(default_factory=list)
    generator_cpu_s: float = 0.0
    wall_s: float = 0.0
    # Every change a user saw: when the answer arrived (s into the run, as ended_s) and
    # its delay (client wall clock at arrival - the row's updated_at), in seconds.
    change_seen_s: array = field(default_factory=lambda: array("d"))
    change_delay_s: array = field(default_factory=lambda: array("d"))
    # Waiting polls (with since) by how they came back: CHANGED, HELD_UNCHANGED,
    # EARLY_UNCHANGED.
    wait_outcomes: Counter = field(default_factory=Counter)


class UserLoad:
    def __init__(self, host: str, port: int, options: UserOptions) -> None:
        self.host, self.port, self.options = host, port, options
        self.rec = Recording()
        self.started = 0.0
        self.perf_started = 0.0
        self.ends = 0.0
        hostport = f"{host}:{port}"
        self._creates = [post_json_request("/api/generate-video", hostport, orjson.dumps(
            {"product_name": "压测产品", "theme": "品质保证", "duration": seconds,
             "type": "video"})) for seconds in options.video_mix or (options.video_seconds,)]
        self._hostport = hostport

    async def run(self) -> Recording:
        opts = self.options
        loop = asyncio.get_running_loop()
        cpu0 = _cpu_s()
        self.started = loop.time()
        self.perf_started = time.perf_counter()
        self.ends = self.started + opts.duration_s
        lag = asyncio.create_task(self._watch_lag())
        users = [asyncio.create_task(self._user(i)) for i in range(opts.users)]
        try:
            await asyncio.gather(*users)
        finally:
            lag.cancel()
            await asyncio.gather(lag, return_exceptions=True)
        self.rec.wall_s = loop.time() - self.started
        self.rec.generator_cpu_s = _cpu_s() - cpu0
        return self.rec

    def now_s(self) -> float:
        return time.perf_counter() - self.perf_started

    async def _request(self, conn: Connection, endpoint: int, data: bytes,
                       timeout_s: float | None = None) -> Answer | None:
        # perf_counter: uvloop's loop.time() only has millisecond resolution.
        t0 = time.perf_counter()
        rec = self.rec
        try:
            answer = await conn.request(data, timeout_s or self.options.request_timeout_s)
        except HttpClientError as exc:
            answer = None
            rec.client_errors[f"{ENDPOINTS[endpoint]}: {exc}"] += 1
        t1 = time.perf_counter()
        rec.endpoint.append(endpoint)
        rec.ended_s.append(t1 - self.perf_started)
        rec.latency_s.append(t1 - t0)
        rec.status.append(answer.status if answer else CLIENT_ERROR)
        if answer is not None and answer.status == 503 and not answer.retry_after:
            rec.unavailable_without_retry_after += 1
        return answer

    async def _user(self, index: int) -> None:
        opts = self.options
        loop = asyncio.get_running_loop()
        await asyncio.sleep(opts.ramp_s * index / max(opts.users, 1))
        conn = Connection(self.host, self.port)
        turn = index
        try:
            while loop.time() < self.ends:
                answer = await self._request(conn, CREATE,
                                             self._creates[turn % len(self._creates)])
                if answer is None or answer.status != 202:
                    await self._pause(self._retry_delay(answer))
                    continue
                task_id = orjson.loads(answer.body)["task_id"]
                self.rec.tasks[task_id] = [self.now_s(), None, None]
                turn += 1
                if opts.wait_s is None:
                    await self._follow(conn, task_id)
                else:
                    await self._follow_waiting(conn, task_id, opts.wait_s)
        finally:
            conn.close()

    async def _follow(self, conn: Connection, task_id: str) -> None:
        """Poll every poll interval until the task is terminal or the run ends."""
        loop = asyncio.get_running_loop()
        poll = get_request(f"/api/progress/{task_id}", self._hostport)
        next_poll = loop.time() + self.options.poll_interval_s
        seen: str | None = None
        while True:
            await asyncio.sleep(max(0.0, next_poll - loop.time()))
            if loop.time() >= self.ends:
                return
            next_poll = loop.time() + self.options.poll_interval_s
            answer = await self._request(conn, PROGRESS, poll)
            received = time.time()
            if answer is None or answer.status != 200:
                continue
            row = orjson.loads(answer.body)
            seen = self._note_change(row, seen, received)
            if row["status"] in TERMINAL:
                self._finished(task_id, row["status"])
                return

    async def _follow_waiting(self, conn: Connection, task_id: str, wait_s: float) -> None:
        """Waiting polls, each sent as soon as the previous one is answered, until the
        task is terminal or the run ends."""
        loop = asyncio.get_running_loop()
        path = f"/api/progress/{task_id}"
        poll = get_request(path, self._hostport)  # the first: no since, answered at once
        timeout_s = wait_s + WAIT_TIMEOUT_MARGIN_S
        seen: str | None = None
        while loop.time() < self.ends:
            answer = await self._request(conn, PROGRESS, poll, timeout_s)
            received = time.time()
            if answer is None or answer.status != 200:
                await self._pause(self._retry_delay(answer))
                continue
            row = orjson.loads(answer.body)
            outcome, latency_s = None, self.rec.latency_s[-1]
            if seen is not None:
                outcome = (CHANGED if row["updated_at"] != seen
                           else HELD_UNCHANGED if latency_s >= wait_s * HELD_SHARE
                           else EARLY_UNCHANGED)
                self.rec.wait_outcomes[outcome] += 1
            updated = self._note_change(row, seen, received)
            if row["status"] in TERMINAL:
                self._finished(task_id, row["status"])
                return
            if outcome == EARLY_UNCHANGED:
                # Not held (the server's cap, or it is stopping): poll again no sooner
                # than a plain poll would, never in a busy loop.
                await self._pause(self.options.poll_interval_s - latency_s)
            if updated != seen:
                # updated_at exactly as answered; its offset's "+" must be %2B in a URL.
                poll = get_request(f"{path}?wait={wait_s:g}&since="
                                   f"{updated.replace('+', '%2B')}", self._hostport)
                seen = updated

    def _note_change(self, row: dict[str, Any], seen: str | None, received: float) -> str:
        """Record the change if this answer's updated_at differs from the previous one's
        (the first answer of a task has nothing to differ from); the new updated_at."""
        updated: str = row["updated_at"]
        if seen is not None and updated != seen:
            rec = self.rec
            rec.change_seen_s.append(time.perf_counter() - self.perf_started)
            rec.change_delay_s.append(received - datetime.fromisoformat(updated).timestamp())
        return updated

    def _finished(self, task_id: str, status: str) -> None:
        entry = self.rec.tasks[task_id]
        entry[1], entry[2] = self.now_s(), status

    def _retry_delay(self, answer: Answer | None) -> float:
        if answer is not None and answer.retry_after:
            try:
                return min(float(answer.retry_after), self.options.max_retry_after_s)
            except ValueError:
                pass
        return self.options.poll_interval_s

    async def _pause(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, min(seconds, self.ends - loop.time())))

    async def _watch_lag(self) -> None:
        """How late the generator's own loop wakes up: high lag means it is the bottleneck."""
        loop = asyncio.get_running_loop()
        second, worst = 0, 0.0
        while True:
            t0 = loop.time()
            await asyncio.sleep(LAG_PROBE_S)
            late = loop.time() - t0 - LAG_PROBE_S
            worst = max(worst, late)
            self.rec.loop_lag_max_s = max(self.rec.loop_lag_max_s, late)
            now_second = int(loop.time() - self.started)
            if now_second != second:
                self.rec.loop_lag_s.append(worst)
                second, worst = now_second, 0.0


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
