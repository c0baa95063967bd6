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
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import TypeDecorator, TypeEngine

UNIQUE_KEY = "uk_user_order"
SWEEP_INDEX = "idx_reconcile_sweep"
#: the rows of some robots closed since a time (reconcile.trades reads a page's neighbours so):
#: a range per robot, where upstream's idx_robot_id would read each robot's whole history
ROBOT_CLOSE_INDEX = "idx_reconcile_robot_close"
ROBOT_CLOSE_COLUMNS = ("robot_id", "close_time")
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


#: MEDIUMTEXT on MySQL (TEXT holds 64 KiB), TEXT elsewhere (PostgreSQL's has no length)
BIG_TEXT = Text().with_variant(Text(16_000_000), "mysql", "mariadb")

ID = BigInteger().with_variant(
    Integer(), "sqlite"
)  # SQLite autoincrements INTEGER PRIMARY KEY only

metadata = MetaData()

# Each column below exists in upstream's DDL with the same name, type family and nullability
# (tests/test_schema_contract.py checks it against tests/fixtures/upstream). Server defaults are
# upstream's where it has one; a NOT NULL column without a default in upstream has none here, so
# every writer must supply it. Columns marked OPTIONAL are absent on some installs: the daemon
# reads and writes them only where the live schema has them (see reconcile/storage/contract.py).

trading_robot = Table(
    "hg_trading_robot",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("tenant_id", BigInteger, nullable=False, server_default="0"),
    Column("user_id", BigInteger, nullable=False),
    Column("robot_name", String(100), nullable=False),
    Column("api_config_id", BigInteger, nullable=False),
    Column("exchange", String(20), nullable=False, server_default="bitget"),
    Column("symbol", String(20), nullable=False, server_default="BTC_USDT"),
    Column("leverage", Integer, nullable=False, server_default="10"),
    Column("margin_percent", dec(5, 2), nullable=False, server_default="30.00"),
    Column("status", SmallInteger, nullable=True, server_default="1"),
    Column("created_at", DateTime, nullable=True),
    Column("updated_at", DateTime, nullable=True),
    Column("deleted_at", DateTime, nullable=True),
    Index("idx_tenant_user", "tenant_id", "user_id"),
    Index("idx_status", "status"),
    Index("idx_api_config", "api_config_id"),
)

trading_api_config = Table(
    "hg_trading_api_config",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("tenant_id", BigInteger, nullable=False, server_default="0"),
    Column("user_id", BigInteger, nullable=False),
    Column("api_name", String(100), nullable=False),
    Column("platform", String(50), nullable=False),
    Column("base_url", String(255), nullable=False),
    Column("api_key", String(500), nullable=False),
    Column("secret_key", String(500), nullable=False),
    Column("passphrase", String(500), nullable=True),
    Column("status", SmallInteger, nullable=True, server_default="1"),
    Column("created_at", DateTime, nullable=True),
    Column("updated_at", DateTime, nullable=True),
    Column("deleted_at", DateTime, nullable=True),
    Index("idx_api_tenant_user", "tenant_id", "user_id"),
)

trading_order = Table(
    "hg_trading_order",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("tenant_id", BigInteger, nullable=False, server_default="0"),
    Column("user_id", BigInteger, nullable=False),
    Column("robot_id", BigInteger, nullable=False),
    Column("order_sn", String(64), nullable=False),
    # the engine's OPENING order id (or a POS-... placeholder); never a record key of ours
    Column("exchange_order_id", String(100), nullable=True),
    Column("symbol", String(20), nullable=False),
    Column("direction", String(10), nullable=False),
    Column("open_price", dec(15, 4), nullable=False),
    Column("close_price", dec(15, 4), nullable=True),
    Column("close_order_id", String(100), nullable=True),  # OPTIONAL: the closing order's id
    Column("close_client_order_id", String(100), nullable=True),  # OPTIONAL
    Column("quantity", dec(15, 8), nullable=False),
    Column("leverage", Integer, nullable=False),
    Column("margin", dec(15, 4), nullable=False),
    Column("open_fee", dec(15, 8), nullable=True),  # OPTIONAL
    Column("realized_profit", dec(15, 4), nullable=True, server_default="0"),
    Column("open_time", DateTime, nullable=False),
    Column("close_time", DateTime, nullable=True),
    Column("close_fee", dec(15, 8), nullable=True),  # OPTIONAL
    Column("hold_duration", Integer, nullable=True, server_default="0"),
    Column("status", SmallInteger, nullable=True, server_default="1"),
    Column("close_reason", String(50), nullable=True),
    Column("power_consumed", SmallInteger, nullable=False, server_default="0"),
    Column("power_amount", dec(20, 8), nullable=False, server_default="0"),
    Column("remark", String(500), nullable=True),
    Column("created_at", DateTime, nullable=True),
    Column("updated_at", DateTime, nullable=True),
    UniqueConstraint("order_sn", name="uk_order_sn"),
    Index("idx_order_tenant_user", "tenant_id", "user_id"),
    Index("idx_robot_id", "robot_id"),
    Index("idx_order_status", "status"),
    Index("idx_order_symbol", "symbol"),
    Index(POWER_INDEX, "power_consumed", "status", "realized_profit"),
)

