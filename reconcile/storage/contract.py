"""What the daemon needs of the live schema, checked once at start-up by introspection.

Upstream's DDL is the contract (``tests/fixtures/upstream``): every column the daemon reads or
writes is declared in :mod:`reconcile.storage.schema` with upstream's name, type family and
nullability. Of those, the columns in :data:`OPTIONAL` are absent on some installs (they come with
upstream's ``add_missing_order_fields.sql``): the daemon uses them where the live schema has them
and skips them where it does not - decided here, once, never by catching a database error.

Everything else is required. :func:`inspect_live` names each missing table, column and index with
its remedy, so ``doctor``, ``migrate check`` and every command that touches hotgo's tables can
refuse to start (exit 1) before doing any work.
See docs/architecture.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import Table, func, inspect, select
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.errors import SchemaNotReady
from reconcile.storage.db import Database
from reconcile.storage.schema import (
    HOTGO_TABLES,
    OWN_TABLES,
    ROBOT_CLOSE_INDEX,
    SWEEP_INDEX,
    UNIQUE_KEY,
    create_embedded_schema,
    power_consume,
    trading_order,
)

#: columns used when present, skipped when absent
OPTIONAL: dict[str, frozenset[str]] = {
    trading_order.name: frozenset(
        {"close_order_id", "close_client_order_id", "open_fee", "close_fee"}
    ),
}

_REMEDY = {
    (trading_order.name, "power_consumed"): "run add_power_consumed_field.sql / migrate up",
    (trading_order.name, "power_amount"): "run add_power_consumed_field.sql / migrate up",
}
_MIGRATE = "run `toogo-reconcile migrate up`"


@dataclass(frozen=True)
class LiveSchema:
    """The live database as the daemon sees it: what is missing, which optional columns exist."""

    problems: tuple[str, ...] = ()
    present: dict[str, frozenset[str]] = field(default_factory=dict)
    #: those of ``problems`` that `migrate up` does not mend (a damaged or foreign database)
    by_hand: tuple[str, ...] = ()

    @property
    def ready(self) -> bool:
        return not self.problems

    def has(self, table: Table | str, column: str) -> bool:
        name = table if isinstance(table, str) else table.name
        return column in self.present.get(name, frozenset())

    @classmethod
    def complete(cls) -> LiveSchema:
        """Every declared column present (the embedded default creates them all)."""
        return cls(present={t.name: frozenset(c.name for c in t.columns) for t in HOTGO_TABLES})


def required_columns(table: Table) -> list[str]:
    optional = OPTIONAL.get(table.name, frozenset())
    return [c.name for c in table.columns if c.name not in optional]


async def inspect_live(conn: AsyncConnection) -> LiveSchema:
    """Introspect the schema once; the problems name each missing piece with its remedy."""

    def read(sync_conn: Any) -> LiveSchema:
        insp = inspect(sync_conn)
        tables = set(insp.get_table_names())
        problems: list[str] = []
        present: dict[str, frozenset[str]] = {}
        absent = [t.name for t in HOTGO_TABLES if t.name not in tables]
        if absent:
            problems.append(
                f"missing hotgo tables: {', '.join(absent)} - is database.url the hotgo database?"
            )
        for table in HOTGO_TABLES:
            if table.name not in tables:
                continue
            have = frozenset(c["name"] for c in insp.get_columns(table.name))
            present[table.name] = have
            for column in required_columns(table):
                if column not in have:
                    remedy = _REMEDY.get((table.name, column), "upstream's DDL has it: repair it")
                    problems.append(f"{table.name}.{column} missing: {remedy}")
        if power_consume.name in tables and UNIQUE_KEY not in _index_names(
            insp, power_consume.name
        ):
            problems.append(
                f"{power_consume.name} unique key {UNIQUE_KEY} missing: {_MIGRATE} (runbook)"
            )
        if trading_order.name in tables and SWEEP_INDEX not in _index_names(
            insp, trading_order.name
        ):
            problems.append(f"{trading_order.name} index {SWEEP_INDEX} missing: {_MIGRATE}")
        if trading_order.name in tables and ROBOT_CLOSE_INDEX not in _index_names(
            insp, trading_order.name
        ):
            problems.append(f"{trading_order.name} index {ROBOT_CLOSE_INDEX} missing: {_MIGRATE}")
        for own in OWN_TABLES:
            if own.name not in tables:
                problems.append(f"{own.name} missing (the daemon's own table): {_MIGRATE}")
            else:
                own_have = {c["name"] for c in insp.get_columns(own.name)}
                problems.extend(
                    f"{own.name}.{c} missing (the daemon's own table): {_MIGRATE}"
                    for c in (col.name for col in own.columns)
                    if c not in own_have
                )
        by_hand = tuple(p for p in problems if _MIGRATE not in p and "migrate up" not in p)
        return LiveSchema(problems=tuple(problems), present=present, by_hand=by_hand)

    return await conn.run_sync(read)


def _index_names(insp: Any, table: str) -> set[str]:
    """The usable indexes: not one a failed PostgreSQL CONCURRENTLY build left invalid."""
    names = {
        ix["name"]
        for ix in insp.get_indexes(table)
        if not ix.get("dialect_options", {}).get("postgresql_invalid")
    }
    names |= {uc["name"] for uc in insp.get_unique_constraints(table)}
    return names


#: how far hotgo's newest order time may lie ahead of now before database.timezone is wrong
FUTURE_SLACK = timedelta(minutes=5)


async def future_order_times(db: Database) -> str | None:
    """Detect a wrong ``database.timezone`` from hotgo's own data: the newest times of its latest
    orders, read in that zone, lying in the future. (The engine writes DATETIMEs from the Go
    application's clock - upstream deploys with TZ=Asia/Shanghai - whatever the server's zone.)
    None when they look right, or when there is nothing to judge by."""
    o = trading_order.c

    async def read(conn: AsyncConnection) -> Any:
        latest = select(o.created_at, o.updated_at).order_by(o.id.desc()).limit(1000).subquery()
        return (
            await conn.execute(select(func.max(latest.c.created_at), func.max(latest.c.updated_at)))
        ).one()

    row = await db.transaction(read, what="read hotgo's newest order times")
    newest = max((t for t in row if t is not None), default=None)
    if newest is None:
        return None
    ahead = newest - db.now()
    if ahead <= FUTURE_SLACK:
        return None
    hours = ahead.total_seconds() / 3600
    return (
        f"database.timezone {db.settings.timezone}: hotgo's newest hg_trading_order time "
        f"{newest:%Y-%m-%d %H:%M:%S} lies {hours:.1f} h in the future read in that zone - hotgo "
        "writes DATETIMEs in its application's zone (upstream deploys with TZ=Asia/Shanghai): "
        "set database.timezone to it"
    )


async def ensure_schema(db: Database, *, require: bool = True) -> LiveSchema:
    """SQLite (the embedded default) gets its schema on first use; a server must be migrated.

    With ``require``, raises ``SchemaNotReady`` naming every missing table, column and index,
    before any work."""

    async def check(conn: AsyncConnection) -> LiveSchema:
        if not db.dialect.concurrent:  # the embedded default; a server is migrated
            await create_embedded_schema(conn)
        return await inspect_live(conn)

    live = await db.transaction(check, what="check the schema")
    if require and not live.ready:
        raise SchemaNotReady("; ".join(live.problems) + " (see docs/cutover.md)")
    return live


__all__ = [
    "OPTIONAL",
    "LiveSchema",
    "ensure_schema",
    "future_order_times",
    "inspect_live",
    "required_columns",
]
