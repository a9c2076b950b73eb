"""Command line: `python -m service {api,worker,migrate,doctor}`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from service import errors
from service.settings import Settings


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("api", help="serve the HTTP API")
    commands.add_parser("worker", help="run a worker")
    commands.add_parser("migrate", help="apply database migrations (direct to PostgreSQL)")
    doctor = commands.add_parser("doctor", help="diagnose pools, connections and the queue")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.add_argument("--watch", action="store_true", help="refresh every second")
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_env()
    except errors.ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    _configure_logging(settings.log_level)

    if args.command == "api":
        from service.api import server
        _use_uvloop()
        server.serve(settings)
    elif args.command == "worker":
        from service import worker
        _use_uvloop()
        asyncio.run(worker.serve(settings))
    elif args.command == "migrate":
        from service import migrate
        applied = migrate.migrate(settings)
        print(f"applied: {', '.join(applied)}" if applied else "schema is up to date")
    elif args.command == "doctor":
        from service import doctor
        return doctor.main(settings, as_json=args.json, watch=args.watch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
