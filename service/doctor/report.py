"""The doctor's report: the findings, the verdict and exit code, the table and JSON forms.

The words come from service.doctor.render; this module only lays them out.
"""

from __future__ import annotations

import shutil
import textwrap
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from service.doctor import pgbouncer, render
from service.doctor.findings import Finding, Level
from service.doctor.probe import Failure, Sample
from service.settings import Settings

SECTIONS = ["connectivity", "pgbouncer", "postgres", "configuration", "queue"]
COLOURS = {Level.OK: "32", Level.WARNING: "33", Level.CRITICAL: "31;1", Level.UNKNOWN: "2"}
POOL_COLUMNS = ["database", "user", "cl_active", "cl_waiting", "sv_active", "sv_idle",
                "sv_used", "sv_login", "maxwait", "pool_mode"]


@dataclass
class Report:
    findings: list[Finding]
    sample: Sample
    settings: Settings

    @property
    def exit_code(self) -> int:
        """0 healthy, 1 warnings, 2 critical."""
        return max((f.severity for f in self.findings), default=0)

    @property
    def level(self) -> Level:
        return {0: Level.OK, 1: Level.WARNING, 2: Level.CRITICAL}[self.exit_code]

    def finding(self, check: str) -> Finding:
        return next(f for f in self.findings if f.check == check)

    def problems(self) -> list[Finding]:
        """Findings that are not OK, the worst first."""
        bad = [f for f in self.findings if f.severity > 0]
        return sorted(bad, key=lambda f: -f.severity)

    def verdict(self) -> str:
        return render.verdict(self.level, self.findings)

    def to_json(self) -> dict[str, Any]:
        s = self.sample
        return {
            "verdict": self.level.value,
            "exit_code": self.exit_code,
            "taken_at": datetime.fromtimestamp(s.taken_at, UTC).isoformat(),
            "checks": [finding_json(f) for f in self.findings],
            "recommendations": [f"{f.check}: {render.fix(f)}" for f in self.problems()
                                if render.fix(f)],
            "pgbouncer": (s.console.to_json() if isinstance(s.console, pgbouncer.Console)
                          else {"unreachable": s.console.reason}),
            "postgres": _part(s.postgres),
            "queue": _part(s.queue),
            "settings": {k: v for k, v in self.settings.describe().items()
                         if k.startswith(("doctor_", "api_processes", "app_pool",
                                          "pool_timeout", "worker_concurrency", "max_attempts",
                                          "lease_s", "db_"))},
        }


def finding_json(finding: Finding) -> dict[str, Any]:
    said = render.sentences(finding)
    return {"name": finding.check, "section": finding.section, "level": finding.level.value,
            "outcome": finding.outcome, "summary": said.summary, "fix": said.fix,
            "data": finding.facts}


def _part(part: Any) -> dict[str, Any]:
    if isinstance(part, Failure):
        return {"unreachable": part.reason}
    return dict(part.__dict__)


def render_table(report: Report, *, colour: bool = False, width: int | None = None) -> str:
    """Checks by section, the pools, then the verdict: what on-call reads at 3 am."""
    paint = _painter(colour)
    when = datetime.fromtimestamp(report.sample.taken_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [f"video-tasks doctor — {when}", ""]
    for section in SECTIONS:
        findings = [f for f in report.findings if f.section == section]
        if not findings:
            continue
        lines.append(paint(section.upper(), "1"))
        for f in findings:
            wrapped = _wrap("  " + render.line(f), width)
            # Colour after wrapping: escape codes would count as width.
            head = f"{f.check}: {f.level.value}"
            wrapped[0] = wrapped[0].replace(
                head, f"{f.check}: {paint(f.level.value, COLOURS[f.level])}", 1)
            lines.extend(wrapped)
        lines.append("")
    console = report.sample.console
    if isinstance(console, pgbouncer.Console) and console.app_pools():
        lines.append(paint("POOLS (SHOW POOLS)", "1"))
        lines.extend("  " + row for row in _pool_table(console.app_pools()))
        lines.append("")
    lines.append(paint("VERDICT: ", "1") + paint(report.verdict(), COLOURS[report.level])
                 + f" (exit {report.exit_code})")
    fixes = [(f.check, render.fix(f)) for f in report.problems()]
    for number, (check, fix) in enumerate(((c, x) for c, x in fixes if x), start=1):
        lines.extend(_wrap(f"{number}. {check}: {fix}", width, indent="  "))
    return "\n".join(lines)


def _wrap(text: str, width: int | None, indent: str = "") -> list[str]:
    if not width:
        return [indent + text]
    return textwrap.wrap(text, width=width, initial_indent=indent,
                         subsequent_indent="      ", break_on_hyphens=False) or [""]


def _pool_table(pools: list[dict[str, Any]]) -> list[str]:
    rows = [POOL_COLUMNS]
    for p in pools:
        row = [str(p.get(col, "")) for col in POOL_COLUMNS]
        row[POOL_COLUMNS.index("maxwait")] = f"{pgbouncer.maxwait_s(p):.1f}s"
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(POOL_COLUMNS))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
            for r in rows]


def _painter(colour: bool) -> Any:
    def paint(text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if colour else text
    return paint


def terminal_width() -> int:
    return shutil.get_terminal_size((120, 40)).columns
