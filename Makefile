# `make test` sets up everything it needs (idempotently), then runs lint, types and the suite.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup test lint unit bench clean demo demo-rollback wheel-oldest

setup:
	@scripts/setup.sh

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest -q

# The wheel built as Yocto/LmP builds it: the oldest setuptools pyproject.toml claims, no isolation.
wheel-oldest:
	scripts/check-wheel-oldest-setuptools.sh

unit: setup
	$(PY) -m pytest -q tests/unit

bench: setup
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

demo: setup
	$(PY) -m usbupdater.sim.demo

demo-rollback: setup
	$(PY) -m usbupdater.sim.demo --rollback
