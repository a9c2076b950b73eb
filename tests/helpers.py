"""Helpers shared by the tests: service subprocesses and waiting for tasks."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from psycopg_pool import AsyncConnectionPool

from ops.stack import Stack, free_port, port_open
from service import tasks
from service.settings import PROJECT_DIR

SEED_REQUEST = {"product_name": "高强度螺栓", "theme": "品质保证", "duration": 5, "type": "video"}


@dataclass
class ServiceProcess:
    name: str
    proc: subprocess.Popen
    log_path: Path
    port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signum)

    def wait(self, timeout_s: float) -> int:
        return self.proc.wait(timeout=timeout_s)


class ServiceProcesses:
    """API and worker processes started as `python -m service ...` on the test stack."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.started: list[ServiceProcess] = []

    def start(self, command: str, **overrides: Any) -> ServiceProcess:
        env = self.stack.app_env()
        port = None
        if command == "api":
            port = overrides.pop("api_port", None) or free_port()
            overrides["api_port"] = port
            overrides.setdefault("metrics_port", free_port())
        if command == "worker":
            overrides.setdefault("worker_metrics_port", free_port())
        overrides.setdefault("lease_s", self.stack.settings.lease_s)
        overrides.setdefault("heartbeat_interval_s", self.stack.settings.heartbeat_interval_s)
        overrides.setdefault("worker_poll_interval_s",
                             self.stack.settings.worker_poll_interval_s)
        overrides.setdefault("retry_base_delay_s", self.stack.settings.retry_base_delay_s)
        overrides.setdefault("shutdown_grace_s", self.stack.settings.shutdown_grace_s)
        env.update({key.upper(): str(value) for key, value in overrides.items()})
        index = len(self.started)
        log_path = self.stack.log_dir / f"test-{command}-{index}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "service", command], env=env,
                                    stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=PROJECT_DIR)
        handle = ServiceProcess(command, proc, log_path, port)
        self.started.append(handle)
        if port is not None:
            deadline = time.monotonic() + 30
            while not port_open(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{command} did not start:\n{handle.log()}")
                time.sleep(0.05)
        return handle

    def start_worker(self, **overrides: Any) -> ServiceProcess:
        return self.start("worker", **overrides)

    def start_api(self, **overrides: Any) -> ServiceProcess:
        return self.start("api", **overrides)

    def stop_all(self) -> None:
        for handle in self.started:
            if handle.proc.poll() is None:
                handle.signal(signal.SIGKILL)
                handle.proc.wait(timeout=10)


async def create_task(http: aiohttp.ClientSession, base_url: str,
                      body: dict[str, Any] | None = None, **headers: str) -> dict[str, Any]:
    async with http.post(f"{base_url}/api/generate-video", json=body or SEED_REQUEST,
                         headers=headers) as resp:
        data = await resp.json()
        assert resp.status == 202, data
        return data


async def wait_for_status(pool: AsyncConnectionPool, task_id: str | uuid.UUID,
                          statuses: set[str], timeout_s: float = 60) -> dict[str, Any]:
    """Poll the task's row until its status is one of `statuses`."""
    deadline = time.monotonic() + timeout_s
    task_uuid = uuid.UUID(str(task_id))
    while True:
        row = await tasks.get_state(pool, task_uuid)
        if row and row["status"] in statuses:
            return row
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task_id} still {row and row['status']} "
                                 f"after {timeout_s} s: {row}")
        await asyncio.sleep(0.1)
