"""Test and benchmark kits: fake exchange servers, private database servers, upstream's schema,
seeding. Not shipped (``pyproject.toml`` packages only ``daemon``, ``exchange_adapters`` and
``reconcile``); the tests and ``bench/`` import it from the repository root.

- ``kits.databases`` - the shared MariaDB and PostgreSQL servers the tests use, and
  ``open_database`` (a database with upstream's schema on the servers, ours on SQLite);
- ``kits.upstream`` - upstream Toogo's own DDL (``tests/fixtures/upstream``) as the schema;
- ``kits.seed`` - builders for test data and the ledger invariants;
- ``kits.fake_exchanges`` - the exchanges' wire formats on loopback, for the real ccxt clients;
- ``kits.private_mariadb``, ``kits.private_postgres`` - database servers of a test's own, to
  kill, hang or restart; ``kits.tcp_proxy`` - a proxy that cuts a connection around a COMMIT.

How the tests and benchmarks are run: docs/development.md.
"""
