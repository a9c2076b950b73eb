"""The doctor's checks: from one sample to `name: LEVEL — what, numbers — what to do`.

Each check reads a `probe.Sample` and returns one `Check`. A check whose data could not
be read says UNKNOWN and why; the part that failed (postgres, pgbouncer, console) carries
the level. The runbook (ops/README.md) explains every check by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from psycopg.conninfo import conninfo_to_dict

from service.doctor import pgbouncer
from service.doctor.probe import Failure, PgState, Ping, QueueState, Sample
from service.settings import Settings
from service.tasks import Status

API_APP = "video-tasks-api"
WORKER_APP = "video-tasks-worker"
# A SELECT 1 slower than this means an overloaded host or network.
SLOW_PING_MS = 100.0
# Shares of a limit that make a warning, and a critical.
WARN_SHARE = 0.8
CRITICAL_SHARE = 0.95
# psycopg's max_idle in db.create_pool: PgBouncer must not close idle clients sooner.
APP_POOL_MAX_IDLE_S = 60
# The worker's rescuer runs every 5 s; an expired lease older than this was missed.
RESCUE_GRACE_S = 15.0
# A backlog this many times doctor_queue_lag_warn_s with nothing completed is critical.
BACKLOG_CRITICAL_FACTOR = 10


class Level(StrEnum):
    OK = "OK"
    WARNING = "WARNING"
    CRITICAL = "CRITICAL"
    # The data could not be read; the check of the unreachable part carries the level.
    UNKNOWN = "UNKNOWN"


SEVERITY = {Level.OK: 0, Level.UNKNOWN: 0, Level.WARNING: 1, Level.CRITICAL: 2}


@dataclass
class Check:
    name: str
    section: str
    level: Level
    summary: str
    fix: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def severity(self) -> int:
        return SEVERITY[self.level]

    def line(self) -> str:
        text = f"{self.name}: {self.level.value}"
        if self.summary:
            text += f" — {self.summary}"
        if self.fix and self.level is not Level.OK:
            text += f" — {self.fix}"
        return text

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "section": self.section, "level": self.level.value,
                "summary": self.summary, "fix": self.fix, "data": self.data}


@dataclass
class Context:
    settings: Settings
    sample: Sample

    @property
    def console(self) -> pgbouncer.Console | None:
        c = self.sample.console
        return c if isinstance(c, pgbouncer.Console) else None

    @property
    def reads(self) -> list[pgbouncer.Console]:
        """POOLS/STATS reads in time order (one or two)."""
        reads = [r for r in (self.console, self.sample.console_other) if r is not None]
        return sorted(reads, key=lambda r: r.taken_at)

    @property
    def pg(self) -> PgState | None:
        p = self.sample.postgres
        return p if isinstance(p, PgState) else None

    @property
    def queue(self) -> QueueState | None:
        q = self.sample.queue
        return q if isinstance(q, QueueState) else None

    def reason(self, part: str) -> str:
        """Why a part of the sample could not be read."""
        value = getattr(self.sample, part)
        return value.reason if isinstance(value, Failure) else "?"

    def pg_room(self) -> int | None:
        """Connections PostgreSQL can still accept from ordinary roles."""
        if self.pg is None:
            return None
        o = self.pg.overview
        return usable_connections(o) - int(o["connections"])


def usable_connections(overview: dict[str, Any]) -> int:
    return (int(overview["max_connections"]) - int(overview["superuser_reserved"])
            - int(overview["reserved"]))


def evaluate(settings: Settings, sample: Sample) -> list[Check]:
    ctx = Context(settings, sample)
    results = []
    for section, name, check in CHECKS:
        try:
            result = check(ctx)
        except Exception as exc:  # a doctor must report, never crash
            result = Check(name, section, Level.UNKNOWN,
                           f"the check itself failed: {type(exc).__name__}: {exc}")
        result.name, result.section = name, section
        results.append(result)
    return results


def _check(level: Level, summary: str, fix: str = "", **data: Any) -> Check:
    # name and section are filled in by evaluate().
    return Check("", "", level, summary, fix, data)


def _unknown(why: str) -> Check:
    return _check(Level.UNKNOWN, why)


def _worst(*levels: Level) -> Level:
    return max(levels, key=lambda level: SEVERITY[level], default=Level.OK)


def _share_level(used: float, limit: float) -> Level:
    if limit <= 0:
        return Level.OK
    if used >= limit * CRITICAL_SHARE:
        return Level.CRITICAL
    if used >= limit * WARN_SHARE:
        return Level.WARNING
    return Level.OK


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


def _address(url: str) -> str:
    try:
        info = conninfo_to_dict(url)
    except Exception:
        return "?"
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}"


def _ping_text(ping: Ping, what: str) -> str:
    text = f"{what} in {ms(ping.roundtrip_ms)}"
    if ping.connect_ms is not None:
        text += f" (connect {ms(ping.connect_ms)})"
    return text


# --- connectivity ---------------------------------------------------------------------


def check_postgres(ctx: Context) -> Check:
    direct, address = ctx.sample.direct, _address(ctx.settings.database_direct_url)
    if isinstance(direct, Failure):
        if isinstance(ctx.sample.bouncer, Ping):
            return _check(Level.WARNING,
                          f"not reachable directly at {address} ({direct.reason}); it answers "
                          f"through PgBouncer, so the doctor read PostgreSQL that way",
                          "check DATABASE_DIRECT_URL and that this host may reach it: with "
                          "PgBouncer saturated, reads through it queue like the app's")
        return _check(Level.CRITICAL, f"unreachable at {address}: {direct.reason}",
                      "is PostgreSQL running (`python -m ops.stack status`, its log)? The "
                      "API answers 503 and workers retry until it is back")
    level = Level.WARNING if direct.roundtrip_ms > SLOW_PING_MS else Level.OK
    return _check(level, _ping_text(direct, f"direct SELECT 1 at {address}"),
                  "the database host is overloaded or far away: check its CPU and I/O",
                  roundtrip_ms=direct.roundtrip_ms, connect_ms=direct.connect_ms)


def check_pgbouncer(ctx: Context) -> Check:
    ping, address = ctx.sample.bouncer, _address(ctx.settings.database_url)
    paused = _paused(ctx)
    if isinstance(ping, Failure) and paused:
        return _check(Level.CRITICAL, f"{ping.reason} at {address}: {' and '.join(paused)} "
                                      f"{'is' if len(paused) == 1 else 'are'} PAUSED, so new "
                                      "clients and queries wait",
                      f"when the maintenance is over: ops/pgbouncer-resume {paused[0]}"
                      if len(paused) == 1 else
                      "when the maintenance is over: ops/pgbouncer-resume")
    if isinstance(ping, Failure):
        if ping.connected:
            return _check(Level.WARNING, f"{ping.reason} at {address}",
                          "every server connection is busy: see pgbouncer_pools")
        return _check(Level.CRITICAL, f"unreachable at {address}: {ping.reason}",
                      "is PgBouncer running (`python -m ops.stack status`, its log)? The "
                      "API answers 503 until it is back")
    level = Level.WARNING if ping.roundtrip_ms > SLOW_PING_MS else Level.OK
    return _check(level, _ping_text(ping, f"SELECT 1 through PgBouncer at {address}"),
                  "slow through PgBouncer but not direct: clients queue for server "
                  "connections (see pgbouncer_pools) or PgBouncer's CPU is saturated",
                  roundtrip_ms=ping.roundtrip_ms, connect_ms=ping.connect_ms)


def _paused(ctx: Context) -> list[str]:
    """The app databases PgBouncer holds paused."""
    if ctx.console is None:
        return []
    return [d["name"] for d in ctx.console.databases
            if d.get("paused") and d["name"] != pgbouncer.CONSOLE_DB]


def check_console(ctx: Context) -> Check:
    console = ctx.sample.console
    if isinstance(console, Failure):
        bouncer = ctx.sample.bouncer
        if isinstance(bouncer, Failure) and not bouncer.connected:
            return _check(Level.WARNING, f"admin console unreachable: {console.reason}",
                          "PgBouncer itself is unreachable: see pgbouncer")
        return _check(Level.WARNING, f"admin console unreachable: {console.reason}",
                      "PGBOUNCER_ADMIN_URL must name a user in PgBouncer's admin_users or "
                      "stats_users and the virtual database 'pgbouncer'")
    return _check(Level.OK, f"{console.version} answers SHOW commands",
                  version=console.version)


# --- PgBouncer ------------------------------------------------------------------------


def check_pools(ctx: Context) -> Check:
    console = ctx.console
    if console is None:
        return _unknown("PgBouncer's console is unreachable")
    pools = console.app_pools()
    if not pools:
        return _check(Level.OK, "no pool yet (no client has connected)")
    qwt = console.setting("query_wait_timeout")
    # Clients queue for a moment whenever every server is busy or one is logging in: that
    # is pooling working. Saturated: still queued at both reads, or queued too long.
    brief_s = ctx.settings.doctor_wait_warn_ms / 1000
    seen: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for read in ctx.reads:
        for p in read.app_pools():
            seen.setdefault((p["database"], p["user"]), []).append(
                (int(p["cl_waiting"]), pgbouncer.maxwait_s(p)))
    # The auth user's "clients" are PgBouncer's own password lookups during logins.
    auth_user = console.config.get("auth_user")
    levels, problems, fixes, fine = [], [], [], []
    for db_name in sorted({p["database"] for p in pools}):
        db = console.database(db_name) or {}
        if db.get("paused"):
            levels.append(Level.CRITICAL)
            problems.append(f"{db_name} is PAUSED: its clients queue until RESUME")
            fixes.append(f"when the maintenance is over: ops/pgbouncer-resume {db_name}")
        if db.get("disabled"):
            levels.append(Level.CRITICAL)
            problems.append(f"{db_name} is DISABLED: new clients are refused")
            fixes.append(f"ENABLE {db_name}; on PgBouncer's console")
    for p in pools:
        name = f"{p['database']}/{p['user']}"
        db = console.database(p["database"]) or {}
        pool_size = int(db.get("pool_size") or console.setting("default_pool_size"))
        busy = int(p["sv_active"])
        servers = pgbouncer.server_connections(p)
        reads = seen.get((p["database"], p["user"]), [(0, 0.0)])
        waiting, wait_s = max(r[0] for r in reads), max(r[1] for r in reads)
        saturated = p["user"] != auth_user and waiting > 0 and (
            wait_s >= brief_s or (len(reads) > 1 and all(r[0] for r in reads)))
        if p.get("pool_mode") not in (None, "transaction"):
            levels.append(Level.WARNING)
            problems.append(f"{name} runs in pool_mode {p['pool_mode']}")
            fixes.append("set pool_mode = transaction (the app is written for it) and reload "
                         "PgBouncer (ops/pgbouncer-reload)")
        if saturated:
            critical = qwt > 0 and wait_s >= qwt / 2
            levels.append(Level.CRITICAL if critical else Level.WARNING)
            if db.get("paused"):
                problems.append(f"{name}: {plural(waiting, 'client')} held by the PAUSE")
                continue
            problems.append(
                f"{name}: {plural(waiting, 'client')} waiting for a server connection "
                f"(cl_waiting), oldest {secs(wait_s)} (maxwait"
                + (f"; query_wait_timeout {qwt} s drops them" if qwt else "") + f"), "
                f"{busy} of {pool_size} server connections busy (sv_active)")
            fixes.append(_pool_advice(ctx, console, p, pool_size, waiting))
        else:
            queued = f"{waiting} queued briefly" if waiting else "none waiting"
            fine.append(f"{name}: {servers} of {pool_size} server connections open "
                        f"({busy} busy), {int(p['cl_active'])} clients, {queued}")
    if problems:
        return _check(_worst(*levels), "; ".join(problems), "; ".join(dict.fromkeys(fixes)),
                      pools=pools)
    return _check(Level.OK, "; ".join(fine) + " (pool_mode transaction)", pools=pools)


def _pool_advice(ctx: Context, console: pgbouncer.Console, pool: dict[str, Any],
                 pool_size: int, waiting: int) -> str:
    """Raise the pool by what PostgreSQL can take, unless something holds connections."""
    first = ""
    if ctx.pg and (ctx.pg.long_statements or ctx.pg.idle_in_transaction):
        first = ("first end what holds the server connections (see pg_long_statements and "
                 "pg_idle_in_transaction); if clients still wait, ")
    pairs = max(1, sum(1 for p in console.app_pools() if p["database"] == pool["database"]))
    step = max(waiting, math.ceil(pool_size / 2), 2)
    room = ctx.pg_room()
    if room is not None:
        if room // pairs < 1:
            o = ctx.pg.overview if ctx.pg else {}
            return (first + f"do not raise the pool: PostgreSQL has no room "
                    f"({o.get('connections')} of {usable_connections(o)} usable connections "
                    f"in use); make transactions shorter or give PostgreSQL more capacity")
        step = min(step, room // pairs)
    advice = (first + f"raise default_pool_size from {pool_size} to {pool_size + step} "
              f"(PGBOUNCER_DEFAULT_POOL_SIZE)")
    if room is not None:
        advice += f", PostgreSQL has room for {room} more connections"
    db = console.database(pool["database"]) or {}
    cap, current = int(db.get("max_connections") or 0), int(db.get("current_connections") or 0)
    if cap and current + step > cap:
        advice += f"; max_db_connections {cap} binds too: raise it to {current + step}"
    return advice + "; then ops/pgbouncer-reload"


def check_traffic(ctx: Context) -> Check:
    reads = ctx.reads
    if ctx.console is None:
        return _unknown("PgBouncer's console is unreachable")
    if len(reads) < 2:
        return _unknown("only one SHOW STATS read so far: rates need two")
    rates = pgbouncer.traffic(reads[0], reads[-1])
    if not rates:
        return _unknown("no comparable SHOW STATS reads (PgBouncer restarted?)")
    parts, slow = [], []
    for t in rates:
        if t.avg_xact_ms is None:
            parts.append(f"{t.database}: no transactions in {secs(t.interval_s)}")
            continue
        wait = t.avg_wait_ms or 0.0
        parts.append(f"{t.database}: {t.xact_per_s:.0f} transactions/s, {t.query_per_s:.0f} "
                     f"queries/s, avg transaction {ms(t.avg_xact_ms)}, avg wait {ms(wait)} "
                     f"per transaction (over {secs(t.interval_s)})")
        if wait > ctx.settings.doctor_wait_warn_ms:
            slow.append(t.database)
    data = {"rates": [t.__dict__ for t in rates]}
    if slow:
        return _check(Level.WARNING, "; ".join(parts),
                      f"clients of {', '.join(slow)} wait more than "
                      f"{ctx.settings.doctor_wait_warn_ms:g} ms for a server connection: "
                      "see pgbouncer_pools", **data)
    return _check(Level.OK, "; ".join(parts), **data)


def check_clients(ctx: Context) -> Check:
    console = ctx.console
    if console is None:
        return _unknown("PgBouncer's console is unreachable")
    apps = pgbouncer.clients_by_application(console.clients)
    total = sum(sum(states.values()) for states in apps.values())
    limit = console.setting("max_client_conn")
    described = ", ".join(
        f"{name} {sum(states.values())}"
        + (f" ({states['waiting']} waiting)" if states.get("waiting") else "")
        for name, states in sorted(apps.items(), key=lambda kv: -sum(kv[1].values())))
    summary = f"{total} of max_client_conn {limit}" + (f": {described}" if described else "")
    level = _share_level(total, limit)
    return _check(level, summary,
                  "raise max_client_conn (PGBOUNCER_MAX_CLIENT_CONN; about 2 kB each, mind "
                  "`ulimit -n`) and ops/pgbouncer-reload, or find who holds the connections "
                  "(SHOW CLIENTS on the console)", clients=apps, max_client_conn=limit)


# --- PostgreSQL -----------------------------------------------------------------------


def check_pg_connections(ctx: Context) -> Check:
    if ctx.pg is None:
        return _unknown(f"PostgreSQL could not be read: {ctx.reason('postgres')}")
    o = ctx.pg.overview
    usable, used = usable_connections(o), int(o["connections"])
    reserved = int(o["superuser_reserved"]) + int(o["reserved"])
    summary = (f"{used} of {usable} usable connections in use (max_connections "
               f"{o['max_connections']} − {reserved} reserved), PostgreSQL "
               f"{o['server_version']}")
    return _check(_share_level(used, usable), summary,
                  "see pg_sessions for who holds them; lower PgBouncer's pool sizes or raise "
                  "max_connections (needs a PostgreSQL restart: PAUSE PgBouncer around it)",
                  used=used, usable=usable)


def check_pg_sessions(ctx: Context) -> Check:
    if ctx.pg is None:
        return _unknown(f"PostgreSQL could not be read: {ctx.reason('postgres')}")
    by_app: dict[str, list[str]] = {}
    longest = 0.0
    for row in ctx.pg.sessions:
        by_app.setdefault(row["application_name"], []).append(f"{row['sessions']} {row['state']}")
        longest = max(longest, float(row["longest_active_s"]))
    total = sum(int(row["sessions"]) for row in ctx.pg.sessions)
    apps = "; ".join(f"{app} {', '.join(states)}" for app, states in sorted(by_app.items()))
    summary = f"{plural(total, 'other session')}" + (f": {apps}" if apps else "")
    if longest:
        summary += f"; longest running statement {secs(longest)}"
    return _check(Level.OK, summary, sessions=ctx.pg.sessions)


def check_idle_in_transaction(ctx: Context) -> Check:
    if ctx.pg is None:
        return _unknown(f"PostgreSQL could not be read: {ctx.reason('postgres')}")
    rows, threshold = ctx.pg.idle_in_transaction, ctx.settings.doctor_idle_in_transaction_s
    if not rows:
        return _check(Level.OK, f"no session idle in a transaction for more than "
                                f"{secs(threshold)}")
    total = int(rows[0]["total"])
    who = ", ".join(
        f"pid {r['pid']} ({r['usename']}, application {r['application_name']!r}, "
        f"idle {secs(r['idle_s'])}, last statement {_short(r['last_query'])!r})"
        for r in rows[:3])
    timeout_ms = int(ctx.pg.overview.get("idle_in_transaction_timeout_ms") or 0)
    guard = (f"PostgreSQL ends them after idle_in_transaction_session_timeout "
             f"{secs(timeout_ms / 1000)}" if timeout_ms else
             "nothing ends them: set DB_IDLE_IN_TRANSACTION_TIMEOUT_MS (applied to the role "
             "by `python -m service migrate`)")
    return _check(
        Level.WARNING,
        f"{plural(total, 'session')} idle in a transaction for more than {secs(threshold)}, "
        f"longest {secs(rows[0]['idle_s'])}: {who}",
        f"each pins a server connection and its locks; find the code that begins a "
        f"transaction without committing (the last statement names it); end one now with "
        f"SELECT pg_terminate_backend({rows[0]['pid']}); {guard}",
        sessions=rows)


def check_long_statements(ctx: Context) -> Check:
    if ctx.pg is None:
        return _unknown(f"PostgreSQL could not be read: {ctx.reason('postgres')}")
    rows, limit = ctx.pg.long_statements, ctx.pg.long_after_s
    has_timeout = bool(ctx.pg.overview.get("statement_timeout_ms"))
    limit_text = (f"the statement timeout {secs(limit)}" if has_timeout else
                  f"{secs(limit)} (the role has no statement_timeout)")
    if not rows:
        level = Level.OK if has_timeout else Level.WARNING
        return _check(level, f"no statement running longer than {limit_text}",
                      "set DB_STATEMENT_TIMEOUT_MS (applied to the role by `python -m service "
                      "migrate`): a runaway statement would hold a server connection forever")
    total = int(rows[0]["total"])
    who = ", ".join(
        f"pid {r['pid']} ({r['usename']}, application {r['application_name']!r}, "
        f"{secs(r['running_s'])}"
        + (f", waiting on {r['wait_event_type']}/{r['wait_event']}" if r["wait_event"] else "")
        + f": {_short(r['query'])!r})" for r in rows[:3])
    return _check(Level.WARNING,
                  f"{plural(total, 'statement')} running longer than {limit_text}: {who}",
                  f"each holds a server connection; cancel with SELECT pg_cancel_backend("
                  f"{rows[0]['pid']}) (pg_terminate_backend if that does not help); a role "
                  f"that runs this long has no statement_timeout: give it one", statements=rows)


def _short(query: str | None, limit: int = 60) -> str:
    text = " ".join((query or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- configuration arithmetic ---------------------------------------------------------


def check_client_budget(ctx: Context) -> Check:
    console, s = ctx.console, ctx.settings
    if console is None:
        return _unknown("PgBouncer's console is unreachable: max_client_conn unknown")
    limit = console.setting("max_client_conn")
    processes = s.api_processes + s.doctor_expected_workers
    planned = processes * s.app_pool_max
    apps = pgbouncer.clients_by_application(console.clients)
    now = {app: sum(apps.get(app, {}).values()) for app in (API_APP, WORKER_APP)}
    summary = (f"(API_PROCESSES {s.api_processes} + DOCTOR_EXPECTED_WORKERS "
               f"{s.doctor_expected_workers}) × APP_POOL_MAX {s.app_pool_max} = {planned} "
               f"client connections at most, of max_client_conn {limit} (now: "
               f"{API_APP} {now[API_APP]}, {WORKER_APP} {now[WORKER_APP]})")
    data = {"planned": planned, "max_client_conn": limit, "now": now}
    if planned > limit:
        fit = limit // processes
        return _check(Level.CRITICAL, summary,
                      f"PgBouncer refuses connections beyond {limit} ('no more connections "
                      f"allowed'): raise max_client_conn to at least {planned} (better "
                      f"{math.ceil(planned * 1.25)}; PGBOUNCER_MAX_CLIENT_CONN, then "
                      f"ops/pgbouncer-reload)"
                      + (f" or lower APP_POOL_MAX to {fit}" if fit >= 1 else ""), **data)
    extra = []
    if now[API_APP] > s.api_processes * s.app_pool_max:
        extra.append(f"{API_APP} holds {now[API_APP]} client connections, more than "
                     f"API_PROCESSES × APP_POOL_MAX = {s.api_processes * s.app_pool_max}")
    worker_max = s.doctor_expected_workers * s.app_pool_max
    if now[WORKER_APP] > worker_max:
        extra.append(f"{WORKER_APP} holds {now[WORKER_APP]} client connections, more than "
                     f"DOCTOR_EXPECTED_WORKERS × APP_POOL_MAX = {worker_max}")
    if extra:
        return _check(Level.WARNING, summary + "; " + "; ".join(extra),
                      "more processes run than API_PROCESSES / DOCTOR_EXPECTED_WORKERS say: "
                      "set them to what runs, so that this arithmetic holds", **data)
    level = _share_level(planned, limit)
    return _check(level, summary,
                  f"little headroom: raise max_client_conn to {math.ceil(planned * 1.25)} "
                  "(PGBOUNCER_MAX_CLIENT_CONN, then ops/pgbouncer-reload)", **data)


def check_server_budget(ctx: Context) -> Check:
    console, pg = ctx.console, ctx.pg
    if console is None or pg is None:
        return _unknown("needs both PgBouncer's console and PostgreSQL")
    terms, budget, servers = [], 0, 0
    for db_name in sorted({p["database"] for p in console.app_pools()}):
        db = console.database(db_name) or {}
        pairs = sum(1 for p in console.app_pools() if p["database"] == db_name)
        pool_size = int(db.get("pool_size") or console.setting("default_pool_size"))
        reserve = int(db.get("reserve_pool") or 0)
        cap = int(db.get("max_connections") or 0)
        most = (pool_size + reserve) * pairs
        term = f"{db_name}: (pool_size {pool_size} + reserve {reserve}) × {pairs} users"
        if cap and cap < most:
            most = cap
            term += f", capped by max_db_connections {cap}"
        terms.append(f"{term} = {most}")
        budget += most
        servers += sum(pgbouncer.server_connections(p) for p in console.app_pools()
                       if p["database"] == db_name)
    o = pg.overview
    usable = usable_connections(o)
    others = max(0, int(o["connections"]) - servers)
    total = budget + others
    summary = (f"PgBouncer may open {budget} server connections ({'; '.join(terms) or 'no pool'})"
               f" + {others} other sessions now = {total} of {usable} usable (max_connections "
               f"{o['max_connections']} − {int(o['superuser_reserved']) + int(o['reserved'])} "
               f"reserved)")
    data = {"pgbouncer_budget": budget, "other_sessions": others, "usable": usable}
    if total > usable:
        return _check(Level.CRITICAL, summary,
                      f"under load PostgreSQL refuses connections ('too many clients'): lower "
                      f"default_pool_size or set max_db_connections so the total stays under "
                      f"{usable}, or raise max_connections (PostgreSQL restart)", **data)
    return _check(Level.WARNING if total > usable * 0.9 else Level.OK, summary,
                  "little headroom for migrations, the doctor and psql: lower the pool sizes "
                  "or raise max_connections", **data)


def check_timeouts(ctx: Context) -> Check:
    console, pg, s = ctx.console, ctx.pg, ctx.settings
    if console is None and pg is None:
        return _unknown("needs PgBouncer's console or PostgreSQL")
    problems, facts = [], [f"POOL_TIMEOUT_S {s.pool_timeout_s:g} s"]
    statement_ms = int(pg.overview["statement_timeout_ms"] or 0) if pg else None
    if statement_ms is not None:
        facts.append(f"statement_timeout {secs(statement_ms / 1000) if statement_ms else 'off'}")
        if not statement_ms:
            problems.append("the role has no statement_timeout: a runaway statement holds a "
                            "server connection forever; set DB_STATEMENT_TIMEOUT_MS and run "
                            "`python -m service migrate`")
    if console is not None:
        qwt = console.setting("query_wait_timeout")
        query_timeout = console.setting("query_timeout")
        client_idle = console.setting("client_idle_timeout")
        idle_xact = console.setting("idle_transaction_timeout")
        facts.append(f"query_wait_timeout {qwt} s" if qwt else "query_wait_timeout off")
        facts.append(f"idle_transaction_timeout {idle_xact} s" if idle_xact
                     else "idle_transaction_timeout off")
        if not qwt:
            problems.append("query_wait_timeout is 0: clients queue in PgBouncer forever when "
                            "the pool is saturated; set it (e.g. 10 s) so callers fail fast")
        elif s.pool_timeout_s > qwt:
            problems.append(f"POOL_TIMEOUT_S {s.pool_timeout_s:g} s is longer than PgBouncer's "
                            f"query_wait_timeout {qwt} s: PgBouncer drops the queued client "
                            f"first; set POOL_TIMEOUT_S below {qwt} s")
        if query_timeout and statement_ms is not None and query_timeout * 1000 <= statement_ms:
            problems.append(f"PgBouncer's query_timeout {query_timeout} s is not above "
                            f"statement_timeout {secs(statement_ms / 1000)}: PgBouncer "
                            "disconnects before PostgreSQL cancels; make query_timeout "
                            "slightly longer")
        if 0 < client_idle < APP_POOL_MAX_IDLE_S:
            problems.append(f"client_idle_timeout {client_idle} s is shorter than the app "
                            f"pool's max_idle {APP_POOL_MAX_IDLE_S} s: PgBouncer closes "
                            "connections the app still counts as idle; raise it or set 0")
        if pg is not None and not idle_xact and not pg.overview.get(
                "idle_in_transaction_timeout_ms"):
            problems.append("neither idle_transaction_timeout (PgBouncer) nor "
                            "idle_in_transaction_session_timeout (role) is set: a client "
                            "that forgets to commit pins a server connection forever")
    if s.pool_timeout_s >= s.lease_s:
        problems.append(f"POOL_TIMEOUT_S {s.pool_timeout_s:g} s is not below LEASE_S "
                        f"{s.lease_s:g} s: a worker waiting for a connection loses its lease")
    if problems:
        return _check(Level.WARNING, "; ".join(problems), "fix the values named above",
                      facts=facts)
    return _check(Level.OK, "; ".join(facts) + ": consistent", facts=facts)


# --- the queue ------------------------------------------------------------------------


def check_last_hour(ctx: Context) -> Check:
    if ctx.queue is None:
        return _unknown(f"the tasks table could not be read: {ctx.reason('queue')}")
    counts = {row["status"]: int(row["tasks"]) for row in ctx.queue.last_hour}
    if not counts:
        return _check(Level.OK, "no task created in the last hour")
    order = [status.value for status in Status]
    text = ", ".join(f"{counts[st]} {st}" for st in order if st in counts)
    return _check(Level.OK, f"created in the last hour: {text}", counts=counts)


def check_running_too_long(ctx: Context) -> Check:
    if ctx.queue is None:
        return _unknown(f"the tasks table could not be read: {ctx.reason('queue')}")
    rows, after = ctx.queue.running_too_long, secs(ctx.settings.doctor_stuck_after_s)
    if not rows:
        return _check(Level.OK, f"no task still generating/merging/uploading {after} after "
                                "creation")
    total = int(rows[0]["total"])
    who = ", ".join(f"{r['task_id']} ({r['status']}, part {r['current_part']}/"
                    f"{r['total_parts']}, attempt {r['attempts']}, "
                    f"{secs(r['seconds_since_creation'])} old, worker {r['worker_id']})"
                    for r in rows[:3])
    return _check(Level.WARNING,
                  f"{plural(total, 'task')} still generating/merging/uploading more than "
                  f"{after} after creation: {who}",
                  "read that worker's log for these task ids (slow provider or storage?); "
                  "if the worker is gone its lease expires and the task is retried "
                  "(see queue_expired_leases)", tasks=[str(r["task_id"]) for r in rows])


def check_expired_leases(ctx: Context) -> Check:
    if ctx.queue is None:
        return _unknown(f"the tasks table could not be read: {ctx.reason('queue')}")
    rows = ctx.queue.expired_leases
    if not rows:
        return _check(Level.OK, "no running task with an expired lease")
    total, overdue = int(rows[0]["total"]), float(rows[0]["overdue_s"])
    who = ", ".join(f"{r['task_id']} ({r['status']}, attempt {r['attempts']}, worker "
                    f"{r['worker_id']}, expired {secs(r['overdue_s'])} ago)" for r in rows[:3])
    summary = (f"{plural(total, 'running task')} whose worker stopped renewing the lease "
               f"(stuck past the lease): {who}")
    data = {"tasks": [str(r["task_id"]) for r in rows]}
    if overdue > RESCUE_GRACE_S:
        return _check(Level.CRITICAL, summary,
                      f"no worker rescued them for {secs(overdue)}: no worker is running; "
                      f"start one (`python -m service worker`): its rescuer puts them back to "
                      f"pending, or failed after MAX_ATTEMPTS {ctx.settings.max_attempts}",
                      **data)
    return _check(Level.WARNING, summary,
                  "a running worker's rescuer puts them back within seconds; if this stays, "
                  "no worker is running", **data)


def check_backlog(ctx: Context) -> Check:
    if ctx.queue is None:
        reason = ctx.reason("queue")
        if isinstance(ctx.sample.direct, Ping) or isinstance(ctx.sample.bouncer, Ping):
            # The database answers but the queue cannot be read: nothing can be queued.
            return _check(Level.CRITICAL, f"the tasks table could not be read: {reason}",
                          "if the table is missing, run `python -m service migrate`; "
                          "otherwise check the role's privileges on video_generation_tasks")
        return _unknown(f"the tasks table could not be read: {reason}")
    q, s = ctx.queue.summary, ctx.settings
    oldest = float(q["oldest_pending_s"])
    summary = (f"{q['pending']} pending ({q['runnable']} runnable"
               + (f", oldest waiting {secs(oldest)}" if q["runnable"] else "")
               + f"); {q['running']} running; {q['completed_10m']} completed and "
               f"{q['failed_10m']} failed in the last 10 min")
    workers = None
    if ctx.console is not None:
        apps = pgbouncer.clients_by_application(ctx.console.clients)
        workers = sum(apps.get(WORKER_APP, {}).values())
        summary += f"; {plural(workers, 'worker client connection')}"
    data = dict(q)
    if q["runnable"] and workers == 0 and oldest > s.worker_poll_interval_s * 4:
        level = Level.CRITICAL if oldest > s.doctor_queue_lag_warn_s else Level.WARNING
        return _check(level, summary + ": no worker is connected",
                      "start workers (`python -m service worker`); tasks wait until one runs",
                      **data)
    if oldest > s.doctor_queue_lag_warn_s:
        stalled = (oldest > s.doctor_queue_lag_warn_s * BACKLOG_CRITICAL_FACTOR
                   and not q["completed_10m"])
        slots = s.worker_concurrency * s.doctor_expected_workers
        return _check(Level.CRITICAL if stalled else Level.WARNING,
                      summary + f"; oldest over {secs(s.doctor_queue_lag_warn_s)}",
                      f"workers do not keep up: {q['running']} running of WORKER_CONCURRENCY "
                      f"{s.worker_concurrency} × {s.doctor_expected_workers} workers = {slots} "
                      f"slots; if they are full add workers or raise WORKER_CONCURRENCY, if not "
                      f"read the workers' logs (claims failing?)", **data)
    return _check(Level.OK, summary, **data)


def check_attempts(ctx: Context) -> Check:
    if ctx.queue is None:
        return _unknown(f"the tasks table could not be read: {ctx.reason('queue')}")
    q, most = ctx.queue.summary, ctx.settings.max_attempts
    summary = (f"{plural(q['on_last_attempt'], 'task')} on the last of MAX_ATTEMPTS {most}; "
               f"{q['failed_out_of_attempts_1h']} failed after {most} attempts in the last hour")
    if q["failed_out_of_attempts_1h"]:
        return _check(Level.WARNING, summary,
                      "the provider or storage fails again and again: read the workers' logs "
                      "and the tasks' error_message (status failed)", **dict(q))
    return _check(Level.OK, summary)


CHECKS: list[tuple[str, str, Callable[[Context], Check]]] = [
    ("connectivity", "postgres", check_postgres),
    ("connectivity", "pgbouncer", check_pgbouncer),
    ("connectivity", "pgbouncer_console", check_console),
    ("pgbouncer", "pgbouncer_pools", check_pools),
    ("pgbouncer", "pgbouncer_traffic", check_traffic),
    ("pgbouncer", "pgbouncer_clients", check_clients),
    ("postgres", "pg_connections", check_pg_connections),
    ("postgres", "pg_sessions", check_pg_sessions),
    ("postgres", "pg_idle_in_transaction", check_idle_in_transaction),
    ("postgres", "pg_long_statements", check_long_statements),
    ("configuration", "config_client_conn", check_client_budget),
    ("configuration", "config_server_conn", check_server_budget),
    ("configuration", "config_timeouts", check_timeouts),
    ("queue", "queue_last_hour", check_last_hour),
    ("queue", "queue_running_too_long", check_running_too_long),
    ("queue", "queue_expired_leases", check_expired_leases),
    ("queue", "queue_backlog", check_backlog),
    ("queue", "queue_attempts", check_attempts),
]
