# make test  - create .venv from requirements.lock (exact versions, hashes), lint, type-check, test
# make lock  - re-resolve requirements.lock from pyproject.toml's ranges (uv, in .venv-lock)
# make bench - the charge-backlog drain benchmark (needs the local MariaDB)
# make demo  - the whole cycle on a fresh embedded demo database (./toogo-reconcile.db): no
#              database server, no API keys, no network beyond the package index
# make simulate [MINUTES=30] [SEED=14] - the seeded fault simulation (bench/simulate.py;
#              a private MariaDB of its own)
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

LOCK_VENV ?= .venv-lock
UV_VERSION := 0.13.10

.PHONY: test lint typecheck pytest bench bench-migration bench-adapters install clean demo simulate lock

# The environment is exactly the lock: a changed lock rebuilds it from scratch (nothing left over),
# the project itself goes in without dependencies and builds with the locked setuptools.
$(BIN)/.installed: requirements.lock pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes --no-deps -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

install: $(BIN)/.installed

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest

test: lint typecheck pytest

bench: install
	$(BIN)/python bench/drain.py

demo: install
	$(BIN)/toogo-reconcile demo

bench-migration: install
	$(BIN)/python bench/bench_migration.py

simulate: install
	$(BIN)/python bench/simulate.py --minutes $(or $(MINUTES),30) $(if $(SEED),--seed $(SEED))

bench-adapters: install
	$(BIN)/python -m bench.bench_adapters

# Every dependency, transitive ones, setuptools and wheel included, for Python 3.11, with the
# hashes of every file PyPI has for each version. Then `make test` and commit the lock.
lock:
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet uv==$(UV_VERSION)
	$(PYTHON) -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))' \
	  | $(LOCK_VENV)/bin/uv pip compile --quiet --upgrade --generate-hashes --extra test \
	    --python-version 3.11 --custom-compile-command 'make lock' -o requirements.lock pyproject.toml -

clean:
	rm -rf $(VENV) $(LOCK_VENV) .mypy_cache .ruff_cache .pytest_cache
