"""The doctor's checks: from one `probe.Sample` to one `Finding` per check.

A check decides a level and an outcome and keeps the facts behind them; it writes no
sentence (service.doctor.render does). A check whose data could not be read says UNKNOWN;
the part that failed (postgres, pgbouncer, console) carries the level. The runbook
(ops/README.md) explains every check by name. One module per section.
"""

from __future__ import annotations

from collections.abc import Callable

from service.doctor.checks import bouncer, configuration, connectivity, postgres, queue
from service.doctor.checks.base import Context
from service.doctor.findings import CHECK_FAILED, Finding, Level
from service.doctor.probe import Sample
from service.settings import Settings

Check = Callable[[Context], Finding]

# (section, name, check), in the order of the report.
CHECKS: list[tuple[str, str, Check]] = [
    ("connectivity", "postgres", connectivity.check_postgres),
    ("connectivity", "pgbouncer", connectivity.check_pgbouncer),
    ("connectivity", "pgbouncer_console", connectivity.check_console),
    ("pgbouncer", "pgbouncer_pools", bouncer.check_pools),
    ("pgbouncer", "pgbouncer_traffic", bouncer.check_traffic),
    ("pgbouncer", "pgbouncer_clients", bouncer.check_clients),
    ("postgres", "pg_connections", postgres.check_pg_connections),
    ("postgres", "pg_sessions", postgres.check_pg_sessions),
    ("postgres", "pg_idle_in_transaction", postgres.check_idle_in_transaction),
    ("postgres", "pg_long_statements", postgres.check_long_statements),
    ("configuration", "config_client_conn", configuration.check_client_budget),
    ("configuration", "config_server_conn", configuration.check_server_budget),
    ("configuration", "config_timeouts", configuration.check_timeouts),
    ("queue", "queue_last_hour", queue.check_last_hour),
    ("queue", "queue_running_too_long", queue.check_running_too_long),
    ("queue", "queue_expired_leases", queue.check_expired_leases),
    ("queue", "queue_backlog", queue.check_backlog),
    ("queue", "queue_attempts", queue.check_attempts),
]
NAMES = [name for _, name, _ in CHECKS]

__all__ = ["CHECKS", "NAMES", "Context", "evaluate"]


def evaluate(settings: Settings, sample: Sample) -> list[Finding]:
    """Every check on one sample, in report order; a check that raises says UNKNOWN."""
    ctx = Context(settings, sample)
    findings = []
    for section, name, check in CHECKS:
        here = ctx.for_check(section, name)
        try:
            finding = check(here)
        except Exception as exc:  # a doctor must report, never crash
            finding = here.found(Level.UNKNOWN, CHECK_FAILED,
                                 error=f"{type(exc).__name__}: {exc}")
        findings.append(finding)
    return findings
