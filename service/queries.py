"""Named SQL statements, loaded once from the files in sql/.

A statement starts at a `-- name --` line and runs to the next one. Keeping SQL in .sql
files makes it reviewable as SQL and keeps values out of string formatting. Names are
unique across all files (queries.sql: the tasks table; others: one file per concern).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

_HEADER = re.compile(r"^-- ([a-z_]+) --$", re.MULTILINE)
SQL_DIR = Path(__file__).parent / "sql"


def parse(text: str, statements: dict[str, str] | None = None) -> dict[str, str]:
    statements = {} if statements is None else statements
    parts = _HEADER.split(text)
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in statements:
            raise ValueError(f"query {name!r} is defined twice")
        statements[name] = body.strip()
    return statements


@cache
def all_queries() -> dict[str, str]:
    statements: dict[str, str] = {}
    for path in sorted(SQL_DIR.glob("*.sql")):
        parse(path.read_text(encoding="utf-8"), statements)
    return statements


def get(name: str) -> str:
    """The SQL of the named statement."""
    return all_queries()[name]
