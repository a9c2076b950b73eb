"""Running the API: one process, or a supervisor of several sharing the port (SO_REUSEPORT).

With API_PROCESSES = N > 1 this process forks N children and supervises them:

- child i serves the API on API_PORT (shared) and its /metrics on METRICS_PORT + i;
- a child that dies is started again in its slot, after a backoff (0.5 s doubling to
  30 s); more than RESTART_LIMIT deaths of one slot within RESTART_WINDOW_S is a crash
  loop: the supervisor stops the others and exits 1 for the process manager to see;
- a child that dies before it ever listened (a bad DSN, a taken metrics port with no
  SO_REUSEPORT partner...) fails the start: the others are stopped and the supervisor
  exits with that child's code, as a single process would;
- SIGTERM/SIGINT: every child drains (stops accepting, finishes in-flight requests within
  SHUTDOWN_TIMEOUT_S, closes its pool); the exit code is 0 if every child exited 0, else
  the first failure (128 + signal for a killed child);
- a child whose supervisor is killed gets SIGTERM (Linux PR_SET_PDEATHSIG): no orphans.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from aiohttp import web

from service.api import protocol
from service.api.app import create_app
from service.settings import Settings

logger = logging.getLogger(__name__)
# In-flight requests get this long to finish after SIGTERM.
SHUTDOWN_TIMEOUT_S = 10.0
# Children still running this long after SIGTERM are killed.
KILL_AFTER_S = SHUTDOWN_TIMEOUT_S + 5.0
RESTART_BACKOFF_S = 0.5
RESTART_BACKOFF_MAX_S = 30.0
RESTART_LIMIT = 5
RESTART_WINDOW_S = 60.0
_PR_SET_PDEATHSIG = 1


def serve(settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT; the process's exit code."""
    if settings.api_processes == 1:
        _serve_one(settings)
        return 0
    return Supervisor(settings).run()


def _process_settings(settings: Settings, index: int) -> Settings:
    """Each process serves its own /metrics: process i on METRICS_PORT + i (0 stays off)."""
    if not settings.metrics_port:
        return settings
    return settings.replace(metrics_port=settings.metrics_port + index)


def _serve_one(settings: Settings, ready: Connection | None = None) -> None:
    asyncio.run(_serve_until_stopped(settings, ready))


async def _serve_until_stopped(settings: Settings, ready: Connection | None) -> None:
    """Serve until SIGTERM/SIGINT, then drain: stop accepting, let in-flight requests
    finish within SHUTDOWN_TIMEOUT_S (the app's on_shutdown answers long waits at once),
    close the pool."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = protocol.ApiRunner(create_app(settings), settings, access_log=None,
                                shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.api_host, settings.api_port, reuse_port=True)
        await site.start()
        if ready is None:
            logger.info("api: listening on %s:%d", settings.api_host, settings.api_port)
        elif not ready.closed:  # the supervisor's readiness signal
            ready.send(True)
            ready.close()
        await stop.wait()
    finally:
        await runner.cleanup()


def exit_code(process: BaseProcess) -> int:
    """A child's exit status as a shell shows it: 128 + N when killed by signal N."""
    code = process.exitcode
    if code is None:
        return 0
    return 128 - code if code < 0 else code


@dataclass
class RestartPolicy:
    """When a slot's child may start again: backoff doubling per recent death, and a
    limit of deaths within a window."""

    backoff_s: float = RESTART_BACKOFF_S
    backoff_max_s: float = RESTART_BACKOFF_MAX_S
    limit: int = RESTART_LIMIT
    window_s: float = RESTART_WINDOW_S
    deaths: deque[float] = field(default_factory=deque)

    def died(self, now: float) -> float | None:
        """Record a death at `now`; seconds to wait before the restart, or None: give up."""
        self.deaths.append(now)
        while self.deaths and self.deaths[0] < now - self.window_s:
            self.deaths.popleft()
        if len(self.deaths) > self.limit:
            return None
        return min(self.backoff_max_s, self.backoff_s * 2 ** (len(self.deaths) - 1))


