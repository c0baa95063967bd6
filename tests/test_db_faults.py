"""Forced deadlocks, lock-wait timeouts, a connection cut during COMMIT, and a writer that
does not lock the order: each resolved by the whole-transaction retry and the unique key. On
MariaDB and on PostgreSQL, with the same assertions."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from kits.databases import FAST_RETRY, open_database
from kits.seed import (
    assert_ledger_consistent,
    eligible_ids,
    insert_order,
    seed_backlog,
    set_wallet,
)
from kits.tcp_proxy import CommitCutter
from reconcile.charging.consumer import PowerConsumer
from reconcile.charging.outcomes import Outcome, Source
from reconcile.charging.pricing import PowerRules
from reconcile.charging.sweep import SweepSettings, sweep
from reconcile.storage.db import Database, DatabaseSettings

RULES = PowerRules(Decimal("0.10"), Decimal("0.01"))


def rows_1_to_300(db: Database) -> str:
    """300 rows: MariaDB's sequence engine, PostgreSQL's generate_series."""
    return "generate_series(1, 300)" if db.dialect.is_postgresql else "seq_1_to_300"


def retries(logs: list[dict[str, Any]], error: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "db retry" and e["error"] == error]


async def test_deadlock_victim_is_retried(server_db: Database, logs: list[dict[str, Any]]) -> None:
    await set_wallet(server_db, 1, Decimal("10"))
    order_id = await insert_order(server_db, user_id=1, realized_profit=Decimal("5"))
    consumer = PowerConsumer(server_db, RULES)

    async with server_db.engine.connect() as other:
        await other.begin()
        # make this transaction the heavier one, so InnoDB picks the charge as the victim
        await other.execute(
            text(
                "INSERT INTO hg_toogo_wallet_log (user_id, account_type, change_type,"
                " change_amount, before_amount, after_amount)"
                f" SELECT 424242, 'x', 'x', 0, 0, 0 FROM {rows_1_to_300(server_db)}"
            )
        )
        await other.execute(text("SELECT power FROM hg_toogo_wallet WHERE user_id = 1 FOR UPDATE"))
        charge = asyncio.create_task(consumer.charge(order_id, Source.REALTIME))
        await asyncio.sleep(0.5)  # the charge now holds the order and waits for the wallet
        await other.execute(
            text("SELECT id FROM hg_trading_order WHERE id = :id FOR UPDATE"), {"id": order_id}
        )
        await other.rollback()
        result = await charge

    assert result.outcome is Outcome.CHARGED
    assert len(retries(logs, "Deadlock")) >= 1
    await assert_ledger_consistent(server_db, {1: Decimal("10")})


async def test_lock_wait_timeout_is_retried(server_url: str, logs: list[dict[str, Any]]) -> None:
    db = await open_database(server_url, lock_wait_timeout=1)
    try:
        order_id = await insert_order(db, user_id=2, realized_profit=Decimal("5"))
        async with db.engine.connect() as other:
            await other.begin()
            await other.execute(
                text("SELECT id FROM hg_trading_order WHERE id = :id FOR UPDATE"), {"id": order_id}
            )
            charge = asyncio.create_task(PowerConsumer(db, RULES).charge(order_id, Source.REALTIME))
            await asyncio.sleep(2.6)
            await other.rollback()
        result = await charge
        assert result.outcome is Outcome.CHARGED
        assert len(retries(logs, "LockWaitTimeout")) >= 1
        await assert_ledger_consistent(db, {})
    finally:
        await db.close()


async def test_a_writer_that_does_not_lock_loses_to_the_unique_key(
    server_db: Database, logs: list[dict[str, Any]]
) -> None:
    """A legacy writer inserts the consume row without locking the order. Our check does not
    see its uncommitted row; our INSERT waits on the key, then fails with a duplicate once it
    commits; the charge is re-run and takes the "already charged" path."""
    order_id = await insert_order(server_db, user_id=3, realized_profit=Decimal("5"))
    async with server_db.engine.connect() as legacy:
        await legacy.begin()
        await legacy.execute(
            text(
                "INSERT INTO hg_toogo_power_consume (user_id, robot_id, order_id, order_sn,"
                " profit_amount, consume_rate, consume_power, original_power)"
                " VALUES (3, 1, :id, 'legacy', 5, 0.1, 0.5, 0.5)"
            ),
            {"id": order_id},
        )
        charge = asyncio.create_task(PowerConsumer(server_db, RULES).charge(order_id, Source.SWEEP))
        await asyncio.sleep(0.5)
        assert not charge.done(), "the charge waits on the unique key"
        await legacy.commit()
    result = await charge
    assert (result.outcome, result.consume_power) == (Outcome.SKIPPED_DUPLICATE, Decimal("0.5"))
    assert [e for e in logs if e["event"] == "consume row appeared concurrently"]
    async with server_db.engine.connect() as conn:
        consumes = (
            await conn.execute(text("SELECT COUNT(*) FROM hg_toogo_power_consume"))
        ).scalar()
        ledger = (await conn.execute(text("SELECT COUNT(*) FROM hg_toogo_wallet_log"))).scalar()
        flag = (
            await conn.execute(
                text("SELECT power_consumed, power_amount FROM hg_trading_order WHERE id = :id"),
                {"id": order_id},
            )
        ).one()
    assert (consumes, ledger, tuple(flag)) == (1, 0, (1, Decimal("0.5")))


@pytest.fixture
async def cutter(server_url: str) -> Any:
    url = make_url(server_url)
    async with CommitCutter(url.port or 3306, protocol=url.get_backend_name()) as proxy:
        yield proxy


async def proxied(server_url: str, proxy: CommitCutter) -> Database:
    url = make_url(server_url).set(port=proxy.port)
    if url.get_backend_name() == "postgresql":  # the proxy reads the protocol: no TLS
        url = url.update_query_dict({"ssl": "disable"})
    url = url.render_as_string(hide_password=False)
    db = Database(DatabaseSettings(url=url, retry=FAST_RETRY))
    await db.open()
    return db


@pytest.mark.parametrize("mode", ["before", "after"])
async def test_connection_cut_during_commit_of_a_charge(
    server_db: Database,
    server_url: str,
    cutter: CommitCutter,
    mode: str,
    logs: list[dict[str, Any]],
) -> None:
    await set_wallet(server_db, 4, Decimal("1"))
    order_id = await insert_order(server_db, user_id=4, realized_profit=Decimal("5"))
    db = await proxied(server_url, cutter)
    try:
        cutter.arm(mode)  # type: ignore[arg-type]
        result = await PowerConsumer(db, RULES).charge(order_id, Source.REALTIME)
    finally:
        await db.close()
    assert cutter.cuts == 1
    assert retries(logs, "ConnectionLost")
    # "before": the server rolled back, the retry charged. "after": the commit landed, the
    # retry found the consume row. Either way: one charge, nothing missed.
    expected = Outcome.CHARGED if mode == "before" else Outcome.SKIPPED_DUPLICATE
    assert (result.outcome, result.consume_power) == (expected, Decimal("0.5"))
    counts = await assert_ledger_consistent(server_db, {4: Decimal("1")})
    assert counts["consumes"] == 1


@pytest.mark.parametrize("mode", ["before", "after"])
async def test_connection_cut_during_commit_of_a_sweep_page(
    server_db: Database, server_url: str, cutter: CommitCutter, mode: str
) -> None:
    seeded = await seed_backlog(server_db, orders=300, users=20)
    db = await proxied(server_url, cutter)
    try:
        cutter.arm(mode)  # type: ignore[arg-type]
        summary = await sweep(PowerConsumer(db, RULES), SweepSettings(page_size=100))
    finally:
        await db.close()
    assert cutter.cuts == 1 and summary.ok
    counts = await assert_ledger_consistent(server_db, seeded.initial_power)
    assert counts["consumes"] == len(await eligible_ids(server_db))


async def test_sweep_revisits_an_order_another_transaction_held(
    server_db: Database, logs: list[dict[str, Any]]
) -> None:
    """SKIP LOCKED passes over a row someone else holds; if that someone rolls back, the
    same sweep still charges the order before it ends."""
    seeded = await seed_backlog(server_db, orders=200, users=20, losing_ratio=0)
    held = seeded.order_ids[50]
    async with server_db.engine.connect() as other:
        await other.begin()
        await other.execute(
            text("SELECT id FROM hg_trading_order WHERE id = :id FOR UPDATE"), {"id": held}
        )
        running = asyncio.create_task(
            sweep(PowerConsumer(server_db, RULES), SweepSettings(page_size=40))
        )
        await asyncio.sleep(1.0)
        await other.rollback()  # e.g. a realtime charge that failed
    summary = await running
    assert summary.ok and summary.charged == 200
    assert [e for e in logs if e["event"] == "sweep revisits orders that were locked"]
    counts = await assert_ledger_consistent(server_db, seeded.initial_power)
    assert counts["consumes"] == 200
