"""Processes: the one spawner of `video-tasks COMMAND`, pid files, stopping, /proc children.

`ServiceProcess` is how the local stack (ops.apps), the tests (tests/helpers.py) and the
benchmark (bench/services.py) run the API and the worker: `python -m service COMMAND`
(the same entry point as the `video-tasks` console script) with an environment and a log
file, waited for until its port listens, stopped with SIGTERM and, only after a timeout,
SIGKILL. `stop_pid` does the same for a process known only by its pid file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from ops import ports
from service.settings import PROJECT_DIR

# Seconds a process gets to listen after it is started.
START_TIMEOUT_S = 30.0
# Seconds a process gets to exit after SIGTERM (the API drains, the worker hands back).
STOP_TIMEOUT_S = 30.0
LOG_TAIL_CHARS = 3000


class StackError(Exception):
    """Raised when a part of the stack cannot start or stop; the message says what to do."""


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `predicate` every 50 ms; StackError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise StackError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.05)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is gone for our purposes.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z":
            return False
    return True


def read_pid(path: Path) -> int | None:
    """The pid in a pid file (first word), if that process is alive."""
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid_alive(pid) else None


def children(pid: int) -> list[int]:
    """The direct children of a process, from /proc (every thread's list)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found.extend(int(x) for x in (task / "children").read_text().split())
    return sorted(set(found))


def stop_pid(pid: int, *, timeout_s: float = STOP_TIMEOUT_S, group: bool = False,
             sig: signal.Signals | None = signal.SIGTERM) -> bool:
    """`sig` (SIGTERM; None: it was sent already), wait up to timeout_s, then SIGKILL (its
    process group with `group`). True if it had to be killed.

    Never a second SIGTERM: to the worker that means "exit now, leave the leases".
    """
    if sig is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    try:
        wait_until(lambda: not pid_alive(pid), timeout_s, f"pid {pid} to stop")
        return False
    except StackError:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        return True


class ServiceProcess:
    """One `python -m service COMMAND` process with its log file."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], log_path: Path,
                 port: int | None = None) -> None:
        self.name = name
        self.proc = proc
        self.log_path = log_path
        self.port = port

    @classmethod
    def start(cls, command: str, *, env: Mapping[str, str], log_path: Path,
              name: str | None = None, port: int | None = None,
              python: str = sys.executable, append: bool = True) -> ServiceProcess:
        """Start it in a session of its own (its API children stop with it); `port` is
        the one it will listen on, if any (see wait_listening)."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab" if append else "wb") as log:
            proc = subprocess.Popen([python, "-m", "service", command],
                                    env={**env, "PYTHONUNBUFFERED": "1"}, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=PROJECT_DIR)
        return cls(name or command, proc, log_path, port)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def children(self) -> list[int]:
        return children(self.proc.pid)

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signum)

    def wait(self, timeout_s: float) -> int:
        return self.proc.wait(timeout=timeout_s)

    def wait_listening(self, port: int | None = None, *, host: str = "127.0.0.1",
                       timeout_s: float = START_TIMEOUT_S) -> None:
        """Until `port` (default: its own) accepts connections; StackError with the end
        of its log if it exits first or takes longer than timeout_s."""
        port = port or self.port
        if port is None:
            raise ValueError(f"{self.name} has no port to wait for")
        deadline = time.monotonic() + timeout_s
        while not ports.port_open(port, host):
            self.check_alive()
            if time.monotonic() > deadline:
                raise self._failed(f"did not listen on port {port} within {timeout_s:.0f} s")
            time.sleep(0.05)

    def check_alive(self) -> None:
        """StackError with the end of its log if it has exited."""
        code = self.proc.poll()
        if code is not None:
            raise self._failed(f"exited at start (code {code})")

    def _failed(self, what: str) -> StackError:
        return StackError(f"{self.name} {what}: see {self.log_path}\n"
                          f"{self.log()[-LOG_TAIL_CHARS:]}")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S, *, signalled: bool = False) -> int:
        """SIGTERM (unless `signalled` already), then SIGKILL to its process group after
        timeout_s; its exit code."""
        if self.alive():
            stop_pid(self.proc.pid, timeout_s=timeout_s, group=True,
                     sig=None if signalled else signal.SIGTERM)
        return self.proc.wait(timeout=10)

    def kill(self) -> int:
        """SIGKILL to its process group at once (tests' teardown); its exit code."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.wait(timeout=10)


def stop_all(processes: Iterable[ServiceProcess], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM to all at once (they drain in parallel), then each as in ServiceProcess.stop."""
    processes = list(processes)
    for process in processes:
        if process.alive():
            process.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for process in processes:
        process.stop(max(0.1, deadline - time.monotonic()), signalled=True)
