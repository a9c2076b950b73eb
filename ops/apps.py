"""The stack's API and worker: detached `video-tasks api|worker` processes with pid files.

Each runs in a session of its own, logs to STACK_DIR/logs/NAME.log and is found again by
STACK_DIR/run/NAME.pid (`make down`, `make status`, ops/rolling-restart). Started by
ops.procs.ServiceProcess, like the tests' and the benchmark's processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

from ops.layout import Layout
from ops.procs import START_TIMEOUT_S, STOP_TIMEOUT_S, ServiceProcess, read_pid, stop_pid
from service.settings import Settings

Log = Callable[[str], object]
NAMES = ("api", "worker")
# A worker without a metrics port must still be running this long after its start.
WORKER_SETTLE_S = 1.0


class AppProcesses:
    def __init__(self, layout: Layout, settings: Settings, env: Callable[[], Mapping[str, str]],
                 python: str) -> None:
        self.layout = layout
        self.settings = settings
        self.env = env
        self.python = python
        # The processes this object started, until stopped: their exit is collected
        # (no zombie, no Popen dropped while its child runs).
        self.started: dict[str, ServiceProcess] = {}

    def pidfile(self, name: str) -> Path:
        return self.layout.run_dir / f"{name}.pid"

    def pid(self, name: str) -> int | None:
        return read_pid(self.pidfile(name))

    def start(self, name: str, log: Log = print) -> ServiceProcess | None:
        if self.pid(name):
            log(f"{name}: already running")
            return None
        s = self.settings
        process = ServiceProcess.start(name, env=self.env(), python=self.python,
                                       log_path=self.layout.log_dir / f"{name}.log",
                                       port=s.api_port if name == "api" else None)
        self.pidfile(name).write_text(str(process.pid))
        try:
            if name == "api":
                process.wait_listening(host=s.api_host, timeout_s=START_TIMEOUT_S)
                log(f"api: listening on {s.public_base_url}"
                    + (f" ({s.api_processes} processes)" if s.api_processes > 1 else ""))
            elif s.worker_metrics_port:
                # Its metrics listen once its pool is open: it is working.
                process.wait_listening(s.worker_metrics_port, host=s.metrics_host)
                log(f"worker: started (pid {process.pid})")
            else:
                time.sleep(WORKER_SETTLE_S)
                process.check_alive()
                log(f"worker: started (pid {process.pid})")
        except Exception:
            process.stop()
            self.pidfile(name).unlink(missing_ok=True)
            raise
        self.started[name] = process
        return process

    def stop(self, name: str, log: Log = print) -> None:
        pid = self.pid(name)
        if pid is not None:
            # SIGTERM: the API drains requests, the worker hands unfinished tasks back.
            stop_pid(pid, timeout_s=STOP_TIMEOUT_S, group=True)
            log(f"{name}: stopped")
        started = self.started.pop(name, None)
        if started is not None:
            started.proc.wait(timeout=STOP_TIMEOUT_S)
        self.pidfile(name).unlink(missing_ok=True)
