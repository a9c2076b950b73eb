"""No secret leaks: a whole stack runs with a distinct value for every password, token and
key, is used the way clients and the engineer on call use it (a video made through Ark
and S3, bad logins, bad bodies, the doctor, the stack's own commands), and then every
thing it wrote or showed is searched for those values: its logs and rendered files, the
answers it gave, the doctor's output, and every process's command line (what `ps` shows).
A file that must hold one (PgBouncer's userlist) may be read by its owner only."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ops.ports import free_port
from ops.stack import Stack
from service.settings import PROJECT_DIR
from tests.fakes.ark import FakeArk, FakeArkThread
from tests.fakes.s3 import MotoS3
from tests.helpers import WRITE_UP_REQUEST

CLI = Path(sys.executable).with_name("video-tasks")
# Files that may hold a secret, because the program that reads them needs it in the clear.
SECRET_HOLDERS = {"userlist.txt"}


def distinct(name: str) -> str:
    return f"{name}-{secrets.token_hex(16)}"


@dataclass
class SecretStack:
    stack: Stack
    secrets: dict[str, str]
    api: str
    # Everything a client or an operator was shown, to search afterwards.
    shown: list[str] = field(default_factory=list)

    def request(self, method: str, path: str, *, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, str]:
        req = urllib.request.Request(self.api + path, data=body, method=method,
                                     headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, text = resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read().decode()
        self.shown.append(f"{method} {path} -> {status} {text}")
        return status, text

    def run(self, *argv: str) -> str:
        env = self.stack.app_env() | {"STACK_DIR": str(self.stack.root)}
        done = subprocess.run([str(CLI), *argv], env=env, cwd=PROJECT_DIR,
                              capture_output=True, text=True, timeout=120, check=False)
        self.shown.append(done.stdout + done.stderr)
        return done.stdout + done.stderr


@pytest.fixture(scope="module")
def fake_ark_with_key() -> Iterator[tuple[FakeArk, str]]:
    key = distinct("ark-key")
    with FakeArkThread(api_key=key) as fake:
        yield fake, key


@pytest.fixture(scope="module")
def secret_stack(fake_ark_with_key, moto_s3: MotoS3) -> Iterator[SecretStack]:
    fake_ark, ark_key = fake_ark_with_key
    values = {name: distinct(name) for name in
              ("app", "owner", "admin", "stats", "auth", "token", "metrics", "s3")}
    pg, bouncer = free_port(), free_port()
    root = Path(tempfile.mkdtemp(prefix="video-tasks-secrets-", dir="/tmp"))
    stack = Stack.on_free_ports(
        root,
        pgbouncer_env={"PGBOUNCER_AUTH_PASSWORD": values["auth"],
                       "PGBOUNCER_STATS_PASSWORD": values["stats"]},
        postgres_port=pg, pgbouncer_port=bouncer,
        database_url=f"postgresql://app:{values['app']}@127.0.0.1:{bouncer}/videotasks",
        database_direct_url=f"postgresql://app:{values['app']}@127.0.0.1:{pg}/videotasks",
        database_owner_url=(f"postgresql://videotasks_owner:{values['owner']}@127.0.0.1:{pg}"
                            "/videotasks"),
        pgbouncer_admin_url=(f"postgresql://pgbouncer_admin:{values['admin']}@127.0.0.1:"
                             f"{bouncer}/pgbouncer"),
        auth_token_secret=values["token"], metrics_token=values["metrics"],
        video_provider="ark", ark_base_url=fake_ark.base_url, ark_api_key=ark_key,
        ark_poll_interval_s=0.1, user_creates_per_minute=0, user_max_unfinished=0,
        **moto_s3.settings_overrides() | {"aws_secret_access_key": values["s3"]},
    )
    shown: list[str] = []
    try:
        stack.up(log=shown.append)
        used = SecretStack(stack, {**values, "ark": ark_key},
                           f"http://127.0.0.1:{stack.settings.api_port}", shown)
        exercise(used)
        yield used
    finally:
        stack.down(log=shown.append)
        shutil.rmtree(root, ignore_errors=True)


def exercise(s: SecretStack) -> None:
    """Use the stack as clients and the engineer on call would, errors included."""
    json_headers = {"Content-Type": "application/json"}
    status, text = s.request("POST", "/api/generate-video", headers=json_headers,
                             body=json.dumps(WRITE_UP_REQUEST).encode())
    assert status == 202, text
    task_id = json.loads(text)["task_id"]
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        status, text = s.request("GET", f"/api/progress/{task_id}")
        if json.loads(text)["status"] in ("completed", "failed"):
            break
        time.sleep(0.5)
    assert json.loads(text)["status"] == "completed", text
    s.request("GET", "/api/tasks", headers={"Authorization": "Bearer not-a-token"})
    s.request("GET", "/metrics", headers={"Authorization": "Bearer wrong"})
    s.request("GET", "/metrics", headers={"Authorization": f"Bearer {s.secrets['metrics']}"})
    s.request("POST", "/api/login", headers=json_headers, body=b'{"code": "x"}')
    s.request("POST", "/api/generate-video", headers=json_headers, body=b"{bad")
    s.request("GET", "/readyz")
    for argv in (["doctor"], ["doctor", "--json"], ["settings"], ["stack", "status"]):
        s.run(*argv)


def test_no_secret_in_any_answer_or_in_what_the_commands_print(secret_stack: SecretStack):
    text = "\n".join(secret_stack.shown)
    assert '"status":"completed"' in text and "pgbouncer" in text.lower()
    leaked = {name for name, value in secret_stack.secrets.items() if value in text}
    assert not leaked, leaked


def test_no_secret_in_a_log_or_a_readable_file(secret_stack: SecretStack):
    checked = 0
    for path in sorted(secret_stack.stack.root.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        checked += 1
        data = path.read_bytes()
        leaked = {name for name, value in secret_stack.secrets.items()
                  if value.encode() in data}
        if not leaked:
            continue
        assert path.name in SECRET_HOLDERS, f"{path} holds {leaked}"
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} holds {leaked} and is mode {oct(mode)}"
    assert checked > 10, "the stack wrote its logs and rendered files under its root"


def test_no_secret_on_a_command_line(secret_stack: SecretStack):
    """What `ps` shows every user: /proc/<pid>/cmdline of every process."""
    seen = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        seen += 1
        leaked = {name for name, value in secret_stack.secrets.items()
                  if value.encode() in cmdline}
        assert not leaked, f"pid {entry.name}: {cmdline!r} shows {leaked}"
    # The stack's own processes are among those read.
    assert seen > 5 and secret_stack.stack.pgbouncer.pid() is not None
    assert os.path.exists(f"/proc/{secret_stack.stack.pgbouncer.pid()}")
