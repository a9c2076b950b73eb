"""`python -m service ...`: the `video-tasks` command line (ops/cli.py), by another name."""

from __future__ import annotations

import sys

from ops.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
