"""Our table definitions against upstream's DDL, and the live-schema contract.

The project's SQLAlchemy definitions (reconcile/storage/schema.py) serve the embedded SQLite
default; on MySQL the truth is upstream's DDL (tests/fixtures/upstream). Every column we declare
must exist there with the same type family and nullability, or the daemon reads or writes a column a
real install does not have - the first release died on hg_trading_robot.margin exactly so.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import inspect, types
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.storage.contract import OPTIONAL, inspect_live
from reconcile.storage.db import Database
from reconcile.storage.schema import HOTGO_TABLES, OPTIONAL_HOTGO_TABLES

pytestmark = pytest.mark.mysql

_FAMILIES: tuple[tuple[type[Any], str], ...] = (
    (types.Numeric, "decimal"),
    (types.Integer, "integer"),  # BigInteger and SmallInteger are Integer subclasses
    (types.DateTime, "datetime"),
    (types.Text, "text"),
    (types.String, "string"),
)


def family(column_type: Any) -> str:
    impl = getattr(column_type, "impl", column_type)
    for cls, name in _FAMILIES:
        if isinstance(impl, cls):
            return name
    raise AssertionError(f"no family for {column_type!r}")


async def upstream_columns(db: Database) -> dict[str, dict[str, dict[str, Any]]]:
    def read(sync_conn: Any) -> dict[str, dict[str, dict[str, Any]]]:
        insp = inspect(sync_conn)
        return {
            t.name: {c["name"]: c for c in insp.get_columns(t.name)}
            for t in (*HOTGO_TABLES, *OPTIONAL_HOTGO_TABLES)
            if insp.has_table(t.name)
        }

    async def run(conn: AsyncConnection) -> dict[str, dict[str, dict[str, Any]]]:
        return await conn.run_sync(read)

    return await db.transaction(run, what="inspect upstream's tables")


async def test_every_declared_column_is_upstreams(mysql_db: Database) -> None:
    live = await upstream_columns(mysql_db)
    checked = 0
    problems: list[str] = []
    for table in (*HOTGO_TABLES, *OPTIONAL_HOTGO_TABLES):
        assert table.name in live, f"{table.name} is not in upstream's DDL"
        for column in table.columns:
            theirs = live[table.name].get(column.name)
            where = f"{table.name}.{column.name}"
            if theirs is None:
                problems.append(f"{where}: not in upstream's DDL")
                continue
            if family(column.type) != family(theirs["type"]):
                problems.append(f"{where}: {column.type} vs upstream {theirs['type']}")
            if not column.primary_key and column.nullable != theirs["nullable"]:
                problems.append(f"{where}: nullable {column.nullable} vs {theirs['nullable']}")
            if family(column.type) == "decimal":
                ours = getattr(column.type, "impl", column.type)
                if (ours.precision, ours.scale) != (theirs["type"].precision, theirs["type"].scale):
                    problems.append(f"{where}: {ours} vs upstream {theirs['type']}")
            checked += 1
    assert problems == []
    assert checked >= 90  # every table's columns were looked at, not none


async def test_upstream_ddl_as_applied_is_ready_after_migrate(mysql_db: Database) -> None:
    """The test fixture applies upstream's DDL plus what `migrate up` adds: nothing missing,
    and the optional close-id columns are there (upstream's add_missing_order_fields.sql)."""

    async def read(conn: AsyncConnection) -> Any:
        return await inspect_live(conn)

    live = await mysql_db.transaction(read, what="inspect")
    assert live.problems == ()
    for table, columns in OPTIONAL.items():
        for column in columns:
            assert live.has(table, column), f"{table}.{column}"


async def test_a_missing_column_is_named_with_its_remedy(mysql_db: Database) -> None:
    async def damage(conn: AsyncConnection) -> Any:
        await conn.exec_driver_sql(
            "ALTER TABLE hg_trading_order DROP COLUMN close_order_id, DROP COLUMN power_amount"
        )
        await conn.exec_driver_sql("ALTER TABLE hg_trading_robot DROP COLUMN leverage")
        await conn.exec_driver_sql("DROP TABLE toogo_reconcile_binding")
        return await inspect_live(conn)

    live = await mysql_db.transaction(damage, what="damage the schema")
    assert set(live.problems) == {
        "hg_trading_order.power_amount missing: run add_power_consumed_field.sql / migrate up",
        "hg_trading_robot.leverage missing: upstream's DDL has it: repair it",
        "toogo_reconcile_binding missing (the daemon's own table): run "
        "`toogo-reconcile migrate up`",
    }
    # an optional column missing is no problem: it is skipped
    assert not live.has("hg_trading_order", "close_order_id")
    assert live.has("hg_trading_order", "close_client_order_id")
