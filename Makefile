# Quick start: `make run` (the whole stack, foreground) and `make test`.
# Every target bootstraps first: OS packages when missing, then .venv.
PY := .venv/bin/python

.PHONY: bootstrap run up down status test lint doctor bench clean

bootstrap:
	@bash ops/bootstrap.sh

run: bootstrap
	@$(PY) -m ops.stack run

up: bootstrap
	@$(PY) -m ops.stack up

down:
	@if [ -x $(PY) ]; then $(PY) -m ops.stack down; fi

status: bootstrap
	@$(PY) -m ops.stack status

test: bootstrap
	@$(PY) -m pytest $(PYTEST_ARGS)

lint: bootstrap
	@.venv/bin/ruff check .

doctor: bootstrap
	@$(PY) -m service doctor

bench: bootstrap
	@$(PY) -m bench $(BENCH_ARGS)

clean: down
	rm -rf .stack
