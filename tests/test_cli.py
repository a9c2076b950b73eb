"""One command line, one set of settings: every entry point reads the same .env, from any
directory, and what the installed package needs at run time is in its distribution."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ops.ports import free_port, free_ports
from ops.stack import Stack
from service import errors
from service import settings as settings_module
from service.settings import ENV_FILE_VARIABLE, PROJECT_DIR, Settings

CLI = Path(sys.executable).with_name("video-tasks")
CLI_TIMEOUT_S = 60
# The variables a subprocess keeps from ours: no settings of a developer's shell.
KEPT = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")


def clean_env(**extra: str) -> dict[str, str]:
    env = {key: os.environ[key] for key in KEPT if key in os.environ}
    env.update(extra)
    return env


def run(argv: list[str], *, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=CLI_TIMEOUT_S, check=False)


def shown(output: str) -> dict[str, str]:
    """`video-tasks settings` output as a dict."""
    return dict(line.split("=", 1) for line in output.splitlines()
                if "=" in line and not line.startswith("#"))


# --- the loader -------------------------------------------------------------------------

def test_the_env_file_of_the_current_directory_is_read_and_the_environment_wins(tmp_path):
    (tmp_path / ".env").write_text(
        "# a comment\n"
        "API_PORT=8123\n"
        'export METRICS_PORT="9200"  # quoted, exported, commented\n'
        "ARK_MODEL='model with spaces'\n"
        "ARK_API_KEY=abc$HOME${HOME}\n"
        "MEDIA_DIR=media\n"
        "STACK_DIR=stack\n")
    environ = settings_module.load_environ({"METRICS_PORT": "9300"}, cwd=tmp_path)
    assert environ["API_PORT"] == "8123"
    assert environ["METRICS_PORT"] == "9300"  # the environment wins
    assert environ["ARK_MODEL"] == "model with spaces"
    assert environ["ARK_API_KEY"] == "abc$HOME${HOME}"  # literal: secrets are not expanded
    # Relative paths in the file are relative to the file, not to where a command runs.
    assert environ["STACK_DIR"] == str(tmp_path / "stack")
    s = Settings.from_env(environ)
    assert s.media_dir == tmp_path / "media"
    assert (s.api_port, s.metrics_port) == (8123, 9300)


def test_the_env_file_variable_names_the_file_or_turns_it_off(tmp_path):
    (tmp_path / ".env").write_text("API_PORT=8123\n")
    elsewhere = tmp_path / "elsewhere.env"
    elsewhere.write_text("API_PORT=8124\n")
    named = settings_module.load_environ({ENV_FILE_VARIABLE: str(elsewhere)}, cwd=tmp_path)
    assert named["API_PORT"] == "8124"
    off = settings_module.load_environ({ENV_FILE_VARIABLE: ""}, cwd=tmp_path)
    assert "API_PORT" not in off
    with pytest.raises(errors.ConfigError, match="no such file"):
        settings_module.load_environ({ENV_FILE_VARIABLE: str(tmp_path / "missing")})


def test_without_a_local_env_file_the_project_directory_one_is_read(tmp_path, monkeypatch):
    project, cwd = tmp_path / "project", tmp_path / "somewhere"
    project.mkdir()
    cwd.mkdir()
    (project / ".env").write_text("API_PORT=8125\n")
    monkeypatch.setattr(settings_module, "PROJECT_DIR", project)
    assert settings_module.env_file({}, cwd=cwd) == project / ".env"
    assert settings_module.load_environ({}, cwd=cwd)["API_PORT"] == "8125"


def test_public_base_url_follows_api_host_and_port_unless_set():
    assert Settings().public_base_url == "http://127.0.0.1:8000"
    moved = Settings.from_env({"API_PORT": "8001"})
    assert moved.public_base_url == "http://127.0.0.1:8001"
    assert moved.replace(api_port=8002).public_base_url == "http://127.0.0.1:8002"
    assert Settings(api_host="0.0.0.0", api_port=8003).public_base_url == \
        "http://127.0.0.1:8003"
    explicit = Settings.from_env({"API_PORT": "8001",
                                  "PUBLIC_BASE_URL": "https://videos.example.com"})
    assert explicit.public_base_url == "https://videos.example.com"
    assert explicit.replace(api_port=8002).public_base_url == "https://videos.example.com"


def test_private_stacks_read_no_env_file_and_pass_every_setting_on(tmp_path):
    stack = Stack.on_free_ports(tmp_path, pgbouncer_env={}, max_attempts=5)
    env = stack.app_env()
    assert env[ENV_FILE_VARIABLE] == ""
    again = Settings.from_env(settings_module.load_environ(env))
    assert again == stack.settings
    # Derived values are left to derive, so that a process given its own port follows it.
    assert "PUBLIC_BASE_URL" not in env and "DATABASE_URL" not in env
    assert Settings.from_env(env | {"API_PORT": "8123"}).public_base_url.endswith(":8123")


# --- the command line -------------------------------------------------------------------

def test_one_command_line_with_subcommands_under_both_names(tmp_path):
    assert CLI.exists(), "the console script is installed with the package (make bootstrap)"
    for argv in ([str(CLI), "--help"], [sys.executable, "-m", "service", "--help"]):
        result = run(argv, cwd=tmp_path, env=clean_env())
        assert result.returncode == 0, result.stderr
        for command in ("api", "worker", "migrate", "doctor", "settings", "provision",
                        "stack", "pgbouncer"):
            assert command in result.stdout
    stack = run([str(CLI), "stack", "--help"], cwd=tmp_path, env=clean_env())
    for command in ("up", "down", "run", "status", "render-pgbouncer"):
        assert command in stack.stdout


def test_every_command_reads_the_env_file_from_any_directory(tmp_path):
    pg_port, pgbouncer_port, api_port = free_port(), free_port(), free_port()
    (tmp_path / ".env").write_text(f"POSTGRES_PORT={pg_port}\nPGBOUNCER_PORT={pgbouncer_port}\n"
                                   f"API_PORT={api_port}\nDOCTOR_TIMEOUT_S=1\n")
    env = clean_env()
    for argv in ([str(CLI), "settings"], [sys.executable, "-m", "service", "settings"]):
        result = run(argv, cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
        assert str(tmp_path / ".env") in result.stdout
        values = shown(result.stdout)
        assert values["API_PORT"] == str(api_port)
        assert values["PUBLIC_BASE_URL"] == f"http://127.0.0.1:{api_port}"
        assert f":{pgbouncer_port}/videotasks" in values["DATABASE_URL"]
    # The doctor and migrate look at the moved ports (nothing listens there).
    doctor = run([str(CLI), "doctor", "--json"], cwd=tmp_path, env=env)
    assert doctor.returncode == 2, doctor.stderr
    assert f"{pg_port}" in doctor.stdout and f"{pgbouncer_port}" in doctor.stdout
    json.loads(doctor.stdout)
    migrate = run([str(CLI), "migrate"], cwd=tmp_path, env=env)
    assert migrate.returncode == 1
    assert f"127.0.0.1:{pg_port}/videotasks (DATABASE_DIRECT_URL)" in migrate.stderr
    assert "Traceback" not in migrate.stderr


def test_the_api_and_the_worker_refuse_to_share_a_metrics_port(tmp_path):
    base = free_ports(2)
    env = clean_env(**{ENV_FILE_VARIABLE: "", "API_PROCESSES": "2",
                       "METRICS_PORT": str(base), "WORKER_METRICS_PORT": str(base + 1)})
    for command in ("api", "worker"):
        result = run([str(CLI), command], cwd=tmp_path, env=env)
        assert result.returncode == 2, result.stderr
        assert f"port {base + 1} is wanted twice" in result.stderr
        assert "METRICS_PORT + 1" in result.stderr and "WORKER_METRICS_PORT" in result.stderr


def test_pgbouncer_console_commands_run_through_the_cli(stack, tmp_path):
    env = stack.app_env()
    reload = run([str(CLI), "pgbouncer", "reload"], cwd=tmp_path, env=env)
    assert reload.returncode == 0, reload.stderr
    assert "RELOAD done" in reload.stdout or "->" in reload.stdout
    resume = run([str(CLI), "pgbouncer", "resume"], cwd=tmp_path, env=env)
    assert resume.returncode == 0 and "not paused" in resume.stdout


def test_the_distribution_carries_the_cli_provisioning_and_the_pgbouncer_renderer(
        stack, tmp_path):
    """Build the wheel, run from it alone (not the checkout): render and provision."""
    source = tmp_path / "source"  # setuptools builds in the tree: not in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(PROJECT_DIR / name, source / name)
    for package in ("service", "ops", "pgbouncer"):
        shutil.copytree(PROJECT_DIR / package, source / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                            str(tmp_path / "dist"), str(source)], capture_output=True,
                           text=True, timeout=300, check=False)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("video_tasks-*.whl"))
    unpacked = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "video-tasks = ops.cli:main" in archive.read(entry_points).decode()
        archive.extractall(unpacked)
    for path in ("ops/cli.py", "ops/provision.py", "ops/sql/provision_roles.sql",
                 "pgbouncer/render.py", "pgbouncer/pgbouncer.ini.template",
                 "pgbouncer/userlist.txt.template", "service/sql/queries.sql"):
        assert path in names, path
    # PYTHONPATH comes before the checkout's editable install, and cwd is elsewhere.
    env = stack.app_env() | {"PYTHONPATH": str(unpacked)}
    probe = run([sys.executable, "-c", "import ops.cli, pgbouncer.render; "
                 "print(ops.cli.__file__, pgbouncer.render.__file__)"], cwd=tmp_path, env=env)
    assert probe.stdout.count(str(unpacked)) == 2, probe.stdout + probe.stderr
    out = tmp_path / "rendered"
    render = run([sys.executable, "-m", "service", "pgbouncer", "render", "--out", str(out)],
                 cwd=tmp_path, env=env)
    assert render.returncode == 0, render.stderr
    assert "pool_mode = transaction" in (out / "pgbouncer.ini").read_text()
    provision = run([sys.executable, "-m", "service", "provision", "--superuser-url",
                     stack.superuser_url()], cwd=tmp_path, env=env)
    assert provision.returncode == 0, provision.stderr
    assert "provisioned" in provision.stdout
