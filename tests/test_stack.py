"""The local stack: every port checked before anything starts, one spawner, and an API
supervisor that restarts a dead child and drains on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from ops import procs
from ops.ports import free_port, free_ports, port_open
from ops.procs import ServiceProcess, StackError
from ops.stack import Stack
from service.api.server import RestartPolicy
from tests.helpers import WRITE_UP_REQUEST, ServiceProcesses

CLI = Path(sys.executable).with_name("video-tasks")


@contextlib.contextmanager
def held(port: int, *, reuse_port: bool = False) -> Iterator[socket.socket]:
    """A listener on 127.0.0.1:port, with SO_REUSEPORT like the API and metrics have."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    try:
        yield sock
    finally:
        sock.close()


# --- ports ------------------------------------------------------------------------------

@pytest.mark.parametrize(("what", "setting", "port_of"), [
    ("PostgreSQL", "POSTGRES_PORT", lambda s: s.postgres_port),
    ("PgBouncer", "PGBOUNCER_PORT", lambda s: s.pgbouncer_port),
    ("the API", "API_PORT", lambda s: s.api_port),
    ("the metrics of API process 2 of 2", "METRICS_PORT", lambda s: s.metrics_port + 1),
    ("the worker's metrics", "WORKER_METRICS_PORT", lambda s: s.worker_metrics_port),
])
def test_every_listening_port_is_checked_before_anything_starts(tmp_path, what, setting,
                                                                port_of):
    stack = Stack.on_free_ports(tmp_path / "stack", pgbouncer_env={}, api_processes=2,
                                metrics_port=free_ports(2))
    port = port_of(stack.settings)
    # Held the way another of our processes would hold it: SO_REUSEPORT, same user.
    with held(port, reuse_port=True), pytest.raises(StackError) as caught:
        stack.up(log=lambda _msg: None)
    message = str(caught.value)
    assert f"port {port} wanted by {what} is already in use by another program" in message
    assert f"Choose another port: {setting}=" in message and "make up" in message
    assert not (tmp_path / "stack").exists(), "nothing starts when a port is taken"


def test_two_settings_naming_one_port_are_refused(tmp_path):
    base = free_ports(2)
    stack = Stack.on_free_ports(tmp_path, pgbouncer_env={}, api_processes=2,
                                metrics_port=base, worker_metrics_port=base + 1)
    with pytest.raises(StackError) as caught:
        stack.check_ports()
    message = str(caught.value)
    assert (f"port {base + 1} is wanted twice: by the metrics of API process 2 of 2 "
            f"(METRICS_PORT + 1) and by the worker's metrics (WORKER_METRICS_PORT)") in message
    suggested = int(message.split("WORKER_METRICS_PORT=")[1].split()[0])
    assert suggested not in (base, base + 1)


# --- the spawner ------------------------------------------------------------------------

def test_stop_escalates_to_sigkill_and_children_are_read_from_proc():
    proc = subprocess.Popen(["bash", "-c", "trap '' TERM; sleep 30 & wait"],
                            start_new_session=True)
    try:
        procs.wait_until(lambda: len(procs.children(proc.pid)) == 1, 10, "the child")
        child = procs.children(proc.pid)[0]
        assert procs.stop_pid(proc.pid, timeout_s=0.5, group=True) is True
        assert proc.wait(timeout=10) == -signal.SIGKILL
        procs.wait_until(lambda: not procs.pid_alive(child), 10, "the group to die")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_process_that_exits_at_start_is_reported_with_its_log(stack, tmp_path):
    env = stack.app_env() | {"API_PORT": str(free_port()), "API_HOST": "not a host name"}
    process = ServiceProcess.start("api", env=env, log_path=tmp_path / "api.log",
                                   port=int(env["API_PORT"]))
    with pytest.raises(StackError) as caught:
        process.wait_listening(timeout_s=60)
    assert "api exited at start (code 1)" in str(caught.value)
    assert str(tmp_path / "api.log") in str(caught.value)


# --- the API supervisor -----------------------------------------------------------------

def test_restart_policy_backs_off_and_gives_up_on_a_crash_loop():
    policy = RestartPolicy(backoff_s=0.5, backoff_max_s=1.5, limit=3, window_s=60)
    assert [policy.died(t) for t in (0, 1, 2)] == [0.5, 1.0, 1.5]
    assert policy.died(3) is None
    # Deaths older than the window are forgotten.
    assert RestartPolicy(limit=1, window_s=10).died(0) == 0.5
    old = RestartPolicy(limit=1, window_s=10)
    old.died(0)
    assert old.died(20) == 0.5


