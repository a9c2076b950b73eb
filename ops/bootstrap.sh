#!/usr/bin/env bash
# Installs what the stack and the tests need on a fresh Debian/Ubuntu machine:
# OS packages (PostgreSQL server, PgBouncer, a CJK font, wrk) when they are missing,
# then the virtualenv with the package and its dev tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

need_pkgs=()
want_pkgs=()
pg_bin_dir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
[ -n "$(pg_bin_dir)" ] && [ -x "$(pg_bin_dir)/initdb" ] || need_pkgs+=(postgresql postgresql-contrib)
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || need_pkgs+=(pgbouncer)
command -v psql >/dev/null 2>&1 || need_pkgs+=(postgresql-client)
# Chinese product names must render in the videos.
[ -e /usr/share/fonts/truetype/wqy/wqy-zenhei.ttc ] || ls /usr/share/fonts/opentype/noto/NotoSansCJK-*.ttc >/dev/null 2>&1 \
  || need_pkgs+=(fonts-wqy-zenhei)
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || need_pkgs+=(python3-venv)
# The benchmark's read-path load generator: wanted, not needed (without it the benchmark
# skips the read-path figure and says so; the suite passes either way).
command -v wrk >/dev/null 2>&1 || want_pkgs=(wrk)
# The browser tests of the demo page and /ops (tests/test_pages_browser.py) drive Debian's
# Chromium: wanted, not needed (without it they skip and say so).
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || want_pkgs+=(chromium)

if [ "$(id -u)" -eq 0 ]; then
  need_pkgs+=("${want_pkgs[@]}")
elif [ ${#want_pkgs[@]} -gt 0 ]; then
  echo "bootstrap: optional OS package missing: ${want_pkgs[*]} (sudo apt-get install -y ${want_pkgs[*]})" >&2
fi

if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "Missing OS packages: ${need_pkgs[*]}" >&2
    echo "Run once:  sudo apt-get update && sudo apt-get install -y ${need_pkgs[*]}" >&2
    exit 1
  fi
  echo "bootstrap: installing ${need_pkgs[*]}"
  # The packages' own services must not start (or grab ports 5432/6432) during install:
  # our stack runs private instances and never touches the system ones.
  policy=/usr/sbin/policy-rc.d
  created_policy=
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; created_policy=1; fi
  trap '[ -n "$created_policy" ] && rm -f "$policy"' EXIT
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

"$PYTHON" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"Python 3.11+ is needed, found {sys.version.split()[0]}")
PY

# The exact versions of requirements/dev.txt (with their hashes; `make lock` writes it
# from pyproject.toml), then the project itself, editable, without resolving again.
lock=requirements/dev.txt
stamp="$VENV/.installed"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ "$lock" -nt "$stamp" ]; then
  "$VENV/bin/python" -m pip install -q --require-hashes -r "$lock"
  "$VENV/bin/python" -m pip install -q --no-deps -e .
  touch "$stamp"
fi
