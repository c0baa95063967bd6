"""The database schema in one place: every table the daemon touches, by name, and the DDL that
creates them where the daemon may (tests, benchmarks, the embedded SQLite default, ``migrate``).

hotgo's tables are defined in :mod:`reconcile.storage.hotgo_tables` (mirrors of upstream's DDL)
and the daemon's own ``toogo_reconcile_*`` tables in :mod:`reconcile.storage.own_tables`; both
are re-exported here, so code names a table as ``from reconcile.storage.schema import
trading_order`` whoever owns it. This module adds the indexes the daemon puts on hotgo's tables
(the unique charge key, the sweep's and the trades' indexes).

The daemon never creates or alters hotgo's tables by itself in production:
``create_hotgo_schema`` exists for tests, benchmarks and the embedded SQLite default;
``toogo-reconcile migrate`` is the only production path that changes the schema. See
docs/architecture.md and docs/cutover.md.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.storage.hotgo_tables import (
    HOTGO_TABLES,
    OPTIONAL_HOTGO_TABLES,
    POWER_INDEX,
    metadata,
    power_consume,
    toogo_config,
    toogo_user,
    trading_api_config,
    trading_order,
    trading_proxy_config,
    trading_robot,
    wallet,
    wallet_log,
)
from reconcile.storage.own_tables import (
    OWN_TABLES,
    binding,
    correction,
    exchange_record,
    migration_backup,
    own_metadata,
    poll_schedule,
    quarantine,
    record_order_id,
    refund,
    shadow_charge,
    skipped_duplicate,
    stream_cursor,
    verdict,
)

UNIQUE_KEY = "uk_user_order"
SWEEP_INDEX = "idx_reconcile_sweep"
#: the rows of some robots closed since a time (reconcile.charging.trades reads a page's neighbours
#: so): a range per robot, where upstream's idx_robot_id would read each robot's whole history
ROBOT_CLOSE_INDEX = "idx_reconcile_robot_close"
ROBOT_CLOSE_COLUMNS = ("robot_id", "close_time")

# The sweep's candidate index: InnoDB appends the primary key, so entries are
# ordered by (power_consumed, status, close_time, id) - exactly the sweep's keyset order.
SWEEP_INDEX_COLUMNS = ("power_consumed", "status", "close_time")


def sweep_index_columns(dialect_name: str) -> tuple[str, ...]:
    """PostgreSQL appends nothing to a secondary index: ``id`` is named, so the sweep's
    keyset (a row comparison on (close_time, id)) is a range on it."""
    return (*SWEEP_INDEX_COLUMNS, "id") if dialect_name == "postgresql" else SWEEP_INDEX_COLUMNS


async def create_hotgo_schema(conn: AsyncConnection, *, with_unique_key: bool = True) -> None:
    """Create hotgo's tables as production has them (tests, benchmarks, embedded default).

    ``with_unique_key=False`` gives the legacy shape that the migration runbook starts from.
    """
    await conn.run_sync(lambda sync_conn: metadata.create_all(sync_conn, checkfirst=True))
    if with_unique_key and not await index_exists(conn, power_consume.name, UNIQUE_KEY):
        await add_unique_key(conn)


async def add_unique_key(conn: AsyncConnection) -> None:
    """Add ``uk_user_order`` with plain DDL (the migration command uses online DDL instead)."""
    await conn.execute(
        text(f"CREATE UNIQUE INDEX {UNIQUE_KEY} ON {power_consume.name} (user_id, order_id)")
    )


async def create_own_schema(conn: AsyncConnection) -> None:
    """Create the daemon's own tables and the sweep index on hg_trading_order, if absent."""
    await conn.run_sync(own_metadata.create_all)
    if not await index_exists(conn, trading_order.name, ROBOT_CLOSE_INDEX):
        cols = ", ".join(ROBOT_CLOSE_COLUMNS)
        await conn.execute(
            text(f"CREATE INDEX {ROBOT_CLOSE_INDEX} ON {trading_order.name} ({cols})")
        )
    if not await index_exists(conn, trading_order.name, SWEEP_INDEX):
        cols = ", ".join(sweep_index_columns(conn.dialect.name))
        await conn.execute(text(f"CREATE INDEX {SWEEP_INDEX} ON {trading_order.name} ({cols})"))


async def index_exists(conn: AsyncConnection, table: str, name: str) -> bool:
    def _check(sync_conn: Any) -> bool:
        insp = inspect(sync_conn)
        names = {ix["name"] for ix in insp.get_indexes(table)}
        names |= {uc["name"] for uc in insp.get_unique_constraints(table)}
        return name in names

    return bool(await conn.run_sync(_check))


async def table_names(conn: AsyncConnection) -> set[str]:
    return set(await conn.run_sync(lambda sync_conn: inspect(sync_conn).get_table_names()))


async def create_embedded_schema(conn: AsyncConnection) -> None:
    """The embedded SQLite default creates everything on first use."""
    await create_hotgo_schema(conn, with_unique_key=True)
    await create_own_schema(conn)


__all__ = [
    "HOTGO_TABLES",
    "OPTIONAL_HOTGO_TABLES",
    "OWN_TABLES",
    "POWER_INDEX",
    "ROBOT_CLOSE_COLUMNS",
    "ROBOT_CLOSE_INDEX",
    "SWEEP_INDEX",
    "SWEEP_INDEX_COLUMNS",
    "UNIQUE_KEY",
    "add_unique_key",
    "binding",
    "correction",
    "create_embedded_schema",
    "create_hotgo_schema",
    "create_own_schema",
    "exchange_record",
    "index_exists",
    "metadata",
    "migration_backup",
    "own_metadata",
    "poll_schedule",
    "power_consume",
    "quarantine",
    "record_order_id",
    "refund",
    "shadow_charge",
    "skipped_duplicate",
    "stream_cursor",
    "sweep_index_columns",
    "table_names",
    "toogo_config",
    "toogo_user",
    "trading_api_config",
    "trading_order",
    "trading_proxy_config",
    "trading_robot",
    "verdict",
    "wallet",
    "wallet_log",
]
