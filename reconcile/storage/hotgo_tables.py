"""hotgo's tables as the daemon knows them: SQLAlchemy Core mirrors of upstream's DDL, with
production's column types, for the columns the daemon reads or writes. The daemon never creates
or alters them by itself in production (:mod:`reconcile.storage.schema` creates them for tests,
benchmarks and the embedded SQLite default). See docs/architecture.md (how upstream's engine
writes these tables).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from reconcile.storage.column_types import ID, dec

POWER_INDEX = "idx_power_consumed"

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


__all__ = [
    "HOTGO_TABLES",
    "OPTIONAL_HOTGO_TABLES",
    "POWER_INDEX",
    "metadata",
    "power_consume",
    "toogo_config",
    "toogo_user",
    "trading_api_config",
    "trading_order",
    "trading_proxy_config",
    "trading_robot",
    "wallet",
    "wallet_log",
]
