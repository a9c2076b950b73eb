"""Named SQL statements, loaded once from sql/queries.sql.

A statement starts at a `-- name --` line and runs to the next one. Keeping all SQL in
one file makes it reviewable as SQL and keeps values out of string formatting.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

_HEADER = re.compile(r"^-- ([a-z_]+) --$", re.MULTILINE)
QUERIES_FILE = Path(__file__).parent / "sql" / "queries.sql"


def parse(text: str) -> dict[str, str]:
    parts = _HEADER.split(text)
    statements = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in statements:
            raise ValueError(f"query {name!r} is defined twice")
        statements[name] = body.strip()
    return statements


@cache
def all_queries() -> dict[str, str]:
    return parse(QUERIES_FILE.read_text(encoding="utf-8"))


def get(name: str) -> str:
    """The SQL of the named statement."""
    return all_queries()[name]
