"""Upstream Toogo's own DDL as the schema of the server tests and benchmarks
(``tests/fixtures/upstream``).

The tests that prove behaviour on MariaDB create hotgo's tables from
``hotgo_mysql_as_applied.sql`` - what a real install has (see SOURCE.md beside it) - never from
the project's own definitions, which serve only the embedded SQLite default. The files are part of
the repository, so a missing one is a broken checkout: an error, never a skip.
"""

from __future__ import annotations

import functools
import re
from datetime import datetime
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.storage.schema import (
    UNIQUE_KEY,
    add_unique_key,
    create_own_schema,
    index_exists,
    metadata,
    power_consume,
    toogo_config,
    toogo_user,
    trading_order,
    wallet,
    wallet_log,
)

#: the DDL files stay with the test fixtures, beside their SOURCE.md
UPSTREAM_DIR = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "upstream"
MYSQL_DDL = UPSTREAM_DIR / "hotgo_mysql_as_applied.sql"
PG_DDL = UPSTREAM_DIR / "create_trading_core_pg.sql"


def _read(path: Path) -> str:
    """A DDL file of the repository; its absence is a broken checkout, not a reason to skip."""
    if not path.is_file():
        raise FileNotFoundError(f"upstream's DDL is missing from the checkout: {path}")
    return path.read_text(encoding="utf-8")


#: columns of add_missing_order_fields.sql that some installs lack (docs/architecture.md, "How
#: upstream's engine writes its tables")
CLOSE_ID_COLUMNS = ("close_order_id", "close_client_order_id")


@functools.cache
def mysql_create_statements() -> tuple[str, ...]:
    """The CREATE TABLE statements of upstream's MySQL schema, as mysqldump wrote them."""
    body = _read(MYSQL_DDL)
    statements = [s.strip() for s in re.split(r";\s*\n", body)]
    creates = tuple(s for s in statements if s.startswith("CREATE TABLE"))
    assert len(creates) >= 8, f"{MYSQL_DDL}: only {len(creates)} CREATE TABLE statements"
    return creates


async def create_upstream_schema(
    conn: AsyncConnection, *, with_unique_key: bool = True, own: bool = True
) -> None:
    """hotgo's tables from upstream's DDL; then, as `migrate up` would, uk_user_order and the
    daemon's own tables and index."""
    for statement in mysql_create_statements():
        statement = statement.replace("CREATE TABLE ", "CREATE TABLE IF NOT EXISTS ", 1)
        await conn.exec_driver_sql(statement.replace("%", "%%"))  # the driver formats with %
    if with_unique_key and not await index_exists(conn, power_consume.name, UNIQUE_KEY):
        await add_unique_key(conn)
    if own:
        await create_own_schema(conn)


async def drop_close_id_columns(conn: AsyncConnection) -> None:
    """The installs whose add_missing_order_fields.sql never ran lack the closing ids."""
    for column in CLOSE_ID_COLUMNS:
        await conn.execute(text(f"ALTER TABLE {trading_order.name} DROP COLUMN {column}"))


#: the close-id columns as add_missing_order_fields.sql adds them, for PostgreSQL: upstream's
#: PostgreSQL DDL lacks them, but its engine writes them (CloseOrder, order_status_sync.go
#: 1834-1990), so an install the engine runs on has them
PG_CLOSE_ID_COLUMNS = (
    "ALTER TABLE hg_trading_order"
    " ADD COLUMN IF NOT EXISTS close_order_id VARCHAR(100) NULL,"
    " ADD COLUMN IF NOT EXISTS close_client_order_id VARCHAR(100) NULL"
)


#: the hg_toogo_* tables, for which upstream published no PostgreSQL DDL (see pg_statements)
TOOGO_TABLES = (power_consume, wallet, wallet_log, toogo_user, toogo_config)

#: what `migrate up` adds to upstream's PostgreSQL hg_trading_order, as the operators' MySQL
#: script add_power_consumed_field.sql does (tinyint(1) -> SMALLINT, decimal -> NUMERIC)
PG_POWER_COLUMNS = (
    "ALTER TABLE hg_trading_order"
    " ADD COLUMN IF NOT EXISTS power_consumed SMALLINT NOT NULL DEFAULT 0,"
    " ADD COLUMN IF NOT EXISTS power_amount NUMERIC(20,8) NOT NULL DEFAULT 0"
)


PG_POWER_INDEX = (
    "CREATE INDEX IF NOT EXISTS idx_power_consumed"
    " ON hg_trading_order (power_consumed, status, realized_profit)"
)


@functools.cache
def pg_statements() -> tuple[str, ...]:
    """The statements of upstream's PostgreSQL DDL for the trading tables, one by one."""
    body = "\n".join(
        line for line in _read(PG_DDL).splitlines() if not line.lstrip().startswith("--")
    )
    statements = [s.strip() for s in body.split(";")]
    kept = tuple(s for s in statements if s and s.upper() not in ("BEGIN", "COMMIT"))
    assert sum(s.startswith("CREATE TABLE") for s in kept) >= 6, PG_DDL
    return kept


async def create_upstream_pg_schema(
    conn: AsyncConnection,
    *,
    with_unique_key: bool = True,
    own: bool = True,
    power_columns: bool = True,
    tz_columns: bool = False,
) -> None:
    """hotgo on PostgreSQL: the trading tables from upstream's own PostgreSQL DDL; the
    hg_toogo_* tables as a MySQL -> PostgreSQL transfer gives them (DECIMAL -> NUMERIC of the
    same precision, DATETIME -> TIMESTAMP, or TIMESTAMPTZ with ``tz_columns``); then, as
    `migrate up` would, the power columns, uk_user_order and the daemon's own tables."""
    for statement in pg_statements():
        await conn.exec_driver_sql(statement)

    def toogo(sync_conn: object) -> None:
        metadata.create_all(sync_conn, tables=list(TOOGO_TABLES), checkfirst=True)  # type: ignore[arg-type]

    await conn.run_sync(toogo)
    if tz_columns:
        for table in TOOGO_TABLES:
            for column in table.columns:
                if column.type.python_type is datetime:
                    await conn.exec_driver_sql(
                        f"ALTER TABLE {table.name} ALTER COLUMN {column.name} TYPE TIMESTAMPTZ"
                    )
    if power_columns:
        await conn.exec_driver_sql(PG_POWER_COLUMNS)
        await conn.exec_driver_sql(PG_POWER_INDEX)
    if with_unique_key and not await index_exists(conn, power_consume.name, UNIQUE_KEY):
        await add_unique_key(conn)
    if own:
        await create_own_schema(conn)
