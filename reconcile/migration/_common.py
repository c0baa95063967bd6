"""Shared pieces of the migration: the tables' names, the small helpers every step uses
(identifiers, chunks, money, the server-only guard) and what the schema looks like, as the
server's catalog describes it (:class:`SchemaState`). The duplicates are in ``_duplicates``.
See docs/cutover.md."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.errors import ConfigError, SchemaNotReady
from reconcile.migration import _pg
from reconcile.storage.db import Database
from reconcile.storage.schema import (
    POWER_INDEX,
    ROBOT_CLOSE_INDEX,
    SWEEP_INDEX,
    UNIQUE_KEY,
    own_metadata,
    power_consume,
    trading_order,
    wallet,
    wallet_log,
)

T = TypeVar("T")

CONSUME = power_consume.name
ORDERS = trading_order.name
WALLET = wallet.name
ORDER_COLUMNS = ("power_consumed", "power_amount")
OWN_TABLE_NAMES = tuple(t.name for t in own_metadata.sorted_tables)
BACKUP_PREFIX = "toogo_reconcile_bak_"
BACKUP_NAME = re.compile(r"^toogo_reconcile_bak_(consume|wallet)_\d{14}(_\d{1,3})?$")
CHUNK = 500  # ids or (user_id, order_id) pairs per statement
ZERO = Decimal(0)


def money(value: Decimal) -> str:
    """A Decimal as plain digits ('0.00000000', never '0E-8')."""
    return format(value, "f")


def require_server(db: Database) -> None:
    """The runbook is for the production servers; SQLite is created complete."""
    if not db.dialect.concurrent:
        raise ConfigError(
            "migrate works on MySQL/MariaDB and PostgreSQL; the embedded SQLite database is "
            "created complete on first use"
        )


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def quote(conn: AsyncConnection, name: str) -> str:
    """A quoted identifier in the connection's dialect (`x` on MySQL, "x" on PostgreSQL); only
    names this module made or read from the server come here."""
    if not re.fullmatch(r"[A-Za-z0-9_]{1,64}", name):
        raise SchemaNotReady(f"refusing to use the identifier {name!r}")
    return str(conn.dialect.identifier_preparer.quote_identifier(name))


def _current_schema(conn: AsyncConnection) -> str:
    """The SQL naming the schema our tables live in: the database on MySQL, the first schema
    of the search path on PostgreSQL."""
    return "current_schema()" if _pg.is_pg(conn) else "DATABASE()"


async def table_names(conn: AsyncConnection) -> set[str]:
    rows = await conn.execute(
        text(
            "SELECT TABLE_NAME FROM information_schema.TABLES "  # noqa: S608
            f"WHERE TABLE_SCHEMA = {_current_schema(conn)}"
        )
    )
    return {r[0] for r in rows}


async def column_names(conn: AsyncConnection, table: str) -> list[str]:
    """The table's columns in their order."""
    rows = await conn.execute(
        text(
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS "  # noqa: S608
            f"WHERE TABLE_SCHEMA = {_current_schema(conn)} AND TABLE_NAME = :t "
            "ORDER BY ORDINAL_POSITION"
        ),
        {"t": table},
    )
    return [r[0] for r in rows]


def backup_table_name(name: str) -> str:
    """Validate a backup table name read back from the registry before it goes into SQL."""
    if not BACKUP_NAME.fullmatch(name):
        raise SchemaNotReady(f"the backup registry names an unexpected table {name!r}")
    return name


# -- the schema, as the server's catalog describes it ---------------------------------------------

#: the indexes the runbook builds, by table
OUR_INDEXES = (
    (ORDERS, POWER_INDEX),
    (CONSUME, UNIQUE_KEY),
    (ORDERS, SWEEP_INDEX),
    (ORDERS, ROBOT_CLOSE_INDEX),
)


@dataclass(frozen=True)
class SchemaState:
    tables: frozenset[str]
    unique_key: bool
    unique_key_problem: str | None
    order_columns: dict[str, bool]
    power_index: bool
    sweep_index: bool
    own_tables: dict[str, bool]
    robot_close_index: bool
    consume_engine: str | None
    #: PostgreSQL: indexes of ours left invalid by a failed CONCURRENTLY build (absent for
    #: everything else; the step that builds one drops it first)
    invalid_indexes: tuple[str, ...] = ()
    #: PostgreSQL: uk_user_order is a table constraint (not only a unique index)
    key_constraint: bool = False

    @property
    def order_ready(self) -> bool:
        return all(self.order_columns.values()) and self.power_index


async def _mysql_indexes(conn: AsyncConnection) -> dict[tuple[str, str], _pg.Index]:
    stats = await conn.execute(
        text(
            "SELECT TABLE_NAME, INDEX_NAME, NON_UNIQUE, COLUMN_NAME "
            "FROM information_schema.STATISTICS "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN (:consume, :orders) "
            "ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX"
        ),
        {"consume": CONSUME, "orders": ORDERS},
    )
    acc: dict[tuple[str, str], tuple[bool, list[str]]] = {}
    for table, index, non_unique, column in stats:
        acc.setdefault((table, index), (not int(non_unique), []))[1].append(column)
    return {k: _pg.Index(unique, tuple(cols)) for k, (unique, cols) in acc.items()}


async def schema_state(conn: AsyncConnection) -> SchemaState:
    pg = _pg.is_pg(conn)
    if pg:
        names = await table_names(conn)
        engines: dict[str, str | None] = dict.fromkeys(names)
    else:
        rows = await conn.execute(
            text(
                "SELECT TABLE_NAME, ENGINE FROM information_schema.TABLES "
                "WHERE TABLE_SCHEMA = DATABASE()"
            )
        )
        engines = {r[0]: r[1] for r in rows}
    needed = [CONSUME, ORDERS, WALLET, wallet_log.name]
    missing = [t for t in needed if t not in engines]
    if missing:
        raise SchemaNotReady(
            f"missing hotgo tables: {', '.join(missing)} - is database.url the hotgo database?"
        )
    found = await (_pg.indexes(conn, [CONSUME, ORDERS]) if pg else _mysql_indexes(conn))
    indexes = {k: ix for k, ix in found.items() if ix.valid}
    order_cols = set(await column_names(conn, ORDERS))
    key = indexes.get((CONSUME, UNIQUE_KEY))
    problem = None
    if key is not None and (key.unique, key.columns) != (True, ("user_id", "order_id")):
        problem = (
            f"an index named {UNIQUE_KEY} exists on {CONSUME} but is not UNIQUE (user_id, "
            f"order_id) - it is {'UNIQUE' if key.unique else 'non-unique'} "
            f"({', '.join(key.columns)}); drop it by hand and re-run"
        )
    return SchemaState(
        tables=frozenset(engines),
        unique_key=key is not None and problem is None,
        unique_key_problem=problem,
        order_columns={c: c in order_cols for c in ORDER_COLUMNS},
        power_index=(ORDERS, POWER_INDEX) in indexes,
        sweep_index=(ORDERS, SWEEP_INDEX) in indexes,
        robot_close_index=(ORDERS, ROBOT_CLOSE_INDEX) in indexes,
        own_tables={name: name in engines for name in OWN_TABLE_NAMES},
        consume_engine=engines.get(CONSUME),
        invalid_indexes=tuple(n for t, n in OUR_INDEXES if (t, n) in set(found) - set(indexes)),
        key_constraint=key is not None and key.constraint,
    )