power_consume = Table(
    "hg_toogo_power_consume",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("user_id", BigInteger, nullable=False),
    Column("robot_id", BigInteger, nullable=False),
    Column("order_id", BigInteger, nullable=False),
    Column("order_sn", String(64), nullable=False),
    Column("profit_amount", dec(20, 8), nullable=False),
    Column("consume_rate", dec(5, 4), nullable=False),
    Column("consume_power", dec(20, 8), nullable=False),
    Column("from_power", dec(20, 8), nullable=False, server_default="0"),
    Column("vip_level", SmallInteger, nullable=False, server_default="1"),
    Column("discount_rate", dec(5, 2), nullable=False, server_default="0"),
    Column("original_power", dec(20, 8), nullable=False),
    Column("created_at", DateTime, nullable=True),
    Index("idx_consume_user_id", "user_id"),
    Index("idx_consume_order_id", "order_id"),
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
    Column("change_type", String(30), nullable=False),
    Column("change_amount", dec(20, 8), nullable=False),
    Column("before_amount", dec(20, 8), nullable=False),
    Column("after_amount", dec(20, 8), nullable=False),
    Column("related_id", BigInteger, nullable=True),
    Column("related_type", String(30), nullable=True),
    Column("order_sn", String(64), nullable=True),
    Column("remark", String(500), nullable=True),
    Column("created_at", DateTime, nullable=True),
    Index("idx_wallet_log_user", "user_id"),
)

toogo_user = Table(
    "hg_toogo_user",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("member_id", BigInteger, nullable=False),
    Column("vip_level", SmallInteger, nullable=False, server_default="1"),
    Column("invite_code", String(20), nullable=False),
    Column("power_discount", dec(5, 2), nullable=False, server_default="0"),
    Column("created_at", DateTime, nullable=True),
    UniqueConstraint("member_id", name="uk_member_id"),
    UniqueConstraint("invite_code", name="uk_invite_code"),
)

toogo_config = Table(
    "hg_toogo_config",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("group", String(50), nullable=False),
    Column("key", String(100), nullable=False),
    Column("value", Text, nullable=False),
    Column("name", String(100), nullable=False),
    UniqueConstraint("group", "key", name="uk_group_key"),
)

