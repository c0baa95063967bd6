"""Corrections as entries (``power.corrections: adjust``): an exchange revising a charged order's
profit is corrected by ledger entries, once each, on MariaDB, PostgreSQL and SQLite; ``log``
writes nothing. The sync runs real ccxt against the fake OKX."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from kits.databases import FAST_RETRY
from kits.fake_exchanges import FAKES, FakeExchange
from kits.fake_exchanges.harness import closed_record
from kits.seed import (
    assert_ledger_consistent,
    insert_order,
    live_columns,
    set_discount,
    set_wallet,
)
from reconcile.charging import ledger
from reconcile.charging.consumer import PowerConsumer
from reconcile.charging.corrections import CorrectionMode, Corrector, Sighting
from reconcile.charging.outcomes import Source
from reconcile.charging.pricing import Discount, compute_charge
from reconcile.charging.sweep import SweepSettings, sweep
from reconcile.storage.db import Database, DatabaseSettings
from reconcile.storage.schema import (
    correction,
    power_consume,
    toogo_user,
    trading_order,
    wallet,
    wallet_log,
)
from reconcile.views.audit import audit
from tests.history_kit import RULES, sync_for, wire_account
from tests.procs import run_cli

ADJUST = CorrectionMode.ADJUST
INITIAL = Decimal("100")
VIP = Discount(vip_level=3, power_discount=Decimal("20"))


def charge(profit: Decimal) -> Decimal:
    """What the order costs at ``profit`` for user 7 (20 % off), by the one rule."""
    return compute_charge(profit, RULES, VIP).consume_power if profit > 0 else Decimal(0)


@pytest.fixture
async def okx() -> AsyncIterator[FakeExchange]:
    async with FAKES["okx"]() as server:
        yield server


def close_ms() -> int:
    """Two minutes ago: inside ``sync.overlap``, so every cycle reads the record again."""
    return int(time.time() * 1000) - 120_000


def serve(fake: FakeExchange, at_ms: int, profit: str) -> None:
    """The exchange's answer for position 77 closed at ``at_ms``, with this gross profit
    (the same record key whatever the figure: a revision)."""
    fake.records[:] = closed_record("okx", close_ms=at_ms, key="77", profit=profit)


async def rows(db: Database, table: Any) -> list[Any]:
    async def read(conn: AsyncConnection) -> list[Any]:
        columns = await live_columns(conn, table)
        return list(await conn.execute(select(*columns).order_by(table.c.id)))

    return await db.transaction(read, what="read rows")


async def power_of(db: Database, user_id: int) -> Decimal:
    async def read(conn: AsyncConnection) -> Decimal:
        stmt = select(wallet.c.power).where(wallet.c.user_id == user_id)
        return Decimal((await conn.execute(stmt)).scalar_one())

    return await db.transaction(read, what="read power")


async def seed(db: Database, fake: FakeExchange) -> None:
    await wire_account(db, fake)
    await set_wallet(db, 7, INITIAL)
    await set_discount(db, 7, VIP.power_discount)


async def set_discount_to(db: Database, user_id: int, discount: Decimal) -> None:
    async def write(conn: AsyncConnection) -> None:
        u = toogo_user.c
        await conn.execute(
            toogo_user.update().where(u.member_id == user_id).values(power_discount=discount)
        )

    await db.transaction(write, what="change discount")


async def another_connection(url: str) -> Database:
    """A second Database (its own pool) on the same test database: another writer."""
    db = Database(DatabaseSettings(url=url, retry=FAST_RETRY))
    await db.open()
    return db


async def assert_clean_audit(db: Database) -> None:
    report = await audit(db, backlog_after=timedelta(hours=1))
    assert report.ok, [(c.name, c.examples) for c in report.checks if not c.ok]


async def test_a_profit_revised_up_then_down_is_corrected_twice(
    any_db: Database, okx: FakeExchange, logs: list[dict[str, Any]]
) -> None:
    await seed(any_db, okx)
    at = close_ms()
    serve(okx, at, "10")
    async with sync_for(any_db, okx, corrections=ADJUST) as sync:
        first = await sync.run_cycle()
        assert (first.inserted, first.charged, first.corrected) == (1, 1, 0)
        [order] = await rows(any_db, trading_order)
        p0 = order.realized_profit
        assert order.power_amount == charge(p0)
        # the user's discount changes after the charge: a correction prices the order as it was
        # priced (the consume row's rate and discount), so only what the profit changed changes
        await set_discount_to(any_db, 7, Decimal("50"))

        serve(okx, at, "12")  # revised up by 2
        up = await sync.run_cycle()
        serve(okx, at, "7")  # then down by 5
        down = await sync.run_cycle()
        again = await sync.run_cycle()  # the same figure again: nothing
        assert (up.corrected, down.corrected, again.corrected) == (1, 1, 0)
        assert (up.charged, down.charged, again.charged) == (0, 0, 0)

    p1, p2 = p0 + 2, p0 - 3
    k = await rows(any_db, correction)
    assert [(c.order_id, c.user_id, c.revision, c.order_sn) for c in k] == [
        (order.id, 7, 1, order.order_sn),
        (order.id, 7, 2, order.order_sn),
    ]
    assert [(c.old_profit, c.new_profit, c.old_charge, c.new_charge, c.delta) for c in k] == [
        (p0, p1, charge(p0), charge(p1), charge(p1) - charge(p0)),
        (p1, p2, charge(p1), charge(p2), charge(p2) - charge(p1)),
    ]
    assert k[0].delta > 0 > k[1].delta  # a further debit, then a credit
    # the ledger: the consume row's debit, then one adjust row per correction, chained
    log_rows = await rows(any_db, wallet_log)
    assert [(w.change_type, w.change_amount, w.related_id) for w in log_rows] == [
        (ledger.CONSUME, -charge(p0), order.id),
        (ledger.ADJUST, -k[0].delta, order.id),
        (ledger.ADJUST, -k[1].delta, order.id),
    ]
    assert [c.wallet_log_id for c in k] == [w.id for w in log_rows[1:]]
    assert log_rows[2].remark == (
        f"power consume adjust: profit {format(p1.normalize(), 'f')} -> "
        f"{format(p2.normalize(), 'f')} (revision 2)"
    )
    assert await power_of(any_db, 7) == INITIAL - charge(p2)
    await assert_ledger_consistent(any_db, {7: INITIAL})
    await assert_clean_audit(any_db)
    # never an edit: the consume row and the order keep the first charge
    [consume] = await rows(any_db, power_consume)
    assert (consume.profit_amount, consume.consume_power) == (p0, charge(p0))
    [after] = await rows(any_db, trading_order)
    assert (after.realized_profit, after.power_amount) == (p0, charge(p0))
    corrected = [e for e in logs if e["event"] == "power corrected"]
    assert [(e["revision"], e["old_profit"], e["new_profit"], e["delta"]) for e in corrected] == [
        (1, p0, p1, k[0].delta),
        (2, p1, p2, k[1].delta),
    ]
    assert corrected[1]["after"] == INITIAL - charge(p2)
    assert corrected[1]["before"] == corrected[0]["after"]


async def engine_charged(db: Database, at_ms: int, profit: Decimal) -> int:
    """An order the engine recorded (its own profit figure) and charged in realtime."""
    closed = db.to_db_time(datetime.fromtimestamp(at_ms / 1000, UTC))
    order_id = await insert_order(
        db,
        user_id=7,
        robot_id=100,
        quantity=Decimal("0.01"),
        open_price=Decimal("60000"),
        close_price=Decimal("61000"),
        open_time=closed - timedelta(hours=1),
        close_time=closed,
        realized_profit=profit,
    )
    await PowerConsumer(db, RULES).charge(order_id, Source.REALTIME)
    return order_id


async def engine_case(db: Database, fake: FakeExchange) -> tuple[int, int]:
    """User 7's engine order charged on a profit of 9.5; the exchange's record of it says
    otherwise. (close time in ms, order id)"""
    await seed(db, fake)
    at = close_ms()
    engine = await engine_charged(db, at, Decimal("9.5"))
    serve(fake, at, "10")
    return at, engine


async def test_an_engine_charge_on_another_profit_is_corrected_at_first_sight(
    server_db: Database, okx: FakeExchange, logs: list[dict[str, Any]]
) -> None:
    _, engine = await engine_case(server_db, okx)
    async with sync_for(server_db, okx, corrections=ADJUST) as sync:
        first = await sync.run_cycle()
        again = await sync.run_cycle()
    assert (first.matched, first.inserted, first.corrected, again.corrected) == (1, 0, 1, 0)
    [k] = await rows(server_db, correction)
    assert (k.order_id, k.revision, k.old_profit, k.old_charge) == (
        engine,
        1,
        Decimal("9.5"),
        charge(Decimal("9.5")),
    )
    assert k.new_charge == charge(k.new_profit) and k.new_profit != Decimal("9.5")
    assert await power_of(server_db, 7) == INITIAL - k.new_charge
    await assert_ledger_consistent(server_db, {7: INITIAL})
    await assert_clean_audit(server_db)


async def test_log_mode_writes_nothing_and_logs_the_mismatch(
    any_db: Database, okx: FakeExchange, logs: list[dict[str, Any]]
) -> None:
    at, engine = await engine_case(any_db, okx)
    async with sync_for(any_db, okx) as sync:  # the default: log
        first = await sync.run_cycle()
        serve(okx, at, "12")
        second = await sync.run_cycle()
    assert (first.matched, first.corrected, second.corrected) == (1, 0, 0)
    [mismatch] = [e for e in logs if e["event"] == "profit mismatch"]
    assert (mismatch["order_id"], mismatch["local"], mismatch["charged"]) == (
        engine,
        Decimal("9.5"),
        True,
    )
    assert await rows(any_db, correction) == []
    assert [w.change_type for w in await rows(any_db, wallet_log)] == [ledger.CONSUME]
    assert await power_of(any_db, 7) == INITIAL - charge(Decimal("9.5"))
    assert not [e for e in logs if e["event"] == "power corrected"]
    await assert_ledger_consistent(any_db, {7: INITIAL})


async def test_a_revision_seen_by_two_writers_at_once_is_applied_once(
    server_db: Database, server_url: str, okx: FakeExchange, logs: list[dict[str, Any]]
) -> None:
    """Both decide revision 1 before either commits (a held wallet lock makes sure): the
    second meets uk_correction_revision, runs again and finds it applied."""
    _, engine = await engine_case(server_db, okx)
    sighting = Sighting(engine, Decimal("11.2"), "77")
    other = await another_connection(server_url)
    try:
        held = asyncio.Event()
        release = asyncio.Event()

        async def hold_wallet() -> None:
            async def unit(conn: AsyncConnection) -> None:
                await ledger.lock(server_db, conn, [7])
                held.set()
                await release.wait()

            await server_db.transaction(unit, what="hold the wallet")

        holder = asyncio.create_task(hold_wallet())
        await held.wait()
        racing = [
            asyncio.create_task(Corrector(db, RULES).apply([sighting])) for db in (server_db, other)
        ]
        await asyncio.sleep(1.0)  # both read the corrections (none) and wait for the wallet
        release.set()
        await holder
        applied = await asyncio.gather(*racing)
    finally:
        await other.close()
    assert sorted(len(a) for a in applied) == [0, 1]
    [k] = await rows(server_db, correction)
    assert (k.revision, k.new_profit, k.new_charge) == (1, Decimal("11.2"), charge(Decimal("11.2")))
    assert [e for e in logs if e["event"] == "correction applied concurrently"]
    assert len([e for e in logs if e["event"] == "power corrected"]) == 1
    await assert_ledger_consistent(server_db, {7: INITIAL})
    await assert_clean_audit(server_db)


async def test_two_syncs_seeing_the_same_revision_apply_it_once(
    server_db: Database, server_url: str, okx: FakeExchange
) -> None:
    await seed(server_db, okx)
    at = close_ms()
    serve(okx, at, "10")
    other = await another_connection(server_url)
    try:
        async with (
            sync_for(server_db, okx, corrections=ADJUST) as one,
            sync_for(other, okx, corrections=ADJUST) as two,
        ):
            await one.run_cycle()
            serve(okx, at, "13")
            results = await asyncio.gather(one.run_cycle(), two.run_cycle())
            assert sum(r.corrected for r in results) == 1
            results = await asyncio.gather(one.run_cycle(), two.run_cycle())
            assert sum(r.corrected for r in results) == 0
    finally:
        await other.close()
    [k] = await rows(server_db, correction)
    assert k.revision == 1
    await assert_ledger_consistent(server_db, {7: INITIAL})
    await assert_clean_audit(server_db)


async def test_a_server_without_multi_row_returning_gets_the_ledger_ids_one_by_one(
    mysql_db: Database, okx: FakeExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MySQL 8 has no INSERT ... RETURNING: MariaDB is told to behave like it (the dialect's
    capability, not the database, is what changes)."""
    _, engine = await engine_case(mysql_db, okx)
    monkeypatch.setattr(mysql_db.engine.dialect, "use_insertmanyvalues", False)
    assert not mysql_db.engine.dialect.insert_executemany_returning
    [done] = await Corrector(mysql_db, RULES).apply([Sighting(engine, Decimal("12"), "77")])
    [k] = await rows(mysql_db, correction)
    [_, adjust] = await rows(mysql_db, wallet_log)
    assert (k.wallet_log_id, adjust.change_type, adjust.change_amount) == (
        adjust.id,
        ledger.ADJUST,
        -done.delta,
    )
    await assert_clean_audit(mysql_db)


