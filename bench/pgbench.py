"""The database's own ceiling: pgbench running the service's statements through PgBouncer.

The scripts are made from service/sql/queries.sql: `get_progress` (SELECT of one task by
key: what one poll costs the database on its own; the API coalesces concurrent polls into
`get_progress_many`) and `create_task` (the idempotent INSERT the API runs). pgbench runs
them with the extended protocol and unnamed statements (`-M extended`), as psycopg does
with prepare_threshold=None. Task ids are computed in SQL from pgbench's random numbers
(md5 of a number, as the seeded rows are made).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from psycopg.conninfo import conninfo_to_dict

from bench import services
from service import queries

PGBENCH_THREADS = 2
TASK_ID_SEEDED = f"md5('{services.SEED_PREFIX}' || :n::text)::uuid"
TASK_ID_NEW = "md5(:client_id::text || '-' || :r::text)::uuid"
# String parameters go in as pgbench variables (-D), so they are bound like psycopg's.
STRING_VARIABLES = {"product_name": "pgbench product", "theme": "pgbench theme",
                    "type": "video", "request_fingerprint": "pgbench"}


def pgbench_bin() -> str | None:
    found = shutil.which("pgbench")
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"))
    return str(candidates[-1]) if candidates else None


def select_script(seeded_rows: int) -> str:
    sql = queries.get("get_progress").replace("%(task_id)s", TASK_ID_SEEDED)
    return f"\\set n random(1, {seeded_rows})\n{_one_line(sql)}\n"


def insert_script() -> str:
    sql = queries.get("create_task")
    sql = sql.replace("%(task_id)s", TASK_ID_NEW)
    sql = sql.replace("%(idempotency_key)s", "NULL::text")
    sql = sql.replace("%(owner_openid)s", "NULL::text")
    sql = sql.replace("%(notice_template_id)s", "NULL::text")
    # One requester per pgbench client, as many users would be (one requester's creates
    # queue on its fairness row); no limits, as in the benchmark's stack.
    sql = sql.replace("%(requester)s", "('pgbench-' || :client_id)")
    for name in ("creates_per_minute", "max_unfinished"):
        sql = sql.replace(f"%({name})s", "0")
    sql = sql.replace("%(unfinished_retry_s)s", "30")
    sql = sql.replace("%(duration)s", ":duration").replace("%(total_parts)s", ":total_parts")
    for name in STRING_VARIABLES:
        sql = sql.replace(f"%({name})s", f":{name}")
    if "%(" in sql:
        raise ValueError(f"create_task has a parameter pgbench does not set: {sql}")
    return ("\\set r random(1, 1000000000000)\n\\set duration 10\n\\set total_parts 2\n"
            f"{_one_line(sql)}\n")


def _one_line(sql: str) -> str:
    """pgbench reads one SQL command per line unless it ends with ';' at the end."""
    lines = [line.split("--", 1)[0].strip() for line in sql.splitlines()]
    return " ".join(line for line in lines if line)


def run(script: Path, *, conninfo: str, clients: int, duration_s: int) -> dict[str, Any]:
    binary = pgbench_bin()
    if binary is None:
        raise RuntimeError("pgbench not found: apt-get install postgresql-client")
    info = conninfo_to_dict(conninfo)
    if info.get("host") not in ("127.0.0.1", "localhost"):
        raise ValueError("the benchmark only loads 127.0.0.1")
    argv = [binary, "-n", "-M", "extended", "-c", str(clients),
            "-j", str(min(PGBENCH_THREADS, clients)), "-T", str(duration_s), "-f", str(script),
            "-h", str(info["host"]), "-p", str(info["port"]), "-U", str(info["user"])]
    for name, value in STRING_VARIABLES.items():
        argv += ["-D", f"{name}={value}"]
    argv.append(str(info["dbname"]))
    env = {"PATH": "/usr/bin:/bin", "PGPASSWORD": str(info.get("password") or ""),
           "PGCONNECT_TIMEOUT": "5"}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False,
                          timeout=duration_s + 60)
    out = proc.stdout + proc.stderr
    tps = re.search(r"^tps = ([\d.]+) \(without initial connection time\)", out, re.M)
    latency = re.search(r"^latency average = ([\d.]+) ms", out, re.M)
    failed = re.search(r"^number of failed transactions: (\d+)", out, re.M)
    done = re.search(r"^number of transactions actually processed: (\d+)", out, re.M)
    if proc.returncode != 0 or tps is None:
        raise RuntimeError(f"pgbench failed ({proc.returncode}): {out.strip()[-800:]}")
    return {
        "script": script.name,
        "clients": clients,
        "threads": min(PGBENCH_THREADS, clients),
        "duration_s": duration_s,
        "tps": round(float(tps.group(1)), 1),
        "latency_avg_ms": float(latency.group(1)) if latency else None,
        "transactions": int(done.group(1)) if done else None,
        "failed": int(failed.group(1)) if failed else 0,
        "command": " ".join([*argv[:-1], "<db>"]).replace(binary, "pgbench"),
    }
