"""The compensation sweep, on MariaDB and SQLite."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from kits.seed import (
    assert_ledger_consistent,
    eligible_ids,
    insert_order,
    legacy_charge,
    seed_backlog,
    set_wallet,
)
from reconcile.charging.consumer import PowerConsumer
from reconcile.charging.pricing import PowerRules
from reconcile.charging.sweep import SweepSettings, sweep
from reconcile.storage.db import Database
from reconcile.storage.schema import power_consume, trading_order

RULES = PowerRules(Decimal("0.10"), Decimal("0.01"))


async def consumed_ids(db: Database) -> set[int]:
    async def read(conn: AsyncConnection) -> set[int]:
        return {r[0] for r in await conn.execute(select(power_consume.c.order_id))}

    return await db.transaction(read, what="read consumed")


async def test_sweep_charges_the_backlog_in_pages(
    any_db: Database, logs: list[dict[str, Any]]
) -> None:
    seeded = await seed_backlog(any_db, orders=700, users=60)
    # an order closed before the look-back window and one still open are left alone
    old = await insert_order(any_db, user_id=1, close_time=any_db.now() - timedelta(days=9))
    still_open = await insert_order(any_db, user_id=1, status=1, close_time=None)

    summary = await sweep(PowerConsumer(any_db, RULES), SweepSettings(page_size=64))

    expected = await eligible_ids(any_db) - {old, still_open}
    assert await consumed_ids(any_db) == expected
    assert summary.charged == len(expected) and summary.failed == 0 and summary.error is None
    assert summary.pages == -(-len(expected) // 64)
    await assert_ledger_consistent(any_db, seeded.initial_power)
    [summary_event] = [e for e in logs if e["event"] == "sweep summary"]
    assert summary_event["charged"] == len(expected) and summary_event["source"] == "sweep"
    assert len([e for e in logs if e["event"] == "power consumed"]) == len(expected)

    again = await sweep(PowerConsumer(any_db, RULES), SweepSettings(page_size=64))
    assert (again.charged, again.pages) == (0, 0)


async def test_sweep_repairs_legacy_charges_without_debiting(
    any_db: Database, logs: list[dict[str, Any]]
) -> None:
    seeded = await seed_backlog(any_db, orders=50, users=5, losing_ratio=0)
    legacy = seeded.order_ids[:3]

    async def users_of(conn: AsyncConnection) -> dict[int, int]:
        stmt = select(trading_order.c.id, trading_order.c.user_id).where(
            trading_order.c.id.in_(legacy)
        )
        return {r.id: r.user_id for r in await conn.execute(stmt)}

    owners = await any_db.transaction(users_of, what="owners")
    for oid in legacy:
        await legacy_charge(any_db, owners[oid], oid, Decimal("0.5"))

    summary = await sweep(PowerConsumer(any_db, RULES), SweepSettings(page_size=20))

    assert summary.skipped_duplicate == 3 and summary.charged == 47
    dups = [e for e in logs if e["event"] == "skip duplicate"]
    assert sorted(e["order_id"] for e in dups) == sorted(legacy)

    async def count(conn: AsyncConnection) -> int:
        stmt = select(func.count()).where(trading_order.c.power_consumed == 0)
        return int((await conn.execute(stmt)).scalar_one())

    assert await any_db.transaction(count, what="count") == 0


async def test_a_bad_order_does_not_block_its_page(any_db: Database) -> None:
    """A debit that would push a wallet past DECIMAL(20,8)'s range fails that order only; the
    rest of its page is charged one by one, and the next sweep tries the bad one again."""
    seeded = await seed_backlog(any_db, orders=30, users=3, losing_ratio=0, with_wallet_ratio=1)
    await set_wallet(any_db, 999, Decimal("-999999999999.5"))
    bad = await insert_order(any_db, user_id=999, realized_profit=Decimal("100"))
    consumer = PowerConsumer(any_db, RULES)
    first = await sweep(consumer, SweepSettings(page_size=500))
    second = await sweep(consumer, SweepSettings(page_size=500))
    charged = await consumed_ids(any_db)
    assert set(seeded.order_ids) <= charged
    if any_db.dialect.concurrent:  # MariaDB and PostgreSQL enforce the column's range
        assert bad not in charged
        assert (first.failed, first.charged, first.ok) == (1, 30, False)
        assert (second.failed, second.charged) == (1, 0)
    else:  # SQLite keeps exact text and has no DECIMAL range to overflow
        assert bad in charged and first.ok
