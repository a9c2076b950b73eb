"""`video-tasks`: the one command line of the package (`python -m service` is the same).

    video-tasks api | worker              serve the HTTP API / run a worker
    video-tasks migrate                   apply migrations, straight to PostgreSQL
    video-tasks doctor [--json] [--watch] diagnose pools, connections and the queue
    video-tasks settings                  the settings every command sees, and their .env
    video-tasks provision                 roles, database, PgBouncer's auth lookup
    video-tasks stack up|down|run|status|render-pgbouncer|restart-pgbouncer|pidfile NAME
    video-tasks pgbouncer reload | pause [DB] [--timeout S] | resume [DB] | render --out DIR

Every command reads its settings the same way (service.settings.load_environ: the
process environment over one .env file), from any directory.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ops.procs import StackError
from service import errors
from service import settings as settings_module
from service.settings import Settings

PROG = "video-tasks"
Environ = Mapping[str, str]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.handler(args, settings_module.load_environ())
    except errors.ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except StackError as exc:
        print(f"stack: {exc}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    from service.doctor import console
    parser = argparse.ArgumentParser(prog=PROG, description="The video-tasks service: "
                                     "API, worker, migrations, doctor and the local stack.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Callable[..., int], help_text: str,
            into: Any = commands) -> argparse.ArgumentParser:
        sub = into.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    add("api", _api, "serve the HTTP API (API_PROCESSES processes on API_PORT)")
    add("worker", _worker, "run a worker")
    add("migrate", _migrate, "apply database migrations (straight to PostgreSQL)")
    doctor = add("doctor", _doctor, "diagnose PostgreSQL, PgBouncer, the pools and the queue "
                 "(exit 0 healthy, 1 warnings, 2 critical)")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.add_argument("--watch", action="store_true", help="refresh every second")
    add("settings", _settings, "print the settings every command sees (passwords hidden) "
        "and the .env file they came from")
    provision = add("provision", _provision, "create the roles, the database and "
                    "PgBouncer's auth lookup, as a superuser (idempotent)")
    provision.add_argument("--superuser-url", help="default: POSTGRES_SUPERUSER_URL")

    stack = add("stack", _no_subcommand, "the local stack without Docker (STACK_DIR)")
    stack_commands = stack.add_subparsers(dest="stack_command", required=True,
                                          metavar="STACK_COMMAND")
    add("up", _stack_up, "start what is not running, detached", stack_commands)
    add("down", _stack_down, "stop everything the stack started", stack_commands)
    add("run", _stack_run, "up, then follow the logs; Ctrl-C stops it all", stack_commands)
    add("status", _stack_status, "what runs where", stack_commands)
    add("render-pgbouncer", _stack_render, "rewrite the stack's pgbouncer.ini from the "
        "settings (then `video-tasks pgbouncer reload`)", stack_commands)
    add("restart-pgbouncer", _stack_restart_pgbouncer, "stop and start the stack's PgBouncer",
        stack_commands)
    pidfile = add("pidfile", _stack_pidfile, "print the pid file of the stack's api or worker",
                  stack_commands)
    pidfile.add_argument("name", choices=["api", "worker"])

    bouncer = add("pgbouncer", _no_subcommand, "PgBouncer's admin console "
                  "(PGBOUNCER_ADMIN_URL) and its config renderer")
    bouncer_commands = bouncer.add_subparsers(dest="pgbouncer_command", required=True,
                                              metavar="PGBOUNCER_COMMAND")
    add("reload", _pgbouncer_console, "re-read pgbouncer.ini and print what changed",
        bouncer_commands)
    pause = add("pause", _pgbouncer_console, "PAUSE one database or all: running "
                "transactions end, new queries wait until resume", bouncer_commands)
    pause.add_argument("database", nargs="?", help="a [databases] entry; default all")
    pause.add_argument("--timeout", type=float, default=console.DEFAULT_PAUSE_TIMEOUT_S,
                       help="seconds to wait for transactions to end (default %(default)g)")
    resume = add("resume", _pgbouncer_console, "RESUME one database or all", bouncer_commands)
    resume.add_argument("database", nargs="?", help="a [databases] entry; default all")
    render = add("render", _pgbouncer_render, "write pgbouncer.ini and userlist.txt from the "
                 "PGBOUNCER_* settings (production, images)", bouncer_commands)
    render.add_argument("--out", type=Path, required=True, help="directory to write into")
    return parser


def _no_subcommand(_args: argparse.Namespace, _environ: Environ) -> int:  # pragma: no cover
    return 2


# --- the service ----------------------------------------------------------------------

def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # psycopg_pool logs every failed reconnect at WARNING; once per outage is enough.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)


def _use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _app_settings(command: str, environ: Environ) -> Settings:
    """Settings of an API or worker process, refused when two of its ports collide (the
    API's metrics block and the worker's metrics port would be shared silently)."""
    from ops import ports
    settings = Settings.from_env(environ)
    problems = ports.conflicts(ports.app_listeners(settings), command=f"{PROG} {command}")
    if problems:
        raise errors.ConfigError("\n".join(problems))
    _configure_logging(settings.log_level)
    return settings


def _api(_args: argparse.Namespace, environ: Environ) -> int:
    from service.api import server
    settings = _app_settings("api", environ)
    _use_uvloop()
    return server.serve(settings)


def _worker(_args: argparse.Namespace, environ: Environ) -> int:
    from service import worker
    settings = _app_settings("worker", environ)
    _use_uvloop()
    asyncio.run(worker.serve(settings))
    return 0


def _migrate(_args: argparse.Namespace, environ: Environ) -> int:
    import psycopg

    from service import migrate
    settings = Settings.from_env(environ)
    _configure_logging(settings.log_level)
    try:
        applied = migrate.migrate(settings)
    except psycopg.OperationalError as exc:
        # Connecting failed (no server, wrong password or database): say where, no trace.
        if exc.sqlstate and not exc.sqlstate.startswith(("08", "28", "3D")):
            raise
        target = settings_module.redact_url(settings.database_direct_url)
        print(f"migrate: cannot connect to {target} (DATABASE_DIRECT_URL): "
              f"{str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    print(f"applied: {', '.join(applied)}" if applied else "schema is up to date")
    return 0


def _doctor(args: argparse.Namespace, environ: Environ) -> int:
    from service import doctor
    settings = Settings.from_env(environ)
    _configure_logging(settings.log_level)
    return doctor.main(settings, as_json=args.json, watch=args.watch)


def _settings(_args: argparse.Namespace, environ: Environ) -> int:
    path = settings_module.env_file()
    print(f"# the process environment over {path or 'no .env file'}")
    for name, value in Settings.from_env(environ).describe().items():
        print(f"{name.upper()}={value}")
    return 0


def _provision(args: argparse.Namespace, environ: Environ) -> int:
    from ops import provision
    url = args.superuser_url or environ.get("POSTGRES_SUPERUSER_URL")
    if not url:
        raise errors.ConfigError("provision needs --superuser-url or POSTGRES_SUPERUSER_URL")
    provision.provision(url, Settings.from_env(environ),
                        auth_user=environ.get("PGBOUNCER_AUTH_USER",
                                              provision.DEFAULT_AUTH_USER),
                        auth_password=environ.get("PGBOUNCER_AUTH_PASSWORD",
                                                  provision.DEFAULT_AUTH_PASSWORD))
    print("provisioned roles, database and PgBouncer auth lookup")
    return 0


# --- the local stack ------------------------------------------------------------------

def _stack(environ: Environ) -> Any:
    from ops.stack import Stack
    return Stack.from_env(environ)


def _stack_up(_args: argparse.Namespace, environ: Environ) -> int:
    stack = _stack(environ)
    stack.up()
    _print_urls(stack)
    return 0


def _stack_down(_args: argparse.Namespace, environ: Environ) -> int:
    _stack(environ).down()
    return 0


def _stack_status(_args: argparse.Namespace, environ: Environ) -> int:
    for part, state in _stack(environ).status().items():
        print(f"{part:>9}: {state}")
    return 0


def _stack_render(_args: argparse.Namespace, environ: Environ) -> int:
    _stack(environ).render_pgbouncer()
    return 0


def _stack_restart_pgbouncer(_args: argparse.Namespace, environ: Environ) -> int:
    _stack(environ).restart_pgbouncer()
    return 0


def _stack_pidfile(args: argparse.Namespace, environ: Environ) -> int:
    print(_stack(environ).apps.pidfile(args.name))
    return 0


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _stack_run(_args: argparse.Namespace, environ: Environ) -> int:
    stack = _stack(environ)
    # Explicit: a shell that starts us in the background leaves SIGINT ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        stack.up()
        _print_urls(stack)
        print("Ctrl-C stops the whole stack.\n")
        _follow([stack.log_dir / "api.log", stack.log_dir / "worker.log"])
    except KeyboardInterrupt:
        _print_quietly("")
    except StackError as exc:
        _print_quietly(f"stack: {exc}", file=sys.stderr)
        stack.down(log=_print_quietly)
        return 1
    # Ctrl-C may have ended whoever reads our output (`make run | tee`): stop it all anyway.
    stack.down(log=_print_quietly)
    return 0


def _print_quietly(message: str, **kwargs: Any) -> None:
    try:
        print(message, flush=True, **kwargs)
    except OSError:
        pass


def _follow(paths: list[Path]) -> None:
    """Print what the processes log until interrupted."""
    handles = []
    for path in paths:
        f = path.open("r", errors="replace")
        f.seek(0, os.SEEK_END)
        handles.append((path.stem, f))
    while True:
        quiet = True
        for name, f in handles:
            for line in f.readlines():
                quiet = False
                print(f"{name:>6} | {line}", end="")
        if quiet:
            time.sleep(0.2)


def _print_urls(stack: Any) -> None:
    s = stack.settings
    base = s.public_base_url
    api_metrics = worker_metrics = "off"
    if s.metrics_port:
        last = s.metrics_port + s.api_processes - 1
        api_metrics = f"http://{s.metrics_host}:{s.metrics_port}/metrics" + (
            f" ... :{last} (one per API process)" if s.api_processes > 1 else "")
    if s.worker_metrics_port:
        worker_metrics = f"http://{s.metrics_host}:{s.worker_metrics_port}/metrics"
    console = settings_module.redact_url(s.pgbouncer_admin_url)
    print(f"""
  API          {base}/api/generate-video   (POST)
               {base}/api/progress/<task_id>
  health       {base}/healthz  {base}/readyz
  metrics      API {api_metrics}
               worker {worker_metrics}
  PgBouncer    127.0.0.1:{s.pgbouncer_port}  (console: psql "{console}")
  PostgreSQL   127.0.0.1:{s.postgres_port}
  doctor       {_cli_path()} doctor   (or make doctor)
  logs         {stack.log_dir}/