#: the engine's global proxy (user_id 0, tenant_id 0, enabled 1), read as the engine reads it
#: (upstream server/internal/logic/toogo/exchange_manager.go 130-170). Optional: an install
#: without the table has no proxy; the contract does not require it.
trading_proxy_config = Table(
    "hg_trading_proxy_config",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("tenant_id", BigInteger, nullable=False, server_default="0"),
    Column("user_id", BigInteger, nullable=False),
    Column("enabled", SmallInteger, nullable=True, server_default="0"),
    Column("proxy_type", String(20), nullable=True, server_default="socks5"),
    Column("proxy_address", String(255), nullable=True, server_default="127.0.0.1:10808"),
    Column("auth_enabled", SmallInteger, nullable=True, server_default="0"),
    Column("username", String(100), nullable=True),
    Column("password", String(500), nullable=True),
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
#: hotgo tables the daemon reads when present (checked against upstream's DDL like the others)
OPTIONAL_HOTGO_TABLES = (trading_proxy_config,)

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

#: microsecond DATETIME on MySQL (its DATETIME keeps whole seconds): due times a second apart
PRECISE_TIME = DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")

poll_schedule = Table(
    # The history sync's shared schedule (reconcile.fleet): one row per API account with running
    # robots; the daemons sharing a database claim due rows (FOR UPDATE SKIP LOCKED) under a
    # short lease. Times are the database server's clock, in UTC; ``due_at`` far in the future:
    # the account has no running robot any more.
    "toogo_reconcile_poll",
    own_metadata,
    Column("account_id", BigInteger, primary_key=True, autoincrement=False),
    Column("due_at", PRECISE_TIME, nullable=False),  # may next be polled from then on
    Column("owner", String(64), nullable=True),  # the daemon holding the lease: host:pid:random
    Column("lease_until", PRECISE_TIME, nullable=True),
    Column("polled_at", PRECISE_TIME, nullable=True),  # the last poll's start (its claim)
    Index("idx_poll_due", "due_at"),
)

binding = Table(
    # The daemon's own link between an exchange record and the local order it is (kind 'order':
    # one per order, uk_binding_order) or a part of (kind 'part': a partial close of a position
    # hotgo recorded as one order). Written in the transaction that writes the order it binds;
    # hotgo's exchange_order_id keeps meaning "the opening order's id".
    "toogo_reconcile_binding",
    own_metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("platform", String(20), nullable=False),
    Column("account_id", BigInteger, nullable=False),
    Column("record_key", String(128), nullable=False),
    Column("order_id", BigInteger, nullable=False),
    Column("primary_order_id", BigInteger, nullable=True),  # = order_id for kind 'order'
    Column("kind", String(10), nullable=False),
    Column("rule", String(20), nullable=False),
    Column("created_at", DateTime, nullable=True),
    UniqueConstraint("platform", "account_id", "record_key", name="uk_binding_record"),
    UniqueConstraint("primary_order_id", name="uk_binding_order"),
    Index("idx_binding_order", "order_id"),
)

exchange_record = Table(
    # The exchange record a binding was written for, as the history sync normalized it (exact
    # decimal strings) and as the exchange sent it: the source end of an order's chain
    # (`report --order`). Written in the transaction that writes its binding, keyed like it.
    # ``profit`` is the figure the platform charges on, as hg_trading_order.realized_profit would
    # hold it; ``close_time`` is in database.timezone, like the orders it is compared with.
    "toogo_reconcile_record",
    own_metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("platform", String(20), nullable=False),
    Column("account_id", BigInteger, nullable=False),
    Column("record_key", String(128), nullable=False),
    Column("symbol", String(40), nullable=False),
    Column("close_time", DateTime, nullable=False),
    Column("profit", dec(15, 4), nullable=False),
    Column("profit_basis", String(10), nullable=False),
    Column("normalized_json", Text, nullable=False),
    Column("raw_json", BIG_TEXT, nullable=False),
    Column("created_at", DateTime, nullable=False),
    UniqueConstraint("platform", "account_id", "record_key", name="uk_record_key"),
)

skipped_duplicate = Table(
    # One row per `skip duplicate` event (an order found already charged: never debited again),
    # written in the consumer's transaction that decided it, with the event's fields.
    "toogo_reconcile_skip",
    own_metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("user_id", BigInteger, nullable=False),
    Column("order_id", BigInteger, nullable=False),
    Column("source", String(10), nullable=False),
    Column("consume_power", dec(20, 8), nullable=False),  # the existing consume row's
    Column("would_charge", dec(20, 8), nullable=True),  # today's figure, where it differs
    Column("repaired_flag", SmallInteger, nullable=False, server_default="0"),
    Column("created_at", DateTime, nullable=False),
    Index("idx_skip_created", "created_at"),
    Index("idx_skip_order", "order_id"),
)

quarantine = Table(
    "toogo_reconcile_quarantine",
    own_metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("platform", String(20), nullable=False),
    Column("account_id", BigInteger, nullable=False),
    Column("symbol", String(40), nullable=False),
    Column("record_key", String(128), nullable=False),
    Column("reason", Text, nullable=False),
    Column("raw_json", BIG_TEXT, nullable=False),
    Column("context_json", Text, nullable=False),
    Column("close_time", DateTime, nullable=True),  # UTC
    Column("first_seen", DateTime, nullable=False),  # UTC
    Column("last_seen", DateTime, nullable=False),  # UTC
    Column("attempts", Integer, nullable=False, server_default="1"),
    Column("resolved_at", DateTime, nullable=True),  # UTC
    Column("resolution", String(64), nullable=True),
    UniqueConstraint("platform", "account_id", "record_key", name="uk_quarantine_record"),
    Index("idx_quarantine_unresolved", "resolved_at", "platform", "account_id"),
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

correction = Table(
    # One row per correction of a charged order whose realized profit the exchange reported
    # differently (``power.corrections: adjust``, reconcile/charging/corrections.py): a further debit
    # (delta > 0) or a credit (delta < 0) posted as its own power_consume_adjust ledger row.
    # The consume row is never rewritten; what the order has cost is the consume row's
    # consume_power plus the deltas. Revisions count 1, 2, ... per order; uk_correction_revision
    # lets a revision be applied once however many syncs see it.
    "toogo_reconcile_correction",
    own_metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("order_id", BigInteger, nullable=False),
    Column("user_id", BigInteger, nullable=False),
    Column("revision", Integer, nullable=False),
    Column("order_sn", String(64), nullable=False, server_default=""),
    Column("record_key", String(128), nullable=True),  # the exchange record that reported it
    Column("old_profit", dec(20, 8), nullable=False),  # what the charge so far was priced on
    Column("new_profit", dec(20, 8), nullable=False),  # the exchange's figure
    Column("old_charge", dec(20, 8), nullable=False),  # consume_power + earlier deltas
    Column("new_charge", dec(20, 8), nullable=False),  # the charge at new_profit
    Column("delta", dec(20, 8), nullable=False),  # new_charge - old_charge
    Column("wallet_log_id", BigInteger, nullable=False),  # its ledger row (change = -delta)
    Column("created_at", DateTime, nullable=False),
    UniqueConstraint("order_id", "revision", name="uk_correction_revision"),
    Index("idx_correction_user", "user_id", "order_id"),
)

shadow_charge = Table(
    # `power.mode: shadow`: what the daemon would have charged, one row per order
    # (uk_shadow_order), while hotgo's own engine is the live charger; `report --shadow`
    # compares it with hg_toogo_power_consume. Never read by charging.
    "toogo_reconcile_shadow",
    own_metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("order_id", BigInteger, nullable=False),
    Column("user_id", BigInteger, nullable=False),
    Column("robot_id", BigInteger, nullable=False),
    Column("order_sn", String(64), nullable=False),
    Column("profit_amount", dec(20, 8), nullable=False),  # the basis: realized_profit
    Column("consume_rate", dec(5, 4), nullable=False),
    Column("discount_rate", dec(5, 2), nullable=False, server_default="0"),  # percent
    Column("consume_power", dec(20, 8), nullable=False),  # the would-be charge
    Column("source", String(20), nullable=False),
    Column("created_at", DateTime, nullable=False),
    UniqueConstraint("order_id", name="uk_shadow_order"),
    Index("idx_shadow_created", "created_at"),
)

record_order_id = Table(
    # The exchange order ids a record names (binance's and bybit's closing orderId), one row each,
    # written with the record: which local row was opened by a closing order (reconcile.trades,
    # rule exchange_record). Keyed like the record.
    "toogo_reconcile_record_order",
    own_metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("platform", String(20), nullable=False),
    Column("account_id", BigInteger, nullable=False),
    Column("record_key", String(128), nullable=False),
    Column("exchange_order_id", String(100), nullable=False),
    UniqueConstraint(
        "platform", "account_id", "record_key", "exchange_order_id", name="uk_record_order"
    ),
    Index("idx_record_order_id", "exchange_order_id"),
)

verdict = Table(
    # What a closed row of hg_trading_order is, where that is not simply "a trade"
    # (reconcile.trades): a leg of another row's trade (found by the daemon, never charged), or an
    # operator's decision on a held row: charge it as a trade, or dismiss it. One row per order.
    "toogo_reconcile_verdict",
    own_metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("order_id", BigInteger, nullable=False),
    Column("verdict", String(10), nullable=False),  # leg | trade | dismissed
    Column("rule", String(20), nullable=False),
    Column("trade_order_id", BigInteger, nullable=True),  # a leg's trade
    Column("actor", String(64), nullable=False),  # daemon, or the operator's --by
    Column("note", String(255), nullable=True),
    Column("created_at", DateTime, nullable=False),
    UniqueConstraint("order_id", name="uk_verdict_order"),
    Index("idx_verdict_kind", "verdict", "order_id"),
)

OWN_TABLES = (
    stream_cursor,
    poll_schedule,
    binding,
    exchange_record,
    record_order_id,
    verdict,
    quarantine,
    refund,
    skipped_duplicate,
    correction,
    shadow_charge,
)


# The sweep's candidate index (PERFORMANCE.md): InnoDB appends the primary key, so entries are
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
