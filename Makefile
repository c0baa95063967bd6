# make test  - create .venv, install the project with its test extras, lint, type-check, test
# make bench - the charge-backlog drain benchmark (needs the local MariaDB)
# make demo  - the whole cycle on a fresh embedded demo database (./toogo-reconcile.db): no
#              database server, no API keys, no network beyond the package index
# make simulate [MINUTES=30] [SEED=14] - the seeded fault simulation (bench/simulate.py;
#              a private MariaDB of its own)
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: test lint typecheck pytest bench bench-migration bench-adapters install clean demo simulate

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
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

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
