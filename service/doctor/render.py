"""Findings in words: `name: LEVEL — what, with numbers — what to do`.

The one place the doctor's sentences are written. Each check has a function here that
reads its finding's outcome and facts and returns (what, what to do); the checks only
decide. The runbook (ops/README.md) explains every check by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from service import tasks
from service.doctor.checks.base import API_APP, WORKER_APP
from service.doctor.findings import CHECK_FAILED, UNREADABLE, Finding, Level

# "generating/merging/uploading", from the status vocabulary.
RUNNING_TEXT = "/".join(s.value for s in tasks.Status if s in tasks.RUNNING)
# Rows a sentence names; the finding's facts keep them all.
NAMED_ROWS = 3
Facts = dict[str, Any]


@dataclass(frozen=True)
class Sentences:
    summary: str  # what the check found, with numbers
    fix: str  # what to do; empty when there is nothing to do


def sentences(finding: Finding) -> Sentences:
    """The finding's summary and fix. Never raises: a doctor must report."""
    f = finding.facts
    try:
        if finding.outcome == UNREADABLE:
            return Sentences(_unreadable(finding.check, f), "")
        if finding.outcome == CHECK_FAILED:
            return Sentences(f"the check itself failed: {f['error']}", "")
        summary, fix = RENDERERS[finding.check](finding.outcome, f)
    except Exception as exc:
        return Sentences(f"{finding.outcome} (the sentence failed: {type(exc).__name__}: "
                         f"{exc}); facts: {f}", "")
    return Sentences(summary, fix if finding.level is not Level.OK else "")


def summary(finding: Finding) -> str:
    return sentences(finding).summary


def fix(finding: Finding) -> str:
    return sentences(finding).fix


def line(finding: Finding) -> str:
    """`name: LEVEL — summary — fix`, the report's line for one check."""
    said = sentences(finding)
    text = f"{finding.check}: {finding.level.value}"
    if said.summary:
        text += f" — {said.summary}"
    if said.fix:
        text += f" — {said.fix}"
    return text


def verdict(level: Level, findings: list[Finding]) -> str:
    """`CRITICAL — 1 critical (a); 2 warnings (b, c)`, or that every check passed."""
    counts = []
    for bad in (Level.CRITICAL, Level.WARNING):
        names = [f.check for f in findings if f.level is bad]
        if names:
            word = bad.value.lower() + ("s" if len(names) > 1 and bad is Level.WARNING else "")
            counts.append(f"{len(names)} {word} ({', '.join(names)})")
    return (f"{level.value} — " + "; ".join(counts) if counts
            else f"{level.value} — every check passed")


# --- units ------------------------------------------------------------------------------


def secs(value: float) -> str:
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"


def ms(value: float) -> str:
    return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"


def plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n} {word if n == 1 else (words or word + 's')}"


