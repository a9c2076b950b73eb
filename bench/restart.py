"""Recovery after a PgBouncer restart, seen by clients.

A few pollers read progress in a loop (one request every POLL_GAP_S each) while PgBouncer
is stopped at once (every client and server connection dropped), kept down for a while
(0 s: a plain restart) and started again. The service's pooled connections are all dead
afterwards; it must find that out and connect again instead of failing requests.
Recovery is the time from PgBouncer accepting connections again until every request
sent from then on succeeds. Requests sent while PgBouncer is down may fail (a 503 with
Retry-After is the designed answer); they are counted, not held against recovery.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from typing import Any

from bench.httpclient import Connection, HttpClientError, get_request
from ops.stack import Stack

POLLERS = 20
POLL_GAP_S = 0.02
BEFORE_S = 2.0
AFTER_S = 5.0
REQUEST_TIMEOUT_S = 10.0
MAX_LISTED = 200


async def probe(stack: Stack, port: int, task_ids: list[str], *,
                down_for_s: float = 0.0) -> dict[str, Any]:
    start = time.perf_counter()
    # (started_s, ended_s, status or 0 for no answer)
    log: list[tuple[float, float, int]] = []
    stop = asyncio.Event()
    host = f"127.0.0.1:{port}"

    async def poller() -> None:
        conn = Connection("127.0.0.1", port)
        try:
            while not stop.is_set():
                path = f"/api/progress/{random.choice(task_ids)}"
                t0 = time.perf_counter() - start
                try:
                    status = (await conn.request(get_request(path, host), REQUEST_TIMEOUT_S)).status
                except HttpClientError:
                    status = 0
                log.append((t0, time.perf_counter() - start, status))
                await asyncio.sleep(POLL_GAP_S)
        finally:
            conn.close()

    pollers = [asyncio.create_task(poller()) for _ in range(POLLERS)]
    try:
        await asyncio.sleep(BEFORE_S)
        down_s = time.perf_counter() - start
        await asyncio.to_thread(restart_pgbouncer, stack, down_for_s)
        back_s = time.perf_counter() - start
        await asyncio.sleep(AFTER_S)
    finally:
        stop.set()
        await asyncio.gather(*pollers, return_exceptions=True)
    result = summarize(log, down_s=down_s, back_s=back_s)
    result["kept_down_s"] = down_for_s
    return result


def restart_pgbouncer(stack: Stack, down_for_s: float = 0.0) -> None:
    """Immediate shutdown (SIGTERM on 1.18: every connection dropped), then start again.
    The stack clears the pid file a killed PgBouncer leaves behind."""
    stack.stop_pgbouncer(lambda _msg: None, sig=signal.SIGTERM)
    time.sleep(down_for_s)
    stack.start_pgbouncer(lambda _msg: None)


def summarize(log: list[tuple[float, float, int]], *, down_s: float,
              back_s: float) -> dict[str, Any]:
    failed = [entry for entry in log if not 200 <= entry[2] < 300]
    after = sorted(entry for entry in log if entry[0] >= back_s)
    failed_after = [entry for entry in after if not 200 <= entry[2] < 300]
    if failed_after:
        last_failed_start = failed_after[-1][0]
        later_ok = [e[0] for e in after if e[0] > last_failed_start and 200 <= e[2] < 300]
        recovered_at = later_ok[0] if later_ok else None
    else:
        recovered_at = back_s
    statuses: dict[str, int] = {}
    for entry in failed:
        key = str(entry[2]) if entry[2] else "no answer"
        statuses[key] = statuses.get(key, 0) + 1
    return {
        "pollers": POLLERS,
        "requests": len(log),
        "pgbouncer_down_for_s": round(back_s - down_s, 3),
        "failed_requests": len(failed),
        "failed_by_status": statuses,
        "failed_requests_sent_after_back": len(failed_after),
        # From PgBouncer accepting connections again to the first request after which
        # every request succeeded; null if it never recovered within the probe.
        "recovery_s": None if recovered_at is None else round(recovered_at - back_s, 3),
        # Every failed request: [sent at s, answered at s, status or 0 for no answer].
        "failures": [[round(a, 3), round(b, 3), s] for a, b, s in failed[:MAX_LISTED]],
        "down_at_s": round(down_s, 3),
        "back_at_s": round(back_s, 3),
    }
