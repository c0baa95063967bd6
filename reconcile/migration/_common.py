"""Shared pieces of the migration: what the schema looks like and where the duplicates are."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import bindparam, select, text
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


class DuplicatesRemain(SchemaNotReady):
    """``uk_user_order`` cannot be added: duplicate (user_id, order_id) rows exist."""

    def __init__(self, groups: int, extra_rows: int, *, during_alter: bool = False) -> None:
        if during_alter:
            message = (
                f"{CONSUME}: duplicates appeared while {UNIQUE_KEY} was being built (a legacy "
                "writer is still inserting them); nothing was changed by the ALTER - run "
                "`toogo-reconcile migrate dedupe --yes` (or `migrate up --yes`) again"
            )
        else:
            message = (
                f"{CONSUME} still has {groups} duplicate (user_id, order_id) groups ({extra_rows} "
                f"extra rows): refusing to add {UNIQUE_KEY} - run `toogo-reconcile migrate "
                "dedupe --yes` first (add --refund to credit the over-charge back)"
            )
        super().__init__(message)
        self.groups = groups
        self.extra_rows = extra_rows


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


# -- duplicates ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConsumeRow:
    id: int
    user_id: int
    order_id: int
    order_sn: str
    consume_power: Decimal


@dataclass(frozen=True)
class DuplicateGroup:
    """All consume rows of one (user_id, order_id) with more than one row; the max id is kept."""

    user_id: int
    order_id: int
    keep: ConsumeRow
    extra: tuple[ConsumeRow, ...]

    @property
    def rows(self) -> int:
        return 1 + len(self.extra)

    @property
    def over_charged(self) -> Decimal:
        return sum((r.consume_power for r in self.extra), ZERO)

    @property
    def extra_ids(self) -> tuple[int, ...]:
        return tuple(r.id for r in self.extra)

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "order_id": self.order_id,
            "order_sn": self.keep.order_sn,
            "rows": self.rows,
            "keep_id": self.keep.id,
            "delete_ids": list(self.extra_ids),
            "over_charged": money(self.over_charged),
        }


@dataclass(frozen=True)
class UserOvercharge:
    user_id: int
    groups: int
    extra_rows: int
    over_charged: Decimal

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "groups": self.groups,
            "extra_rows": self.extra_rows,
            "over_charged": money(self.over_charged),
        }


@dataclass(frozen=True)
class Duplicates:
    groups: tuple[DuplicateGroup, ...] = ()
    users: tuple[UserOvercharge, ...] = field(default=())

    @classmethod
    def of(cls, groups: Iterable[DuplicateGroup]) -> Duplicates:
        groups = tuple(groups)
        acc: dict[int, list[DuplicateGroup]] = {}
        for g in groups:
            acc.setdefault(g.user_id, []).append(g)
        users = [
            UserOvercharge(
                user_id=uid,
                groups=len(gs),
                extra_rows=sum(len(g.extra) for g in gs),
                over_charged=sum((g.over_charged for g in gs), ZERO),
            )
            for uid, gs in acc.items()
        ]
        users.sort(key=lambda u: (-u.over_charged, u.user_id))
        return cls(groups=groups, users=tuple(users))

    @property
    def extra_rows(self) -> int:
        return sum(len(g.extra) for g in self.groups)

    @property
    def over_charged(self) -> Decimal:
        return sum((g.over_charged for g in self.groups), ZERO)

    @property
    def extra_ids(self) -> list[int]:
        return sorted(i for g in self.groups for i in g.extra_ids)

    @property
    def user_ids(self) -> list[int]:
        return sorted({g.user_id for g in self.groups})


_ROW_COLUMNS = (
    power_consume.c.id,
    power_consume.c.user_id,
    power_consume.c.order_id,
    power_consume.c.order_sn,
    power_consume.c.consume_power,
)


def _group(rows: Iterable[ConsumeRow]) -> Duplicates:
    by_pair: dict[tuple[int, int], list[ConsumeRow]] = {}
    for row in rows:
        by_pair.setdefault((row.user_id, row.order_id), []).append(row)
    groups = []
    for (user_id, order_id), members in sorted(by_pair.items()):
        if len(members) < 2:
            continue
        members.sort(key=lambda r: r.id)
        groups.append(
            DuplicateGroup(user_id, order_id, keep=members[-1], extra=tuple(members[:-1]))
        )
    return Duplicates.of(groups)


# One pass over the table, grouped by sorting (SQL_BIG_RESULT): on 500,000 rows ~0.4 s, where
# the optimizer's own choice, a temporary table, takes ~1.5 s, and the GROUP BY as a derived
# table joined back to the rows ~2-3 s.
_GROUPS = text(
    "SELECT SQL_BIG_RESULT user_id, order_id, COUNT(*), GROUP_CONCAT(id ORDER BY id) "  # noqa: S608
    f"FROM {CONSUME} GROUP BY user_id, order_id HAVING COUNT(*) > 1"
)


_PG_GROUPS = text(_pg.duplicate_groups_sql(CONSUME))


async def scan_duplicates(conn: AsyncConnection) -> Duplicates:
    """Every duplicate group, read without locks (the check; the dedupe locks them afterwards)."""
    ids: list[int] = []
    groups = _PG_GROUPS if _pg.is_pg(conn) else _GROUPS
    for user_id, order_id, count, joined in await conn.execute(groups):
        listed = joined.decode() if isinstance(joined, bytes) else str(joined)
        group_ids = [int(i) for i in listed.split(",") if i]
        if len(group_ids) != count:  # past group_concat_max_len: read this group's ids directly
            group_ids = [
                r[0]
                for r in await conn.execute(
                    select(power_consume.c.id).where(
                        power_consume.c.user_id == user_id, power_consume.c.order_id == order_id
                    )
                )
            ]
        ids.extend(group_ids)
    c = power_consume.c
    stmt = select(*_ROW_COLUMNS).where(c.id.in_(bindparam("ids", expanding=True)))
    rows: list[ConsumeRow] = []
    for chunk in chunks(sorted(ids), 2000):
        rows.extend(ConsumeRow(*x) for x in await conn.execute(stmt, {"ids": list(chunk)}))
    return _group(rows)


async def count_duplicates(conn: AsyncConnection) -> tuple[int, int]:
    """(duplicate groups, extra rows) - the runbook's verification query."""
    hint = "" if _pg.is_pg(conn) else "SQL_BIG_RESULT "
    counts = [
        int(r[0])
        for r in await conn.execute(
            text(
                f"SELECT {hint}COUNT(*) FROM {CONSUME} GROUP BY user_id, order_id "  # noqa: S608
                "HAVING COUNT(*) > 1"
            )
        )
    ]
    return len(counts), sum(counts) - len(counts)


async def lock_duplicates(
    conn: AsyncConnection, found: Duplicates, *, exclusive: bool
) -> Duplicates:
    """Re-read the rows of the groups ``found`` by a scan under row locks, by primary key.

    The locked rows are the truth: a group that stopped being duplicate (a concurrent cleanup)
    drops out, and the max id is taken from what is locked. Rows inserted since the scan are
    not touched - locking by primary key never waits for a charge's uncommitted INSERT - so a
    duplicate that appears now is left for the next round (``uk_user_order`` refuses it, and
    ``up`` dedupes again).
    """
    c = power_consume.c
    stmt = (
        select(*_ROW_COLUMNS)
        .where(c.id.in_(bindparam("ids", expanding=True)))
        .order_by(c.id)
        .with_for_update(read=not exclusive)
    )
    ids = sorted(r.id for g in found.groups for r in (*g.extra, g.keep))
    rows: list[ConsumeRow] = []
    for chunk in chunks(ids):
        rows.extend(ConsumeRow(*x) for x in await conn.execute(stmt, {"ids": list(chunk)}))
    return _group(rows)
