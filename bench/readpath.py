"""The read path at full speed: GET progress in a tight loop, driven by wrk.

wrk (C, epoll) costs little CPU per request, so on a shared two-core machine it leaves
the cores to the service. Its Lua script asks for a random task among the seeded rows,
which are pending and never runnable: no terminal state, nothing any cache could serve.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

WRK_TIMEOUT_S = 5
RESULT_MARK = "BENCH_RESULT "

LUA_TEMPLATE = """-- Written by bench/readpath.py: GET progress of a random seeded task.
local ids = {
%(ids)s
}
local requests = {}

init = function(args)
  for i, id in ipairs(ids) do
    requests[i] = wrk.format("GET", "/api/progress/" .. id)
  end
end

request = function()
  return requests[math.random(#requests)]
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "%(mark)s{\\"requests\\": %%d, \\"duration_us\\": %%d, \\"connect_errors\\": %%d, " ..
    "\\"read_errors\\": %%d, \\"write_errors\\": %%d, \\"non_2xx_3xx\\": %%d, " ..
    "\\"timeouts\\": %%d, \\"p50_us\\": %%d, \\"p90_us\\": %%d, \\"p99_us\\": %%d, " ..
    "\\"max_us\\": %%d, \\"mean_us\\": %%.1f}\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
"""


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def write_script(path: Path, task_ids: list[str]) -> Path:
    ids = ",\n".join(f'  "{task_id}"' for task_id in task_ids)
    path.write_text(LUA_TEMPLATE % {"ids": ids, "mark": RESULT_MARK})
    return path


def run_wrk(url: str, script: Path, *, connections: int, duration_s: int,
            threads: int = 1) -> dict[str, Any]:
    """Run wrk against url; the figures its Lua `done` prints, plus requests/s."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError("the benchmark only loads 127.0.0.1")
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s}s",
            f"--timeout={WRK_TIMEOUT_S}s", "-s", str(script), url]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False,
                          timeout=duration_s + 30)
    result: dict[str, Any] = {"command": " ".join([*argv[:-3], "-s", "get_progress.lua", url]),
                              "connections": connections, "duration_s": duration_s}
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            result.update(json.loads(line[len(RESULT_MARK):]))
    if "requests" not in result:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip()[:500]}")
    seconds = result["duration_us"] / 1e6
    result["requests_per_s"] = round(result["requests"] / seconds, 1) if seconds else 0.0
    errors = sum(result[k] for k in ("connect_errors", "read_errors", "write_errors",
                                     "non_2xx_3xx", "timeouts"))
    result["errors"] = errors
    for key in ("p50_us", "p90_us", "p99_us", "max_us"):
        result[key.replace("_us", "_ms")] = round(result.pop(key) / 1000, 2)
    result["mean_ms"] = round(result.pop("mean_us") / 1000, 2)
    return result
