"""What a check found: a level, which of the check's outcomes, and the facts behind it.

A check (service.doctor.checks) decides; it never writes a sentence. The renderer
(service.doctor.render) turns a finding into `name: LEVEL — what, numbers — what to do`,
and `--json` prints the facts as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Level(StrEnum):
    OK = "OK"
    WARNING = "WARNING"
    CRITICAL = "CRITICAL"
    # The data could not be read; the check of the unreachable part carries the level.
    UNKNOWN = "UNKNOWN"


SEVERITY = {Level.OK: 0, Level.UNKNOWN: 0, Level.WARNING: 1, Level.CRITICAL: 2}

# The outcome of a check whose data could not be read; facts["needs"] says which part.
UNREADABLE = "unreadable"
# The outcome of a check that raised: facts["error"] says what.
CHECK_FAILED = "check_failed"


@dataclass(frozen=True)
class Finding:
    check: str  # its name, e.g. "queue_backlog"
    section: str  # "connectivity", "pgbouncer", "postgres", "configuration", "queue"
    level: Level
    # Which of the check's outcomes this is (e.g. "ok", "no_worker"): picks the sentence.
    outcome: str
    # Numbers, names and rows the check reasoned about, thresholds included: everything
    # the sentence says, nothing else. JSON-ready.
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def severity(self) -> int:
        return SEVERITY[self.level]


def worst(*levels: Level) -> Level:
    return max(levels, key=lambda level: SEVERITY[level], default=Level.OK)
