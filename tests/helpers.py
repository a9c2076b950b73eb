"""Helpers shared by the tests: service subprocesses and waiting for tasks."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiohttp
from psycopg_pool import AsyncConnectionPool

from ops.ports import free_port, free_ports
from ops.procs import ServiceProcess
from ops.stack import Stack
from service import tasks

__all__ = ["WRITE_UP_REQUEST", "ServiceProcess", "ServiceProcesses", "create_task",
           "wait_for_status"]

# The original write-up's example request.
WRITE_UP_REQUEST = {"product_name": "高强度螺栓", "theme": "品质保证", "duration": 5,
                    "type": "video"}


class ServiceProcesses:
    """API and worker processes (`python -m service ...`, ops.procs.ServiceProcess) on the
    test stack, with the stack's settings and each its own ports."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.started: list[ServiceProcess] = []

    def start(self, command: str, **overrides: Any) -> ServiceProcess:
        port = None
        if command == "api":
            port = overrides.pop("api_port", None) or free_port()
            overrides["api_port"] = port
            overrides.setdefault("metrics_port",
                                 free_ports(int(overrides.get("api_processes", 1))))
        if command == "worker":
            overrides.setdefault("worker_metrics_port", free_port())
        env = self.stack.app_env()
        env.update({key.upper(): str(value) for key, value in overrides.items()})
        log_path = self.stack.log_dir / f"test-{command}-{len(self.started)}.log"
        handle = ServiceProcess.start(command, env=env, log_path=log_path, port=port,
                                      append=False)
        self.started.append(handle)
        if port is not None:
            handle.wait_listening()
        return handle

    def start_worker(self, **overrides: Any) -> ServiceProcess:
        return self.start("worker", **overrides)

    def start_api(self, **overrides: Any) -> ServiceProcess:
        return self.start("api", **overrides)

    def stop_all(self) -> None:
        """SIGKILL, to their process groups (an API's children too): the tests are done."""
        for handle in self.started:
            handle.kill()


async def create_task(http: aiohttp.ClientSession, base_url: str,
                      body: dict[str, Any] | None = None, **headers: str) -> dict[str, Any]:
    async with http.post(f"{base_url}/api/generate-video", json=body or WRITE_UP_REQUEST,
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
