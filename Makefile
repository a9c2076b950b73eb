# Quick start: `make run` (the whole stack, foreground) and `make test`.
# Every target bootstraps first: OS packages when missing, then .venv.
PY := .venv/bin/python
# The package's one command line (ops/cli.py); it reads .env itself, from any directory.
VT := .venv/bin/video-tasks

.PHONY: bootstrap run up down status test lint doctor bench clean

bootstrap:
	@bash ops/bootstrap.sh

run: bootstrap
	@$(VT) stack run

up: bootstrap
	@$(VT) stack up

down:
	@if [ -x $(VT) ]; then $(VT) stack down; fi

status: bootstrap
	@$(VT) stack status

test: bootstrap
	@$(PY) -m pytest $(PYTEST_ARGS)

lint: bootstrap
	@.venv/bin/ruff check .
	@.venv/bin/mypy

doctor: bootstrap
	@$(VT) doctor

bench: bootstrap
	@$(PY) -m bench $(BENCH_ARGS)

clean: down
	rm -rf .stack

.PHONY: lock
# Regenerates the hashed lock files from pyproject.toml with uv (a dev dependency), for
# every platform and Python >= 3.11. Pins stay where pyproject.toml still allows them;
# LOCK_ARGS=--upgrade moves all of them, LOCK_ARGS="--upgrade-package NAME" one.
# The runtime lock is constrained to the dev lock, so both pin the same versions.
LOCK_COMPILE = $(PY) -m uv pip compile pyproject.toml --universal --python-version 3.11 \
	--fork-strategy fewest --generate-hashes \
	--custom-compile-command "make lock" --quiet $(LOCK_ARGS)
lock: bootstrap
	@mkdir -p requirements
	@$(LOCK_COMPILE) --extra dev -o requirements/dev.txt
	@$(LOCK_COMPILE) -c requirements/dev.txt -o requirements/runtime.txt
	@echo "lock: requirements/dev.txt, requirements/runtime.txt"

.PHONY: test-fast
# The fast tier: every test that needs no PostgreSQL, PgBouncer or service process
# (tests/conftest.py marks the others `db`), in seconds. `make test` runs everything.
test-fast: bootstrap
	@$(PY) -m pytest -m "not db" $(PYTEST_ARGS)