@dataclass
class _Slot:
    index: int
    settings: Settings
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    process: BaseProcess | None = None
    ready: Connection | None = None
    listened: bool = False
    restart_at: float | None = None


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.context = multiprocessing.get_context("fork")
        self.slots = [_Slot(i, _process_settings(settings, i))
                      for i in range(settings.api_processes)]
        self.stopping: int | None = None  # the signal that asked us to stop
        self.result = 0
        self.announced = False

    def run(self) -> int:
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_write, False)
        self._wake = (wake_read, wake_write)
        previous = signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
        handlers = {signum: signal.signal(signum, self._on_signal)
                    for signum in (signal.SIGTERM, signal.SIGINT)}
        try:
            for slot in self.slots:
                self._start(slot)
            self._supervise()
            self._shutdown()
        finally:
            signal.set_wakeup_fd(previous)
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            os.close(wake_read)
            os.close(wake_write)
        return self.result

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self.stopping is None:
            self.stopping = signum

    def _start(self, slot: _Slot) -> None:
        receive, send = self.context.Pipe(duplex=False)
        process = self.context.Process(target=_child, name=f"api-{slot.index}",
                                       args=(slot.settings, send, self._wake, os.getpid()))
        process.start()
        send.close()
        slot.process, slot.ready, slot.listened, slot.restart_at = process, receive, False, None
        logger.debug("api: process %d started (pid %s)", slot.index, process.pid)

    def _supervise(self) -> None:
        while self.stopping is None:
            waiting = [s.restart_at for s in self.slots if s.restart_at is not None]
            timeout = max(0.0, min(waiting) - time.monotonic()) if waiting else None
            objects: list[object] = [self._wake[0]]
            for slot in self.slots:
                if slot.process is not None:
                    objects.append(slot.process.sentinel)
                if slot.ready is not None:
                    objects.append(slot.ready)
            ready = multiprocessing.connection.wait(objects, timeout)  # type: ignore[arg-type]
            if self._wake[0] in ready:
                os.read(self._wake[0], 512)
            for slot in self.slots:
                if slot.ready is not None and slot.ready in ready:
                    self._listening(slot)
            for slot in self.slots:
                if slot.process is not None and not slot.process.is_alive():
                    if not self._died(slot):
                        return
            now = time.monotonic()
            for slot in self.slots:
                if slot.restart_at is not None and slot.restart_at <= now:
                    self._start(slot)

    def _listening(self, slot: _Slot) -> None:
        assert slot.ready is not None
        try:
            slot.listened = bool(slot.ready.recv())
        except EOFError:
            pass  # it died before listening: handled with its exit
        slot.ready.close()
        slot.ready = None
        if slot.listened and not self.announced and all(s.listened for s in self.slots):
            self.announced = True
            logger.info("api: %d processes listening on %s:%d", len(self.slots),
                        self.settings.api_host, self.settings.api_port)
        elif slot.listened and self.announced:
            logger.info("api: process %d listening again (pid %s)", slot.index,
                        slot.process.pid if slot.process else "?")

    def _died(self, slot: _Slot) -> bool:
        """Handle a dead child; False when the supervisor must stop (exit code set)."""
        assert slot.process is not None
        process, listened = slot.process, slot.listened
        process.join()
        code = exit_code(process)
        slot.process = None
        if slot.ready is not None:
            slot.ready.close()
            slot.ready = None
        if self.stopping is not None:
            return True
        if not listened and not any(s.policy.deaths for s in self.slots):
            logger.error("api: process %d (pid %s) exited with %d before it listened; "
                         "stopping", slot.index, process.pid, code)
            self.result = code or 1
            return False
        delay = slot.policy.died(time.monotonic())
        if delay is None:
            logger.error("api: process %d died %d times within %.0f s (last exit %d); "
                         "stopping", slot.index, len(slot.policy.deaths),
                         slot.policy.window_s, code)
            self.result = 1
            return False
        logger.error("api: process %d (pid %s) exited with %d; restarting it in %.1f s",
                     slot.index, process.pid, code, delay)
        slot.restart_at = time.monotonic() + delay
        return True

    def _shutdown(self) -> None:
        running = [s.process for s in self.slots if s.process is not None]
        for slot in self.slots:
            process = slot.process
            if process is None or not process.is_alive() or not process.pid:
                continue
            # A child still starting serves nothing yet and may not have its SIGTERM handler
            # (or may sit in the pool's open): it is stopped outright, not drained.
            os.kill(process.pid, signal.SIGTERM if slot.listened else signal.SIGKILL)
        deadline = time.monotonic() + KILL_AFTER_S
        for process in running:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                logger.error("api: pid %s still running %.0f s after SIGTERM: SIGKILL",
                             process.pid, KILL_AFTER_S)
                process.kill()
                process.join()
            code = exit_code(process)
            # A child stopped outright because it was still starting stopped as asked.
            if code and code != 128 + signal.SIGKILL and not self.result:
                self.result = code
        if self.stopping is not None:
            logger.info("api: stopped (%s), exit %d", signal.Signals(self.stopping).name,
                        self.result)


def _child(settings: Settings, ready: Connection, wake: tuple[int, int],
           supervisor_pid: int) -> None:
    for fd in wake:
        os.close(fd)
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)
    _die_with(supervisor_pid)
    _serve_one(settings, ready)


def _die_with(supervisor_pid: int) -> None:
    """SIGTERM when the supervisor dies, however it dies (Linux only; elsewhere nothing)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor_pid:  # it died before prctl
        os.kill(os.getpid(), signal.SIGTERM)
