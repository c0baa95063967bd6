"""The daemon's own tables, ``toogo_reconcile_*``: stream cursors and the poll schedule (the
history sync), the bindings of exchange records to orders, records and verdicts, quarantine,
refunds, migration backups, corrections, skipped duplicates and shadow charges. Created by
``toogo-reconcile migrate add-unique-key`` (or on first use by the embedded SQLite default),
never at start-up; hotgo's own engine never reads them. See docs/architecture.md.
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

from reconcile.storage.column_types import BIG_TEXT, ID, PRECISE_TIME, dec

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


poll_schedule = Table(
    # The history sync's shared schedule (reconcile.sync.fleet): one row per API account with
    # running robots; the daemons sharing a database claim due rows (FOR UPDATE SKIP LOCKED) under a
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
    # differently (``power.corrections: adjust``, reconcile/charging/corrections.py): a further
    # debit (delta > 0) or a credit (delta < 0) posted as its own power_consume_adjust ledger row.
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
    # written with the record: which local row was opened by a closing order
    # (reconcile.charging.trades, rule exchange_record). Keyed like the record.
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
    # (reconcile.charging.trades): a leg of another row's trade (found by the daemon, never
    # charged), or an operator's decision on a held row: charge it as a trade, or dismiss it. One
    # row per order.
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


__all__ = [
    "OWN_TABLES",
    "binding",
    "correction",
    "exchange_record",
    "migration_backup",
    "own_metadata",
    "poll_schedule",
    "quarantine",
    "record_order_id",
    "refund",
    "shadow_charge",
    "skipped_duplicate",
    "stream_cursor",
    "verdict",
]