""")


def _cli_path() -> str:
    """The console script beside this Python, if installed there (a venv), else its name."""
    script = Path(sys.executable).with_name(PROG)
    return str(script) if script.exists() else PROG


# --- PgBouncer ------------------------------------------------------------------------

def _pgbouncer_console(args: argparse.Namespace, environ: Environ) -> int:
    import psycopg

    from service.doctor import console
    from service.doctor.probe import describe_error
    settings = Settings.from_env(environ)
    # psycopg logs abandoned statements; the messages here say what happened.
    logging.getLogger("psycopg").setLevel(logging.CRITICAL)
    try:
        if args.pgbouncer_command == "reload":
            return asyncio.run(console.reload(settings))
        if args.pgbouncer_command == "pause":
            return asyncio.run(console.pause(settings, args.database, args.timeout))
        return asyncio.run(console.resume(settings, args.database))
    except (psycopg.Error, OSError, TimeoutError) as exc:
        print(f"PgBouncer console: {describe_error(exc)}", file=sys.stderr)
        return 1


def _pgbouncer_render(args: argparse.Namespace, environ: Environ) -> int:
    from pgbouncer import render
    try:
        ini_path, auth_path = render.render(render.settings_from_env(environ), args.out)
    except ValueError as exc:
        raise errors.ConfigError(str(exc)) from None
    print(f"wrote {ini_path} and {auth_path}")
    return 0