@pytest.mark.parametrize("args", [["sync"], ["run", "--once"]])
async def test_a_bad_corrections_value_exits_2_naming_it(tmp_path: Path, args: list[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("database:\n  url: sqlite+aiosqlite:///x.db\npower:\n  corrections: rewrite\n")
    code, out, err = await run_cli(cfg, *args)
    assert code == 2, err
    assert "power.corrections: Input should be 'log' or 'adjust'" in err
    assert "Traceback" not in err and out == ""


async def test_a_revision_to_a_loss_credits_the_whole_charge(
    server_db: Database, okx: FakeExchange
) -> None:
    await seed(server_db, okx)
    at = close_ms()
    serve(okx, at, "10")
    async with sync_for(server_db, okx, corrections=ADJUST) as sync:
        await sync.run_cycle()
        serve(okx, at, "-3")  # the exchange now says the position lost
        assert (await sync.run_cycle()).corrected == 1
    [order] = await rows(server_db, trading_order)
    [k] = await rows(server_db, correction)
    assert k.new_profit < 0 and (k.new_charge, k.delta) == (Decimal(0), -order.power_amount)
    assert await power_of(server_db, 7) == INITIAL
    await assert_ledger_consistent(server_db, {7: INITIAL})
    await assert_clean_audit(server_db)


async def test_an_engine_order_the_sweep_charges_is_corrected_at_the_next_reading(
    server_db: Database, okx: FakeExchange
) -> None:
    """The engine closed it (its own profit figure) but never charged it: the sync binds it,
    the sweep charges it on that figure (as the consumer always does), and the sync's next
    reading of the record corrects it to the exchange's."""
    await seed(server_db, okx)
    at = close_ms()
    closed = server_db.to_db_time(datetime.fromtimestamp(at / 1000, UTC))
    engine = await insert_order(
        server_db,
        user_id=7,
        robot_id=100,
        quantity=Decimal("0.01"),
        open_time=closed - timedelta(hours=1),
        close_time=closed,
        realized_profit=Decimal("9.5"),
    )
    serve(okx, at, "10")
    async with sync_for(server_db, okx, corrections=ADJUST) as sync:
        first = await sync.run_cycle()
        assert (first.matched, first.charged, first.corrected) == (1, 0, 0)
        await sweep(PowerConsumer(server_db, RULES), SweepSettings())
        second = await sync.run_cycle()
        again = await sync.run_cycle()
    assert (second.corrected, again.corrected) == (1, 0)
    [k] = await rows(server_db, correction)
    assert (k.order_id, k.old_profit, k.old_charge) == (
        engine,
        Decimal("9.5"),
        charge(Decimal("9.5")),
    )
    assert await power_of(server_db, 7) == INITIAL - charge(k.new_profit)
    await assert_ledger_consistent(server_db, {7: INITIAL})
    await assert_clean_audit(server_db)
