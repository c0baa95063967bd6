"""The writes of a charge, inside the charging transaction: the consume rows, the debit through
reconcile.charging.ledger, and the orders' ``power_consumed = 1, power_amount = x``; and the
read that tells an order already charged (its consume row).

Two ways to write a page of charges, with the same figures: the client prices each order
(``pricing.compute_charge``) and sends multi-row INSERTs (:func:`debit`; SQLite, MySQL 8); or,
on a server with INSERT ... SELECT ... RETURNING (MariaDB >= 10.5, PostgreSQL), the server
selects the consume rows from the locked orders, priced in SQL (``pricing.charge_sql``), and the
ledger rows' before/after come back from their INSERT (:func:`debit_in_sql`). See
docs/charging.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.charging import ledger
from reconcile.charging.orders import OrderRow
from reconcile.charging.outcomes import ChargeResult, Outcome, Source, UnitOutcome
from reconcile.charging.pricing import Charge, PowerRules, charge_sql
from reconcile.storage.bulk import BulkWriter
from reconcile.storage.db import Database
from reconcile.storage.schema import power_consume, toogo_user, trading_order

_CONSUME_COLUMNS = (
    "user_id",
    "robot_id",
    "order_id",
    "order_sn",
    "profit_amount",
    "consume_power",
    "from_power",
    "vip_level",
    "discount_rate",
    "original_power",
)


async def debit(
    db: Database,
    rules: PowerRules,
    conn: AsyncConnection,
    to_charge: list[tuple[OrderRow, Charge]],
    source: Source,
    now: datetime,
    out: UnitOutcome,
) -> None:
    """Charge ``to_charge`` at the prices the client computed."""
    await BulkWriter(conn).insert(
        power_consume,
        _CONSUME_COLUMNS,
        [
            (
                o.user_id,
                o.robot_id,
                o.id,
                o.order_sn,
                c.profit,
                c.consume_power,
                c.consume_power,
                c.vip_level,
                c.discount_rate,
                c.original_power,
            )
            for o, c in to_charge
        ],
        {"consume_rate": rules.consume_rate, "created_at": now},
    )
    balances = await ledger.lock(db, conn, [o.user_id for o, _ in to_charge])
    posted, _ = await ledger.post(
        conn,
        [ledger.Entry(o.user_id, o.id, o.order_sn, -c.consume_power) for o, c in to_charge],
        balances,
        change_type=ledger.CONSUME,
        now=now,
        remark=f"power consume ({source})",
    )
    for (o, c), p in zip(to_charge, posted, strict=True):
        _charged(o, c.profit, c.consume_power, p.before, p.after, source, out)


async def debit_in_sql(
    db: Database,
    rules: PowerRules,
    conn: AsyncConnection,
    to_charge: list[OrderRow],
    source: Source,
    now: datetime,
    out: UnitOutcome,
) -> None:
    """:func:`debit` done by the server (``Database.returning``): the consume rows are
    ``INSERT ... SELECT``ed from the locked order rows and the users' VIP rows, priced by
    ``pricing.charge_sql`` (the rule of ``compute_charge``, as SQL); the ledger rows and
    their before/after come back from ``ledger.post_consumes``. The figures logged are
    the ones stored. Per page, the client sends order ids, never a figure."""
    ids = ", ".join(str(int(o.id)) for o in to_charge)
    sql = charge_sql(rules, "o.realized_profit", "u.power_discount")
    rate = format(rules.consume_rate, "f")
    mark = "$1" if conn.dialect.name == "postgresql" else "%s"
    await conn.exec_driver_sql(
        f"INSERT INTO {power_consume.name} ({', '.join(_CONSUME_COLUMNS)}, consume_rate, "  # noqa: S608
        "created_at) "
        f"SELECT o.user_id, o.robot_id, o.id, o.order_sn, o.realized_profit, "
        f"{sql.consume_power}, {sql.consume_power}, COALESCE(u.vip_level, 1), "
        f"{sql.discount_rate}, {sql.original_power}, {rate}, {mark} "
        f"FROM {trading_order.name} o "
        f"LEFT JOIN {toogo_user.name} u ON u.member_id = o.user_id "
        f"WHERE o.id IN ({ids}) ORDER BY o.id",
        (now,),
    )
    await ledger.lock_rows(db, conn, [o.user_id for o in to_charge])
    posted = await ledger.post_consumes(
        conn, [o.id for o in to_charge], now=now, remark=f"power consume ({source})"
    )
    for o in to_charge:
        p = posted[o.id]
        _charged(o, o.realized_profit, -p.amount, p.before, p.after, source, out)


def _charged(
    o: OrderRow,
    profit: Decimal | None,
    consume_power: Decimal,
    before: Decimal,
    after: Decimal,
    source: Source,
    out: UnitOutcome,
) -> None:
    out.results.append(ChargeResult(o.id, Outcome.CHARGED, consume_power=consume_power))
    out.events.append(
        (
            "power consumed",
            {
                "user_id": o.user_id,
                "robot_id": o.robot_id,
                "order_id": o.id,
                "order_sn": o.order_sn,
                "profit": profit,
                "consume_power": consume_power,
                "before": before,
                "after": after,
                "source": str(source),
            },
        )
    )


async def mark_charged(conn: AsyncConnection, order_ids: list[int], now: datetime) -> None:
    """``power_consumed = 1`` and ``power_amount`` copied from the order's consume row (the
    figure that was charged)."""
    c = power_consume.c
    await conn.execute(
        trading_order.update()
        .where(trading_order.c.id.in_(order_ids))
        .values(
            power_consumed=1,
            power_amount=select(c.consume_power)
            .where(c.user_id == trading_order.c.user_id, c.order_id == trading_order.c.id)
            .scalar_subquery(),
            updated_at=now,
        )
    )


async def existing_consumes(
    conn: AsyncConnection, orders: Sequence[OrderRow]
) -> dict[tuple[int, int], Decimal]:
    """Consume rows already present for these (user_id, order_id) pairs; the newest wins.

    Looked up with a row-constructor IN on uk_user_order: one index point per order (an IN
    on each column would probe their cross product).
    """
    c = power_consume.c
    rows = await conn.execute(
        select(c.user_id, c.order_id, c.consume_power)
        .where(tuple_(c.user_id, c.order_id).in_([(o.user_id, o.id) for o in orders]))
        .order_by(c.id)
    )
    return {(r.user_id, r.order_id): r.consume_power for r in rows}


__all__ = ["debit", "debit_in_sql", "existing_consumes", "mark_charged"]