def _short(query: str | None, limit: int = 60) -> str:
    text = " ".join((query or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _unreadable(check: str, f: Facts) -> str:
    reasons = f.get("reasons", {})
    needs = f["needs"]
    if needs == "console":
        if check == "config_client_conn":
            return "PgBouncer's console is unreachable: max_client_conn unknown"
        return "PgBouncer's console is unreachable"
    if needs == "postgres":
        return f"PostgreSQL could not be read: {reasons.get('postgres', '?')}"
    if needs == "queue":
        return f"the tasks table could not be read: {reasons.get('queue', '?')}"
    if needs == "console and postgres":
        return "needs both PgBouncer's console and PostgreSQL"
    if needs == "console or postgres":
        return "needs PgBouncer's console or PostgreSQL"
    return f"could not read {needs}"


# --- connectivity -----------------------------------------------------------------------


def _ping(what: str, f: Facts) -> str:
    text = f"{what} in {ms(f['roundtrip_ms'])}"
    if f.get("connect_ms") is not None:
        text += f" (connect {ms(f['connect_ms'])})"
    return text


def postgres(outcome: str, f: Facts) -> tuple[str, str]:
    if outcome == "only_through_pgbouncer":
        return (f"not reachable directly at {f['address']} ({f['reason']}); it answers "
                "through PgBouncer, so the doctor read PostgreSQL that way",
                "check DATABASE_DIRECT_URL and that this host may reach it: with PgBouncer "
                "saturated, reads through it queue like the app's")
    if outcome == "unreachable":
        return (f"unreachable at {f['address']}: {f['reason']}",
                "is PostgreSQL running (`video-tasks stack status`, its log)? The API "
                "answers 503 and workers retry until it is back")
    return (_ping(f"direct SELECT 1 at {f['address']}", f),
            f"slower than {ms(f['slow_ms'])}: the database host is overloaded or far away: "
            "check its CPU and I/O")


def pgbouncer(outcome: str, f: Facts) -> tuple[str, str]:
    if outcome == "paused":
        paused = f["paused"]
        return (f"{f['reason']} at {f['address']}: {' and '.join(paused)} "
                f"{'is' if len(paused) == 1 else 'are'} PAUSED, so new clients and queries "
                "wait",
                "when the maintenance is over: ops/pgbouncer-resume"
                + (f" {paused[0]}" if len(paused) == 1 else ""))
    if outcome == "no_server_connection":
        return (f"{f['reason']} at {f['address']}",
                "every server connection is busy: see pgbouncer_pools")
    if outcome == "unreachable":
        return (f"unreachable at {f['address']}: {f['reason']}",
                "is PgBouncer running (`video-tasks stack status`, its log)? The API "
                "answers 503 until it is back")
    return (_ping(f"SELECT 1 through PgBouncer at {f['address']}", f),
            "slow through PgBouncer but not direct: clients queue for server connections "
            "(see pgbouncer_pools) or PgBouncer's CPU is saturated")


def pgbouncer_console(outcome: str, f: Facts) -> tuple[str, str]:
    if outcome == "pgbouncer_down":
        return (f"admin console unreachable: {f['reason']}",
                "PgBouncer itself is unreachable: see pgbouncer")
    if outcome == "refused":
        return (f"admin console unreachable: {f['reason']}",
                "PGBOUNCER_ADMIN_URL must name a user in PgBouncer's admin_users or "
                "stats_users and the virtual database 'pgbouncer'")
    return f"{f['version']} answers SHOW commands", ""


# --- PgBouncer --------------------------------------------------------------------------


def pgbouncer_pools(outcome: str, f: Facts) -> tuple[str, str]:
    if outcome == "no_pool":
        return "no pool yet (no client has connected)", ""
    problems, fixes, fine = [], [], []
    for db in f["databases"]:
        if db["paused"]:
            problems.append(f"{db['database']} is PAUSED: its clients queue until RESUME")
            fixes.append(f"when the maintenance is over: ops/pgbouncer-resume {db['database']}")
        if db["disabled"]:
            problems.append(f"{db['database']} is DISABLED: new clients are refused")
            fixes.append(f"ENABLE {db['database']}; on PgBouncer's console")
    qwt = f["query_wait_timeout_s"]
    for p in f["pools"]:
        name = f"{p['database']}/{p['user']}"
        if p["pool_mode"] not in (None, "transaction"):
            problems.append(f"{name} runs in pool_mode {p['pool_mode']}")
            fixes.append("set pool_mode = transaction (the app is written for it) and reload "
                         "PgBouncer (ops/pgbouncer-reload)")
        if p["saturated"] and p["paused"]:
            problems.append(f"{name}: {plural(p['waiting'], 'client')} held by the PAUSE")
        elif p["saturated"]:
            problems.append(
                f"{name}: {plural(p['waiting'], 'client')} waiting for a server connection "
                f"(cl_waiting), oldest {secs(p['wait_s'])} (maxwait"
                + (f"; query_wait_timeout {qwt} s drops them" if qwt else "") + f"), "
                f"{p['busy']} of {p['pool_size']} server connections busy (sv_active)")
            fixes.append(_pool_advice(p["pool_size"], p["advice"]))
        else:
            queued = f"{p['waiting']} queued briefly" if p["waiting"] else "none waiting"
            fine.append(f"{name}: {p['servers']} of {p['pool_size']} server connections open "
                        f"({p['busy']} busy), {p['clients']} clients, {queued}")
    if problems:
        return "; ".join(problems), "; ".join(dict.fromkeys(fixes))
    return "; ".join(fine) + " (pool_mode transaction)", ""


def _pool_advice(pool_size: int, a: Facts) -> str:
    first = ""
    if a["held"]:
        first = ("first end what holds the server connections (see pg_long_statements and "
                 "pg_idle_in_transaction); if clients still wait, ")
    if a["no_room"]:
        return (first + f"do not raise the pool: PostgreSQL has no room "
                f"({a.get('pg_connections')} of {a.get('pg_usable')} usable connections in "
                "use); make transactions shorter or give PostgreSQL more capacity")
    advice = (first + f"raise default_pool_size from {pool_size} to {a['raise_to']} "
              "(PGBOUNCER_DEFAULT_POOL_SIZE)")
    if a["room"] is not None:
        advice += f", PostgreSQL has room for {a['room']} more connections"
    cap, current = a["max_db_connections"], a["current_connections"]
    if cap and current + a["step"] > cap:
        advice += f"; max_db_connections {cap} binds too: raise it to {current + a['step']}"
    return advice + "; then ops/pgbouncer-reload"


def pgbouncer_traffic(outcome: str, f: Facts) -> tuple[str, str]:
    if outcome == "one_read":
        return "only one SHOW STATS read so far: rates need two", ""
    if outcome == "no_comparable_reads":
        return "no comparable SHOW STATS reads (PgBouncer restarted?)", ""
    parts = []
    for t in f["rates"]:
        if t["avg_xact_ms"] is None:
            parts.append(f"{t['database']}: no transactions in {secs(t['interval_s'])}")
            continue
        parts.append(f"{t['database']}: {t['xact_per_s']:.0f} transactions/s, "
                     f"{t['query_per_s']:.0f} queries/s, avg transaction "
                     f"{ms(t['avg_xact_ms'])}, avg wait {ms(t['avg_wait_ms'] or 0.0)} per "
                     f"transaction (over {secs(t['interval_s'])})")
    return ("; ".join(parts),
            f"clients of {', '.join(f['slow'])} wait more than {f['wait_warn_ms']:g} ms for "
            "a server connection: see pgbouncer_pools")


def pgbouncer_clients(outcome: str, f: Facts) -> tuple[str, str]:
    described = ", ".join(
        f"{name} {sum(states.values())}"
        + (f" ({states['waiting']} waiting)" if states.get("waiting") else "")
        for name, states in sorted(f["clients"].items(), key=lambda kv: -sum(kv[1].values())))
    return (f"{f['total']} of max_client_conn {f['max_client_conn']}"
            + (f": {described}" if described else ""),
            "raise max_client_conn (PGBOUNCER_MAX_CLIENT_CONN; about 2 kB each, mind "
            "`ulimit -n`) and ops/pgbouncer-reload, or find who holds the connections "
            "(SHOW CLIENTS on the console)")


# --- PostgreSQL -------------------------------------------------------------------------


def pg_connections(outcome: str, f: Facts) -> tuple[str, str]:
    return (f"{f['used']} of {f['usable']} usable connections in use (max_connections "
            f"{f['max_connections']} − {f['reserved']} reserved), PostgreSQL "
            f"{f['server_version']}",
            "see pg_sessions for who holds them; lower PgBouncer's pool sizes or raise "
            "max_connections (needs a PostgreSQL restart: PAUSE PgBouncer around it)")


def pg_sessions(outcome: str, f: Facts) -> tuple[str, str]:
    by_app: dict[str, list[str]] = {}
    for row in f["sessions"]:
        by_app.setdefault(row["application_name"], []).append(
            f"{row['sessions']} {row['state']}")
    apps = "; ".join(f"{app} {', '.join(states)}" for app, states in sorted(by_app.items()))
    text = plural(f["total"], "other session") + (f": {apps}" if apps else "")
    if f["longest_s"]:
        text += f"; longest running statement {secs(f['longest_s'])}"
    return text, ""


def pg_idle_in_transaction(outcome: str, f: Facts) -> tuple[str, str]:
    threshold = secs(f["threshold_s"])
    if outcome == "ok":
        return f"no session idle in a transaction for more than {threshold}", ""
    rows = f["sessions"]
    who = ", ".join(
        f"pid {r['pid']} ({r['usename']}, application {r['application_name']!r}, "
        f"idle {secs(r['idle_s'])}, last statement {_short(r['last_query'])!r})"
        for r in rows[:NAMED_ROWS])
    guard = (f"PostgreSQL ends them after idle_in_transaction_session_timeout "
             f"{secs(f['role_timeout_ms'] / 1000)}" if f["role_timeout_ms"] else
             "nothing ends them: set DB_IDLE_IN_TRANSACTION_TIMEOUT_MS (applied to the role "
             "by `video-tasks migrate`)")
    return (f"{plural(f['total'], 'session')} idle in a transaction for more than {threshold}, "
            f"longest {secs(rows[0]['idle_s'])}: {who}",
            "each pins a server connection and its locks; find the code that begins a "
            "transaction without committing (the last statement names it); end one now with "
            f"SELECT pg_terminate_backend({rows[0]['pid']}); {guard}")


def pg_long_statements(outcome: str, f: Facts) -> tuple[str, str]:
    limit = (f"the statement timeout {secs(f['limit_s'])}" if f["has_timeout"] else
             f"{secs(f['limit_s'])} (the role has no statement_timeout)")
    if outcome in ("ok", "no_timeout"):
        return (f"no statement running longer than {limit}",
                "set DB_STATEMENT_TIMEOUT_MS (applied to the role by `video-tasks "
                "migrate`): a runaway statement would hold a server connection forever")
    rows = f["statements"]
    who = ", ".join(
        f"pid {r['pid']} ({r['usename']}, application {r['application_name']!r}, "
        f"{secs(r['running_s'])}"
        + (f", waiting on {r['wait_event_type']}/{r['wait_event']}" if r["wait_event"] else "")
        + f": {_short(r['query'])!r})" for r in rows[:NAMED_ROWS])
    return (f"{plural(f['total'], 'statement')} running longer than {limit}: {who}",
            "each holds a server connection; cancel with SELECT pg_cancel_backend("
            f"{rows[0]['pid']}) (pg_terminate_backend if that does not help); a role that "
            "runs this long has no statement_timeout: give it one")


# --- configuration arithmetic ------------------------------------------------------------


def config_client_conn(outcome: str, f: Facts) -> tuple[str, str]:
    now, limit, planned = f["now"], f["max_client_conn"], f["planned"]
    pods, poolers = f.get("api_pods", 1), f.get("pooler_instances", 1)
    api = (f"DOCTOR_EXPECTED_API_PODS {pods} × API_PROCESSES {f['api_processes']}"
           if pods > 1 else f"API_PROCESSES {f['api_processes']}")
    spread = (f"{f['clients']} over DOCTOR_POOLER_INSTANCES {poolers} PgBouncers = "
              f"{planned} each" if poolers > 1 else f"{planned}")
    summary = (f"({api} + DOCTOR_EXPECTED_WORKERS "
               f"{f['expected_workers']}) × APP_POOL_MAX {f['app_pool_max']} = {spread} "
               f"client connections at most, of max_client_conn {limit} (now: "
               f"{API_APP} {now[API_APP]}, {WORKER_APP} {now[WORKER_APP]})")
    if outcome == "over_limit":
        return (summary,
                f"PgBouncer refuses connections beyond {limit} ('no more connections "
                f"allowed'): raise max_client_conn to at least {planned} (better "
                f"{f['suggest']}; PGBOUNCER_MAX_CLIENT_CONN, then ops/pgbouncer-reload)"
                + (f" or lower APP_POOL_MAX to {f['fit']}" if f["fit"] >= 1 else ""))
    if outcome == "more_processes":
        settings = {API_APP: "API_PROCESSES", WORKER_APP: "DOCTOR_EXPECTED_WORKERS"}
        extra = [f"{app} holds {now[app]} client connections, more than {settings[app]} × "
                 f"APP_POOL_MAX = {most}" for app, most in f["over"].items()]
        return (summary + "; " + "; ".join(extra),
                "more processes run than API_PROCESSES / DOCTOR_EXPECTED_WORKERS say: set "
                "them to what runs, so that this arithmetic holds")
    return (summary,
            f"little headroom: raise max_client_conn to {f['suggest']} "
            "(PGBOUNCER_MAX_CLIENT_CONN, then ops/pgbouncer-reload)")


def config_server_conn(outcome: str, f: Facts) -> tuple[str, str]:
    terms = []
    for t in f["terms"]:
        term = (f"{t['database']}: (pool_size {t['pool_size']} + reserve {t['reserve']}) × "
                f"{t['users']} users")
        if t["capped"]:
            term += f", capped by max_db_connections {t['max_db_connections']}"
        terms.append(f"{term} = {t['most']}")
    poolers = f.get("pooler_instances", 1)
    each = (f"DOCTOR_POOLER_INSTANCES {poolers} × (" if poolers > 1 else "(")
    summary = (f"PgBouncer may open {f['pgbouncer_budget']} server connections "
               f"{each}{'; '.join(terms) or 'no pool'}) + {f['other_sessions']} other "
               "sessions now "
               f"= {f['total']} of {f['usable']} usable (max_connections "
               f"{f['max_connections']} − {f['reserved']} reserved)")
    if outcome == "over_limit":
        return (summary,
                "under load PostgreSQL refuses connections ('too many clients'): lower "
                "default_pool_size or set max_db_connections so the total stays under "
                f"{f['usable']}, or raise max_connections (PostgreSQL restart)")
    return (summary, "little headroom for migrations, the doctor and psql: lower the pool "
                     "sizes or raise max_connections")


def config_timeouts(outcome: str, f: Facts) -> tuple[str, str]:
    statement_ms = f["statement_timeout_ms"]
    statement = secs(statement_ms / 1000) if statement_ms else "off"
    qwt = f.get("query_wait_timeout_s")
    problems = {
        "no_statement_timeout":
            "the role has no statement_timeout: a runaway statement holds a server "
            "connection forever; set DB_STATEMENT_TIMEOUT_MS and run `video-tasks "
            "migrate`",
        "no_query_wait_timeout":
            "query_wait_timeout is 0: clients queue in PgBouncer forever when the pool is "
            "saturated; set it (e.g. 10 s) so callers fail fast",
        "pool_timeout_over_query_wait":
            f"POOL_TIMEOUT_S {f['pool_timeout_s']:g} s is longer than PgBouncer's "
            f"query_wait_timeout {qwt} s: PgBouncer drops the queued client first; set "
            f"POOL_TIMEOUT_S below {qwt} s",
        "query_timeout_not_above_statement_timeout":
            f"PgBouncer's query_timeout {f.get('query_timeout_s')} s is not above "
            f"statement_timeout {statement}: PgBouncer disconnects before PostgreSQL "
            "cancels; make query_timeout slightly longer",
        "client_idle_below_pool_max_idle":
            f"client_idle_timeout {f.get('client_idle_timeout_s')} s is shorter than the app "
            f"pool's max_idle {f.get('app_pool_max_idle_s', 0):g} s: PgBouncer closes "
            "connections the app still counts as idle; raise it or set 0",
        "no_idle_in_transaction_guard":
            "neither idle_transaction_timeout (PgBouncer) nor "
            "idle_in_transaction_session_timeout (role) is set: a client that forgets to "
            "commit pins a server connection forever",
        "pool_timeout_not_below_lease":
            f"POOL_TIMEOUT_S {f['pool_timeout_s']:g} s is not below LEASE_S "
            f"{f['lease_s']:g} s: a worker waiting for a connection loses its lease",
    }
    if f["problems"]:
        return "; ".join(problems[p] for p in f["problems"]), "fix the values named above"
    facts = [f"POOL_TIMEOUT_S {f['pool_timeout_s']:g} s"]
    if statement_ms is not None:
        facts.append(f"statement_timeout {statement}")
    if qwt is not None:
        idle = f["idle_transaction_timeout_s"]
        facts.append(f"query_wait_timeout {qwt} s" if qwt else "query_wait_timeout off")
        facts.append(f"idle_transaction_timeout {idle} s" if idle
                     else "idle_transaction_timeout off")
    return "; ".join(facts) + ": consistent", ""


# --- the queue --------------------------------------------------------------------------


def queue_last_hour(outcome: str, f: Facts) -> tuple[str, str]:
    if outcome == "none":
        return "no task created in the last hour", ""
    text = ", ".join(f"{count} {status}" for status, count in f["counts"].items())
    return f"created in the last hour: {text}", ""


def queue_running_too_long(outcome: str, f: Facts) -> tuple[str, str]:
    after = secs(f["after_s"])
    if outcome == "ok":
        return f"no task still {RUNNING_TEXT} {after} after creation", ""
    who = ", ".join(f"{r['task_id']} ({r['status']}, part {r['current_part']}/"
                    f"{r['total_parts']}, attempt {r['attempts']}, "
                    f"{secs(r['seconds_since_creation'])} old, worker {r['worker_id']})"
                    for r in f["tasks"][:NAMED_ROWS])
    return (f"{plural(f['total'], 'task')} still {RUNNING_TEXT} more than {after} after "
            f"creation: {who}",
            "read that worker's log for these task ids (slow provider or storage?); if the "
            "worker is gone its lease expires and the task is retried (see "
            "queue_expired_leases)")


def queue_expired_leases(outcome: str, f: Facts) -> tuple[str, str]:
    if outcome == "ok":
        return "no running task with an expired lease", ""
    who = ", ".join(f"{r['task_id']} ({r['status']}, attempt {r['attempts']}, worker "
                    f"{r['worker_id']}, expired {secs(r['overdue_s'])} ago)"
                    for r in f["tasks"][:NAMED_ROWS])
    summary = (f"{plural(f['total'], 'running task')} whose worker stopped renewing the lease "
               f"(stuck past the lease): {who}")
    if outcome == "not_rescued":
        return (summary,
                f"no worker rescued them for {secs(f['overdue_s'])}: no worker is running; "
                "start one (`video-tasks worker`): its rescuer puts them back to "
                f"pending, or failed after MAX_ATTEMPTS {f['max_attempts']}")
    return (summary, "a running worker's rescuer puts them back within seconds; if this "
                     "stays, no worker is running")


def queue_backlog(outcome: str, f: Facts) -> tuple[str, str]:
    if outcome == "table_unreadable":
        return (f"the tasks table could not be read: {f['reason']}",
                "if the table is missing, run `video-tasks migrate`; otherwise check "
                "the role's privileges on video_generation_tasks")
    summary = (f"{f['pending']} pending ({f['runnable']} runnable"
               + (f", oldest waiting {secs(f['oldest_pending_s'])}" if f["runnable"] else "")
               + f"); {f['running']} running; {f['completed_10m']} completed and "
               f"{f['failed_10m']} failed in the last 10 min")
    if f["worker_connections"] is not None:
        summary += f"; {plural(f['worker_connections'], 'worker client connection')}"
    if outcome == "no_worker":
        return (summary + ": no worker is connected",
                "start workers (`video-tasks worker`); tasks wait until one runs")
    if outcome in ("behind", "stalled"):
        slots = f["worker_concurrency"] * f["expected_workers"]
        return (summary + f"; oldest over {secs(f['lag_warn_s'])}",
                f"workers do not keep up: {f['running']} running of WORKER_CONCURRENCY "
                f"{f['worker_concurrency']} × {f['expected_workers']} workers = {slots} "
                "slots; if they are full add workers or raise WORKER_CONCURRENCY, if not "
                "read the workers' logs (claims failing?)")
    return summary, ""


def queue_attempts(outcome: str, f: Facts) -> tuple[str, str]:
    most = f["max_attempts"]
    return (f"{plural(f['on_last_attempt'], 'task')} on the last of MAX_ATTEMPTS {most}; "
            f"{f['failed_out_of_attempts_1h']} failed after {most} attempts in the last hour",
            "the provider or storage fails again and again: read the workers' logs and the "
            "tasks' error_message (status failed)")


RENDERERS: dict[str, Callable[[str, Facts], tuple[str, str]]] = {
    "postgres": postgres,
    "pgbouncer": pgbouncer,
    "pgbouncer_console": pgbouncer_console,
    "pgbouncer_pools": pgbouncer_pools,
    "pgbouncer_traffic": pgbouncer_traffic,
    "pgbouncer_clients": pgbouncer_clients,
    "pg_connections": pg_connections,
    "pg_sessions": pg_sessions,
    "pg_idle_in_transaction": pg_idle_in_transaction,
    "pg_long_statements": pg_long_statements,
    "config_client_conn": config_client_conn,
    "config_server_conn": config_server_conn,
    "config_timeouts": config_timeouts,
    "queue_last_hour": queue_last_hour,
    "queue_running_too_long": queue_running_too_long,
    "queue_expired_leases": queue_expired_leases,
    "queue_backlog": queue_backlog,
    "queue_attempts": queue_attempts,
}
