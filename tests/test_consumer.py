"""Each outcome of the consumer, on MariaDB and on SQLite."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from kits.databases import open_database
from kits.seed import (
    assert_ledger_consistent,
    insert_order,
    legacy_charge,
    live_columns,
    set_discount,
    set_wallet,
)
from reconcile.charging import ledger
from reconcile.charging.consumer import PowerConsumer
from reconcile.charging.outcomes import Outcome, Source
from reconcile.charging.price_inputs import load_power_rules
from reconcile.charging.pricing import PowerOverride, PowerRules
from reconcile.errors import DuplicateKey, OrderNotFound
from reconcile.storage.db import Database
from reconcile.storage.schema import power_consume, toogo_config, trading_order, wallet, wallet_log

RULES = PowerRules(Decimal("0.10"), Decimal("0.01"))


async def rows(db: Database, table: Any, **where: Any) -> list[Any]:
    async def read(conn: AsyncConnection) -> list[Any]:
        stmt = select(*await live_columns(conn, table)).where(
            *(table.c[k] == v for k, v in where.items())
        )
        return list(await conn.execute(stmt.order_by(table.c.id)))

    return await db.transaction(read, what="test read")


async def test_charges_a_profitable_closed_order(
    any_db: Database, logs: list[dict[str, Any]]
) -> None:
    await set_wallet(any_db, 7, Decimal("100"))
    order_id = await insert_order(
        any_db, user_id=7, robot_id=70, realized_profit=Decimal("0.7920"), order_sn="SN-A"
    )
    result = await PowerConsumer(any_db, RULES).charge(order_id, Source.REALTIME)

    assert (result.outcome, result.consume_power) == (Outcome.CHARGED, Decimal("0.0792"))
    [consume] = await rows(any_db, power_consume)
    assert (consume.user_id, consume.order_id, consume.robot_id, consume.order_sn) == (
        7,
        order_id,
        70,
        "SN-A",
    )
    assert (
        consume.consume_power == consume.from_power == consume.original_power == Decimal("0.0792")
    )
    assert (consume.consume_rate, consume.discount_rate, consume.vip_level) == (
        Decimal("0.1"),
        0,
        1,
    )
    [w] = await rows(any_db, wallet, user_id=7)
    assert w.power == Decimal("99.9208") and w.total_power_consume == Decimal("0.0792")
    assert w.gift_power == Decimal("5"), "gift power is never touched"
    [entry] = await rows(any_db, wallet_log)
    assert (entry.account_type, entry.change_type, entry.related_type, entry.related_id) == (
        "power",
        "power_consume",
        "trading_order",
        order_id,
    )
    assert (entry.change_amount, entry.before_amount, entry.after_amount) == (
        Decimal("-0.0792"),
        Decimal("100"),
        Decimal("99.9208"),
    )
    [order] = await rows(any_db, trading_order)
    assert (order.power_consumed, order.power_amount) == (1, Decimal("0.0792"))
    [event] = [e for e in logs if e["event"] == "power consumed"]
    assert event == {
        "event": "power consumed",
        "log_level": "info",
        "user_id": 7,
        "robot_id": 70,
        "order_id": order_id,
        "order_sn": "SN-A",
        "profit": Decimal("0.7920"),
        "consume_power": Decimal("0.07920000"),
        "before": Decimal("100"),
        "after": Decimal("99.9208"),
        "source": "realtime",
    }
    await assert_ledger_consistent(any_db, {7: Decimal("100")})


async def test_second_charge_is_a_skipped_duplicate(
    any_db: Database, logs: list[dict[str, Any]]
) -> None:
    order_id = await insert_order(any_db, user_id=3, realized_profit=Decimal("12.5"))
    consumer = PowerConsumer(any_db, RULES)
    first = await consumer.charge(order_id, Source.REALTIME)
    second = await consumer.charge(order_id, Source.SWEEP)

    assert first.outcome is Outcome.CHARGED
    assert (second.outcome, second.consume_power, second.conflict) == (
        Outcome.SKIPPED_DUPLICATE,
        Decimal("1.25"),
        False,
    )
    assert len(await rows(any_db, power_consume)) == 1
    [dup] = [e for e in logs if e["event"] == "skip duplicate"]
    assert dup["source"] == "sweep" and dup["order_id"] == order_id and "conflict" not in dup
    await assert_ledger_consistent(any_db, {})


async def test_wallet_is_created_and_may_go_negative(any_db: Database) -> None:
    order_id = await insert_order(any_db, user_id=11, realized_profit=Decimal("3"))
    await PowerConsumer(any_db, RULES).charge(order_id, Source.REALTIME)
    [w] = await rows(any_db, wallet, user_id=11)
    assert w.power == Decimal("-0.3") and w.gift_power == 0
    await assert_ledger_consistent(any_db, {11: Decimal(0)})


async def test_vip_discount_is_applied_and_recorded(any_db: Database) -> None:
    await set_discount(any_db, 5, Decimal("20"), vip_level=4)
    order_id = await insert_order(any_db, user_id=5, realized_profit=Decimal("10"))
    result = await PowerConsumer(any_db, RULES).charge(order_id, Source.REALTIME)
    assert result.consume_power == Decimal("0.8")
    [c] = await rows(any_db, power_consume)
    assert (c.original_power, c.consume_power, c.discount_rate, c.vip_level) == (
        Decimal("1"),
        Decimal("0.8"),
        Decimal("20"),
        4,
    )


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"status": 1, "close_time": None}, "order is open"),
        ({"status": 3}, "order is cancelled"),
        ({"realized_profit": Decimal("-4.2")}, "not profitable"),
        ({"realized_profit": Decimal("0")}, "not profitable"),
    ],
)
async def test_not_eligible(any_db: Database, fields: dict[str, Any], reason: str) -> None:
    order_id = await insert_order(any_db, **fields)
    result = await PowerConsumer(any_db, RULES).charge(order_id, Source.REALTIME)
    assert result.outcome is Outcome.NOT_ELIGIBLE
    assert result.reason is not None and reason in result.reason
    assert await rows(any_db, power_consume) == []
    assert await rows(any_db, wallet_log) == []


async def test_flag_set_without_consume_row_is_never_charged(any_db: Database) -> None:
    order_id = await insert_order(any_db, power_consumed=1)
    result = await PowerConsumer(any_db, RULES).charge(order_id, Source.REALTIME)
    assert result.outcome is Outcome.NOT_ELIGIBLE and "no consume record" in str(result.reason)
    assert await rows(any_db, power_consume) == []


async def test_unknown_order(any_db: Database) -> None:
    with pytest.raises(OrderNotFound, match="order 4242 not found"):
        await PowerConsumer(any_db, RULES).charge(4242, Source.REALTIME)


async def test_legacy_repair(any_db: Database, logs: list[dict[str, Any]]) -> None:
    await set_wallet(any_db, 9, Decimal("50"))
    order_id = await insert_order(any_db, user_id=9, realized_profit=Decimal("2"))
    await legacy_charge(any_db, 9, order_id, Decimal("0.2"))

    result = await PowerConsumer(any_db, RULES).charge(order_id, Source.SWEEP)

    assert (result.outcome, result.consume_power, result.conflict) == (
        Outcome.SKIPPED_DUPLICATE,
        Decimal("0.2"),
        False,
    )
    [order] = await rows(any_db, trading_order)
    assert (order.power_consumed, order.power_amount) == (1, Decimal("0.2"))
    [w] = await rows(any_db, wallet, user_id=9)
    assert w.power == Decimal("50"), "no second debit"
    assert await rows(any_db, wallet_log) == []
    [dup] = [e for e in logs if e["event"] == "skip duplicate"]
    assert dup["repaired_flag"] is True and dup["consume_power"] == Decimal("0.2")


async def test_conflicting_duplicate(any_db: Database, logs: list[dict[str, Any]]) -> None:
    order_id = await insert_order(any_db, user_id=9, realized_profit=Decimal("2"))
    await legacy_charge(any_db, 9, order_id, Decimal("0.15"))  # charged at an older rate

    result = await PowerConsumer(any_db, RULES).charge(order_id, Source.SWEEP)

    assert result.outcome is Outcome.SKIPPED_DUPLICATE and result.conflict
    assert await rows(any_db, wallet) == [], "no debit, not even a wallet row"
    [dup] = [e for e in logs if e["event"] == "skip duplicate"]
    assert (dup["conflict"], dup["consume_power"], dup["would_charge"]) == (
        True,
        Decimal("0.15"),
        Decimal("0.2"),
    )
    [order] = await rows(any_db, trading_order)
    assert (order.power_consumed, order.power_amount) == (1, Decimal("0.15"))


async def test_rules_come_from_hg_toogo_config_unless_configured(any_db: Database) -> None:
    async def write(conn: AsyncConnection) -> None:
        await conn.execute(
            toogo_config.insert(),
            [
                {"group": "power", "key": "consume_rate", "value": "0.25", "name": "rate"},
                {"group": "power", "key": "min_consume", "value": "0.05", "name": "minimum"},
            ],
        )

    await any_db.transaction(write, what="seed config")
    stored = await load_power_rules(any_db, PowerOverride())
    assert (stored.consume_rate, stored.min_consume) == (Decimal("0.25"), Decimal("0.05"))
    mixed = await load_power_rules(
        any_db, PowerOverride(consume_rate=Decimal("0.2"), min_consume=None, vip_discount=False)
    )
    assert (mixed.consume_rate, mixed.min_consume, mixed.vip_discount) == (
        Decimal("0.2"),
        Decimal("0.05"),
        False,
    )


async def test_rules_default_without_stored_config(any_db: Database) -> None:
    rules = await load_power_rules(any_db, PowerOverride())
    assert (rules.consume_rate, rules.min_consume) == (Decimal("0.10"), Decimal("0.01"))


async def test_post_consumes_refuses_an_order_with_a_second_consume_row(server_url: str) -> None:
    """Without ``uk_user_order`` (a legacy install) a writer that does not lock the order can
    add a consume row between the consumer's check and its INSERT ... SELECT: the ledger's
    INSERT ... SELECT would then write two ledger rows for the order. ``post_consumes`` counts
    and refuses (DuplicateKey: the unit runs again and finds the order charged); nothing of it
    stays after the rollback."""
    db = await open_database(server_url, unique_key=False)
    try:
        await set_wallet(db, 5, Decimal("10"))
        order_id = await insert_order(db, user_id=5, realized_profit=Decimal("3.0000"))
        now = db.now()

        def consume_row() -> dict[str, Any]:
            return {
                "user_id": 5,
                "robot_id": 1,
                "order_id": order_id,
                "order_sn": "TO-x",
                "profit_amount": Decimal("3"),
                "consume_rate": Decimal("0.10"),
                "consume_power": Decimal("0.3"),
                "from_power": Decimal("0.3"),
                "vip_level": 1,
                "discount_rate": Decimal(0),
                "original_power": Decimal("0.3"),
                "created_at": now,
            }

        async def unit(conn: AsyncConnection) -> None:
            await conn.execute(power_consume.insert(), [consume_row(), consume_row()])
            await ledger.lock_rows(db, conn, [5])
            await ledger.post_consumes(conn, [order_id], now=now, remark="test")

        with pytest.raises(DuplicateKey, match="2 consume rows for 1 of 1 orders"):
            await db.transaction(unit, what="post twice-recorded order")

        async def left(conn: AsyncConnection) -> tuple[int, int, Decimal]:
            consumes = len((await conn.execute(select(power_consume.c.id))).all())
            entries = len((await conn.execute(select(wallet_log.c.id))).all())
            power = (await conn.execute(select(wallet.c.power))).scalar_one()
            return consumes, entries, power

        assert await db.transaction(left, what="read what is left") == (0, 0, Decimal("10"))
    finally:
        await db.close()