async def test_a_killed_api_child_is_replaced_while_the_port_keeps_answering(
        processes: ServiceProcesses):
    api = processes.start_api(api_processes=2)
    procs.wait_until(lambda: len(api.children()) == 2, 30, "two API processes")
    before = api.children()
    victim = before[0]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        os.kill(victim, signal.SIGKILL)
        procs.wait_until(lambda: not procs.pid_alive(victim), 10, "the child to die")
        answered = 0
        for _ in range(50):  # a new connection each: SO_REUSEPORT spreads them
            async with http.get(f"{api.url}/healthz",
                                headers={"Connection": "close"}) as resp:
                answered += resp.status == 200
        assert answered == 50
        deadline = time.monotonic() + 15
        while not (len(api.children()) == 2 and victim not in api.children()):
            assert time.monotonic() < deadline, (api.children(), api.log()[-3000:])
            await asyncio.sleep(0.1)
        async with http.post(f"{api.url}/api/generate-video", json=WRITE_UP_REQUEST) as resp:
            assert resp.status == 202
    assert "exited with 137; restarting it" in api.log()
    children = api.children()
    api.signal(signal.SIGTERM)
    assert await asyncio.to_thread(api.wait, 30) == 0, api.log()[-3000:]
    assert not any(procs.pid_alive(pid) for pid in children)
    assert api.port is not None and not port_open(api.port)


def test_an_api_child_that_cannot_start_fails_the_supervisor(stack, tmp_path):
    env = stack.app_env() | {"API_PROCESSES": "2", "API_PORT": str(free_port()),
                             "METRICS_PORT": str(free_ports(2)), "API_HOST": "not a host"}
    process = ServiceProcess.start("api", env=env, log_path=tmp_path / "api.log")
    try:
        assert process.wait(60) != 0
    finally:
        process.kill()
    assert "before it listened; stopping" in process.log()


# --- the walk-through, through the command line ----------------------------------

def fetch(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.mark.db  # a stack of its own, without the `stack` fixture
def test_every_port_moved_in_env_is_used_by_up_status_doctor_migrate_and_video_url():
    """As a new user: every port moved in .env, commands run from that directory."""
    root = Path(tempfile.mkdtemp(prefix="video-tasks-cli-", dir="/tmp"))
    os.chmod(root, 0o755)
    metrics = free_ports(2)
    ports = {"POSTGRES_PORT": free_port(), "PGBOUNCER_PORT": free_port(),
             "API_PORT": free_port(), "METRICS_PORT": metrics,
             "WORKER_METRICS_PORT": free_port()}
    (root / ".env").write_text("\n".join(f"{k}={v}" for k, v in ports.items()) + "\n"
                               "API_PROCESSES=2\nSTACK_DIR=stack\nMEDIA_DIR=stack/media\n"
                               "WORK_DIR=stack/work\nVIDEO_PROVIDER=simulated\n"
                               "SIMULATED_PART_S=0.1\n")
    env = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(CLI), *args], cwd=root, env=env, capture_output=True,
                              text=True, timeout=120, check=False)

    try:
        up = cli("stack", "up")
        assert up.returncode == 0, up.stdout + up.stderr
        status = cli("stack", "status").stdout
        for name in ("POSTGRES_PORT", "PGBOUNCER_PORT", "API_PORT"):
            assert f"127.0.0.1:{ports[name]}" in status, status
        assert "2 processes" in status
        doctor = cli("doctor", "--json")
        assert doctor.returncode in (0, 1), doctor.stdout + doctor.stderr
        assert f"{ports['POSTGRES_PORT']}" in doctor.stdout
        assert cli("migrate").stdout.strip() == "schema is up to date"
        api = f"http://127.0.0.1:{ports['API_PORT']}"
        task = fetch(f"{api}/api/generate-video", WRITE_UP_REQUEST)
        deadline = time.monotonic() + 30
        while True:
            progress = fetch(f"{api}/api/progress/{task['task_id']}")
            if progress["status"] == "completed" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert progress["video_url"].startswith(f"{api}/media/videos/"), progress
        for port in (metrics, metrics + 1, ports["WORKER_METRICS_PORT"]):
            assert port_open(port), port
    finally:
        down = cli("stack", "down")
        shutil.rmtree(root, ignore_errors=True)
    assert down.returncode == 0, down.stderr
    assert not any(port_open(port) for port in ports.values())
