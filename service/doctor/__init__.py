"""`video-tasks doctor`: PostgreSQL, PgBouncer, the pools and the queue, checked.

    video-tasks doctor            # a table; exit 0 healthy, 1 warnings, 2 critical
    video-tasks doctor --json     # the same for machines
    video-tasks doctor --watch    # refresh every second, like top (Ctrl-C stops)

One sample reads PostgreSQL directly, PgBouncer's admin console twice a second apart
(rates come from the totals' deltas) and the tasks table; every step is bounded by
DOCTOR_TIMEOUT_S and an unreachable part is reported as such. The modules, in order:
probe (one sample) → checks (one Finding per check: level, outcome, facts) → render (the
sentences) → report (verdict, exit code, table and JSON). ops/README.md explains each
check by name.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from typing import Any

from service.doctor import checks, probe, report
from service.doctor.report import Report
from service.settings import Settings

# Seconds between the two console reads of a one-shot run, and between --watch refreshes.
SAMPLE_INTERVAL_S = 1.0
CLEAR_SCREEN = "\x1b[H\x1b[2J"

__all__ = ["Report", "examine", "main"]


async def examine(settings: Settings, *, interval_s: float = SAMPLE_INTERVAL_S) -> Report:
    """One diagnosis: sample everything (two console reads `interval_s` apart), check it."""
    prober = probe.Probe(settings)
    try:
        sample = await prober.sample(second_read_after_s=interval_s)
    finally:
        await prober.close()
    return Report(checks.evaluate(settings, sample), sample, settings)


def main(settings: Settings, *, as_json: bool, watch: bool) -> int:
    """Run the doctor and print its report; returns the exit code (0, 1 or 2)."""
    # psycopg logs cancelled waits and failed cancels; the report says it better.
    logging.getLogger("psycopg").setLevel(logging.CRITICAL)
    last = {"code": 0}
    try:
        if watch:
            asyncio.run(_watch(settings, as_json=as_json, last=last))
        else:
            last["code"] = _print(asyncio.run(examine(settings)), as_json=as_json)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        # Piped into `head` or the like: the reader has seen enough.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return last["code"]


async def _watch(settings: Settings, *, as_json: bool, last: dict[str, int]) -> None:
    prober = probe.Probe(settings)
    previous = None
    try:
        while True:
            started = time.monotonic()
            sample = await prober.sample(previous=previous)
            result = Report(checks.evaluate(settings, sample), sample, settings)
            if not as_json and sys.stdout.isatty():
                sys.stdout.write(CLEAR_SCREEN)
            last["code"] = _print(result, as_json=as_json)
            previous = sample
            await asyncio.sleep(max(0.0, SAMPLE_INTERVAL_S - (time.monotonic() - started)))
    finally:
        await prober.close()


def _print(result: Report, *, as_json: bool) -> int:
    if as_json:
        print(json.dumps(result.to_json(), default=_jsonable, ensure_ascii=False), flush=True)
    else:
        tty = sys.stdout.isatty()
        print(report.render_table(result, colour=tty,
                                  width=report.terminal_width() if tty else None), flush=True)
        if not tty:
            print(flush=True)
    return result.exit_code


def _jsonable(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)
