"""SQLAlchemy Core definitions of the hotgo tables the daemon touches, and the daemon's own tables.

Column types are production's (see DESIGN.md). The daemon never creates or alters hotgo's tables
by itself in production: ``create_hotgo_schema`` exists for tests, benchmarks and the embedded
SQLite default; ``toogo-reconcile migrate`` is the only production path that changes the schema.

On SQLite (the embedded default only) DECIMAL columns are stored as text holding the exact
decimal string, because SQLite would otherwise store them as binary floats.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    Numeric,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    inspect,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import TypeDecorator, TypeEngine

UNIQUE_KEY = "uk_user_order"
SWEEP_INDEX = "idx_reconcile_sweep"
POWER_INDEX = "idx_power_consumed"


class _SqliteDecimal(TypeDecorator[Decimal]):
    """Exact decimals on SQLite: stored as text, returned as ``Decimal``."""

    impl = String(40)
    cache_ok = True

    def __init__(self, scale: int) -> None:
        super().__init__()
        self._quantum = Decimal(1).scaleb(-scale)

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return str(Decimal(value).quantize(self._quantum))

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return Decimal(str(value))


def dec(precision: int, scale: int) -> TypeEngine[Decimal]:
    """DECIMAL(precision, scale) in MySQL, exact text on SQLite."""
    return Numeric(precision, scale, asdecimal=True).with_variant(_SqliteDecimal(scale), "sqlite")


ID = BigInteger().with_variant(
    Integer(), "sqlite"
)  # SQLite autoincrements INTEGER PRIMARY KEY only

metadata = MetaData()

trading_robot = Table(
    "hg_trading_robot",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("tenant_id", BigInteger, nullable=False, server_default="0"),
    Column("user_id", BigInteger, nullable=False),
    Column("api_config_id", BigInteger, nullable=False),
    Column("robot_name", String(100), nullable=False, server_default=""),
    Column("exchange", String(20), nullable=False),
    Column("symbol", String(20), nullable=False),
    Column("leverage", Integer, nullable=False, server_default="1"),
    Column("margin", dec(15, 4), nullable=False, server_default="0"),
    Column("status", SmallInteger, nullable=False, server_default="1"),
    Column("created_at", DateTime, nullable=True),
    Column("updated_at", DateTime, nullable=True),
    Column("deleted_at", DateTime, nullable=True),
    Index("idx_user_id", "user_id"),
    Index("idx_status", "status"),
)

trading_api_config = Table(
    "hg_trading_api_config",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("user_id", BigInteger, nullable=False),
    Column("api_name", String(100), nullable=False, server_default=""),
    Column("platform", String(20), nullable=False),
    Column("base_url", String(255), nullable=True),
    Column("api_key", String(500), nullable=False, server_default=""),
    Column("secret_key", String(500), nullable=False, server_default=""),
    Column("passphrase", String(500), nullable=True),
    Column("status", SmallInteger, nullable=False, server_default="1"),
    Column("created_at", DateTime, nullable=True),
    Column("updated_at", DateTime, nullable=True),
    Column("deleted_at", DateTime, nullable=True),
    Index("idx_api_user_id", "user_id"),
)

trading_order = Table(
    "hg_trading_order",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("tenant_id", BigInteger, nullable=False, server_default="0"),
    Column("user_id", BigInteger, nullable=False),
    Column("robot_id", BigInteger, nullable=False),
    Column("order_sn", String(64), nullable=False),
    Column("exchange_order_id", String(100), nullable=True),
    Column("symbol", String(20), nullable=False),
    Column("direction", String(10), nullable=False),
    Column("open_price", dec(15, 4), nullable=False, server_default="0"),
    Column("close_price", dec(15, 4), nullable=True),
    Column("quantity", dec(15, 8), nullable=False, server_default="0"),
    Column("leverage", Integer, nullable=False, server_default="1"),
    Column("margin", dec(15, 4), nullable=False, server_default="0"),
    Column("realized_profit", dec(15, 4), nullable=False, server_default="0"),
    Column("open_time", DateTime, nullable=False),
    Column("close_time", DateTime, nullable=True),
    Column("hold_duration", Integer, nullable=False, server_default="0"),
    Column("status", SmallInteger, nullable=False, server_default="1"),
    Column("close_reason", String(50), nullable=True),
    Column("power_consumed", SmallInteger, nullable=False, server_default="0"),
    Column("power_amount", dec(20, 8), nullable=False, server_default="0"),
    Column("remark", String(255), nullable=True),
    Column("created_at", DateTime, nullable=True),
    Column("updated_at", DateTime, nullable=True),
    UniqueConstraint("order_sn", name="uk_order_sn"),
    Index("idx_order_user_id", "user_id"),
    Index("idx_robot_id", "robot_id"),
    Index("idx_exchange_order_id", "exchange_order_id"),
    Index(POWER_INDEX, "power_consumed", "status", "realized_profit"),
)

power_consume = Table(
    "hg_toogo_power_consume",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("user_id", BigInteger, nullable=False),
    Column("robot_id", BigInteger, nullable=False, server_default="0"),
    Column("order_id", BigInteger, nullable=False),
    Column("order_sn", String(64), nullable=False, server_default=""),
    Column("profit_amount", dec(20, 8), nullable=False, server_default="0"),
    Column("consume_rate", dec(5, 4), nullable=False, server_default="0"),
    Column("consume_power", dec(20, 8), nullable=False, server_default="0"),
    Column("from_power", dec(20, 8), nullable=False, server_default="0"),
    Column("vip_level", SmallInteger, nullable=False, server_default="1"),
    Column("discount_rate", dec(5, 2), nullable=False, server_default="0"),
    Column("original_power", dec(20, 8), nullable=False, server_default="0"),
    Column("created_at", DateTime, nullable=True),
    Index("idx_consume_user_id", "user_id"),
)

wallet = Table(
    "hg_toogo_wallet",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("user_id", BigInteger, nullable=False),
    Column("power", dec(20, 8), nullable=False, server_default="0"),
    Column("gift_power", dec(20, 8), nullable=False, server_default="0"),
    Column("total_power_consume", dec(20, 8), nullable=False, server_default="0"),
    Column("created_at", DateTime, nullable=True),
    Column("updated_at", DateTime, nullable=True),
    UniqueConstraint("user_id", name="uk_user_id"),
)

wallet_log = Table(
    "hg_toogo_wallet_log",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("user_id", BigInteger, nullable=False),
    Column("account_type", String(20), nullable=False),
    Column("change_type", String(50), nullable=False),
    Column("change_amount", dec(20, 8), nullable=False),
    Column("before_amount", dec(20, 8), nullable=False),
    Column("after_amount", dec(20, 8), nullable=False),
    Column("related_id", BigInteger, nullable=True),
    Column("related_type", String(50), nullable=True),
    Column("order_sn", String(64), nullable=True),
    Column("remark", String(255), nullable=True),
    Column("created_at", DateTime, nullable=True),
    Index("idx_wallet_log_user", "user_id", "id"),
    Index("idx_wallet_log_related", "related_type", "related_id"),
)

toogo_user = Table(
    "hg_toogo_user",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("member_id", BigInteger, nullable=False),
    Column("vip_level", SmallInteger, nullable=False, server_default="1"),
    Column("power_discount", dec(5, 2), nullable=False, server_default="0"),
    Column("created_at", DateTime, nullable=True),
    UniqueConstraint("member_id", name="uk_member_id"),
)

toogo_config = Table(
    "hg_toogo_config",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("group", String(50), nullable=False),
    Column("key", String(100), nullable=False),
    Column("value", Text, nullable=True),
    UniqueConstraint("group", "key", name="uk_group_key"),
)

HOTGO_TABLES = (
    trading_robot,
    trading_api_config,
    trading_order,
    power_consume,
    wallet,
    wallet_log,
    toogo_user,
    toogo_config,
)

# ---------------------------------------------------------------------------------------------
# The daemon's own tables (created by `toogo-reconcile migrate add-unique-key`, never at start-up)

own_metadata = MetaData()

stream_cursor = Table(
    "toogo_reconcile_cursor",
    own_metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("platform", String(20), nullable=False),
    Column("account_id", BigInteger, nullable=False),
    Column("symbol", String(40), nullable=False),
    Column("complete_until", DateTime, nullable=True),
    Column("keys_at_cursor", Text, nullable=True),
    Column("updated_at", DateTime, nullable=True),
    UniqueConstraint("platform", "account_id", "symbol", name="uk_stream"),
)

refund = Table(
    # One row per duplicate consume row that `migrate dedupe --refund` deleted and credited back.
    # uk_refund_consume makes a second refund of the same deleted row impossible; a refund that
    # `migrate rollback --reverse-refunds` debited again is kept with reversed = 1.
    "toogo_reconcile_refund",
    own_metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("consume_id", BigInteger, nullable=False),
    Column("backup_id", BigInteger, nullable=True),  # the dedupe (toogo_reconcile_backup.id)
    Column("user_id", BigInteger, nullable=False),
    Column("order_id", BigInteger, nullable=False),
    Column("order_sn", String(64), nullable=False, server_default=""),
    Column("amount", dec(20, 8), nullable=False),
    Column("wallet_log_id", BigInteger, nullable=True),
    Column("reversed", SmallInteger, nullable=False, server_default="0"),
    Column("reversal_wallet_log_id", BigInteger, nullable=True),
    Column("created_at", DateTime, nullable=True),
    Column("reversed_at", DateTime, nullable=True),
    UniqueConstraint("consume_id", name="uk_refund_consume"),
    Index("idx_refund_backup", "backup_id"),
    Index("idx_refund_user", "user_id", "order_id"),
)

migration_backup = Table(
    # The registry of backups taken by `migrate backup` / `migrate dedupe` (kind 'backup' or
    # 'dedupe'), so `migrate rollback` finds the last dedupe's backup tables.
    "toogo_reconcile_backup",
    own_metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("kind", String(20), nullable=False),
    Column("consume_table", String(64), nullable=False),
    Column("wallet_table", String(64), nullable=False),
    Column("consume_rows", Integer, nullable=False, server_default="0"),
    Column("wallet_rows", Integer, nullable=False, server_default="0"),
    Column("dup_groups", Integer, nullable=False, server_default="0"),
    Column("deleted_rows", Integer, nullable=False, server_default="0"),
    Column("refunded_rows", Integer, nullable=False, server_default="0"),
    Column("refunded_amount", dec(20, 8), nullable=False, server_default="0"),
    Column("created_at", DateTime, nullable=False),
    Column("rolled_back_at", DateTime, nullable=True),
    Index("idx_backup_kind", "kind", "id"),
)

OWN_TABLES = (stream_cursor, refund)


# The sweep's candidate index (PERFORMANCE.md): InnoDB appends the primary key, so entries are
# ordered by (power_consumed, status, close_time, id) - exactly the sweep's keyset order.
SWEEP_INDEX_COLUMNS = ("power_consumed", "status", "close_time")


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
    if not await index_exists(conn, trading_order.name, SWEEP_INDEX):
        cols = ", ".join(SWEEP_INDEX_COLUMNS)
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


async def schema_problems(conn: AsyncConnection) -> list[str]:
    """What keeps the daemon from running safely on this database (empty when ready)."""
    tables = await table_names(conn)
    missing = [t.name for t in HOTGO_TABLES if t.name not in tables]
    if missing:
        return [f"missing hotgo tables: {', '.join(missing)}"]
    problems: list[str] = []
    if not await index_exists(conn, power_consume.name, UNIQUE_KEY):
        problems.append(f"{power_consume.name} has no unique key {UNIQUE_KEY}")

    def order_columns(sync_conn: Any) -> set[str]:
        return {c["name"] for c in inspect(sync_conn).get_columns(trading_order.name)}

    have = await conn.run_sync(order_columns)
    for col in ("power_consumed", "power_amount"):
        if col not in have:
            problems.append(f"{trading_order.name} has no column {col}")
    own_missing = [t.name for t in OWN_TABLES if t.name not in tables]
    if own_missing:
        problems.append(f"the daemon's own tables are missing: {', '.join(own_missing)}")
    return problems


async def create_embedded_schema(conn: AsyncConnection) -> None:
    """The embedded SQLite default creates everything on first use."""
    await create_hotgo_schema(conn, with_unique_key=True)
    await create_own_schema(conn)
