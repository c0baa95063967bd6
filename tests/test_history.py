"""History sync upsert rules and robot selection, on MariaDB (and SQLite for the basics)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange_adapters.options import AdapterOptions
from exchange_adapters.registry import ExchangeRegistry
from kits.databases import open_database
from kits.seed import assert_ledger_consistent, insert_order, live_columns
from reconcile.charging.consumer import PowerConsumer
from reconcile.charging.outcomes import PowerMode, Source
from reconcile.errors import ConnectionLost
from reconcile.storage.db import Database
from reconcile.storage.schema import binding, power_consume, stream_cursor, trading_order
from reconcile.sync.history import HistorySync
from reconcile.sync.record_rows import order_sn_for
from reconcile.sync.settings import SyncSettings
from tests.history_kit import (
    NOW,
    RULES,
    add_account,
    add_robot,
    history_sync,
    position,
    write_replay,
)


async def orders(db: Database) -> list[Any]:
    async def read(conn: AsyncConnection) -> list[Any]:
        columns = await live_columns(conn, trading_order)
        return list(await conn.execute(select(*columns).order_by(trading_order.c.id)))

    return await db.transaction(read, what="read orders")


async def bindings(db: Database) -> dict[str, tuple[int, str, str]]:
    async def read(conn: AsyncConnection) -> dict[str, tuple[int, str, str]]:
        b = binding.c
        rows = await conn.execute(select(b.record_key, b.order_id, b.kind, b.rule))
        return {r.record_key: (r.order_id, r.kind, r.rule) for r in rows}

    return await db.transaction(read, what="read bindings")


async def consumes(db: Database) -> list[Any]:
    async def read(conn: AsyncConnection) -> list[Any]:
        return list(await conn.execute(select(power_consume)))

    return await db.transaction(read, what="read consumes")


async def one_robot(db: Database) -> None:
    await add_account(db, 10, user_id=7)
    await add_robot(db, 100, user_id=7, account_id=10)


async def test_an_unknown_position_is_inserted_and_charged(
    any_db: Database, tmp_path: Path, logs: list[dict[str, Any]]
) -> None:
    await one_robot(any_db)
    replay = write_replay(
        tmp_path / "r.jsonl",
        [
            position(10, "B-1", closed=NOW - timedelta(hours=2), net="12.5"),
            position(10, "B-2", closed=NOW - timedelta(hours=1), net="-3.25"),
        ],
    )
    async with history_sync(any_db, replay) as sync:
        summary = await sync.run_cycle()
        again = await sync.run_cycle()

    assert (summary.streams, summary.records, summary.inserted, summary.charged) == (1, 2, 2, 1)
    won, lost = await orders(any_db)
    assert won.order_sn == order_sn_for("binance", 10, "B-1") and len(won.order_sn) <= 64
    # margin is NOT NULL in upstream: open price × size ÷ leverage = 60000 × 0.01 ÷ 10
    assert (won.user_id, won.robot_id, won.tenant_id, won.leverage, won.margin) == (
        7,
        100,
        3,
        10,
        Decimal("60"),
    )
    # exchange_order_id means the opening order's id: never a record key of ours
    # (the column's default: NULL in upstream's MySQL DDL, '' in its PostgreSQL DDL)
    assert (won.status, won.realized_profit, won.exchange_order_id or None, won.close_reason) == (
        2,
        Decimal("12.5"),
        None,
        "exchange_sync",
    )
    assert won.power_consumed == 1 and won.power_amount == Decimal("1.25")
    assert "synchronized from binance" in won.remark
    assert lost.realized_profit == Decimal("-3.25") and lost.power_consumed == 0
    [charge] = [e for e in logs if e["event"] == "power consumed"]
    assert charge["source"] == "history" and charge["order_id"] == won.id
    # the cursor moved to the end of the window: a second cycle re-reads only the overlap
    assert (again.records, again.inserted, again.closed, again.charged) == (0, 0, 0, 0)
    assert len(await orders(any_db)) == 2
    await assert_ledger_consistent(any_db, {})


async def test_engine_recorded_position_is_matched_within_tolerance(
    server_db: Database, tmp_path: Path
) -> None:
    """The double-charge trap: the engine recorded and charged the close under its own order;
    the exchange record must not become a second order."""
    await one_robot(server_db)
    closed = NOW - timedelta(hours=3)
    engine = await insert_order(
        server_db,
        user_id=7,
        robot_id=100,
        symbol="BTCUSDT",
        close_time=server_db.to_db_time(closed + timedelta(seconds=119)),
        realized_profit=Decimal("12.5"),
    )
    await PowerConsumer(server_db, RULES).charge(engine, Source.REALTIME)
    late = await insert_order(
        server_db,
        user_id=7,
        robot_id=100,
        symbol="BTCUSDT",
        close_time=server_db.to_db_time(closed + timedelta(hours=1, seconds=121)),
        realized_profit=Decimal("2"),
    )
    replay = write_replay(
        tmp_path / "r.jsonl",
        [
            position(10, "B-7", closed=closed),
            position(10, "B-8", closed=closed + timedelta(hours=1), net="2"),  # 121 s away: new
        ],
    )
    async with history_sync(server_db, replay) as sync:
        summary = await sync.run_cycle()

    assert (summary.matched, summary.inserted) == (1, 1)
    rows = {o.id: o for o in await orders(server_db)}
    assert len(rows) == 3
    assert await bindings(server_db) == {
        "B-7": (engine, "order", "close_time"),
        "B-8": (max(rows), "order", "insert"),
    }
    assert late in rows and rows[late].power_consumed == 0  # not this record's: left alone
    assert len(await consumes(server_db)) == 2  # the engine's charge and the new order's


async def test_open_order_is_closed_and_charged(server_db: Database, tmp_path: Path) -> None:
    await one_robot(server_db)
    opened = NOW - timedelta(hours=5)
    open_id = await insert_order(
        server_db,
        user_id=7,
        robot_id=100,
        symbol="BTCUSDT",
        exchange_order_id="8389765521937251",
        status=1,
        open_time=server_db.to_db_time(opened),
        close_time=None,
        close_price=None,
        realized_profit=Decimal(0),
    )
    replay = write_replay(
        tmp_path / "r.jsonl",
        [
            position(10, "B-9", closed=NOW - timedelta(hours=4), net="8.8", opened=opened),
        ],
    )
    async with history_sync(server_db, replay) as sync:
        summary = await sync.run_cycle()

    assert (summary.closed, summary.charged, summary.inserted) == (1, 1, 0)
    [order] = await orders(server_db)
    assert order.id == open_id
    assert (order.status, order.realized_profit, order.close_reason, order.exchange_order_id) == (
        2,
        Decimal("8.8"),
        "exchange_sync",
        "8389765521937251",  # the engine's opening order id stays
    )
    assert order.close_price == Decimal("61250") and order.hold_duration == 3600
    assert (order.power_consumed, order.power_amount) == (1, Decimal("0.88"))


async def test_charged_profit_is_never_rewritten(
    server_db: Database, tmp_path: Path, logs: list[dict[str, Any]]
) -> None:
    await one_robot(server_db)
    closed = NOW - timedelta(hours=2)
    engine = await insert_order(
        server_db,
        user_id=7,
        robot_id=100,
        symbol="BTCUSDT",
        close_time=server_db.to_db_time(closed),
        realized_profit=Decimal("10"),
    )
    await PowerConsumer(server_db, RULES).charge(engine, Source.REALTIME)
    replay = write_replay(tmp_path / "r.jsonl", [position(10, "B-3", closed=closed, net="11")])
    async with history_sync(server_db, replay) as sync:
        await sync.run_cycle()
    [order] = await orders(server_db)
    assert order.realized_profit == Decimal("10") and order.power_amount == Decimal("1")
    [mismatch] = [e for e in logs if e["event"] == "profit mismatch"]
    assert (mismatch["local"], mismatch["exchange"], mismatch["charged"]) == (
        Decimal("10"),
        Decimal("11"),
        True,
    )


async def test_only_running_robots_of_enabled_accounts_are_synced(
    server_db: Database, tmp_path: Path, logs: list[dict[str, Any]]
) -> None:
    closed = NOW - timedelta(hours=1)
    await add_account(server_db, 10, user_id=7)
    await add_robot(server_db, 101, user_id=7, account_id=10, status=4)  # stopped
    await add_account(server_db, 11, user_id=7)
    await add_robot(server_db, 102, user_id=7, account_id=11, deleted_at=server_db.now())
    await add_account(server_db, 12, user_id=7, status=2)  # disabled account
    await add_robot(server_db, 103, user_id=7, account_id=12)
    await add_account(server_db, 13, user_id=7, platform="okx")  # not configured below
    await add_robot(server_db, 104, user_id=7, account_id=13)
    await add_account(server_db, 14, user_id=8)  # robot of user 7 on user 8's account
    await add_robot(server_db, 105, user_id=7, account_id=14)
    await add_account(server_db, 15, user_id=7)
    await add_robot(server_db, 106, user_id=7, account_id=15, status=1)  # "not started"
    replay = write_replay(
        tmp_path / "r.jsonl", [position(a, f"K{a}", closed=closed) for a in range(10, 16)]
    )
    async with history_sync(server_db, replay, platforms=frozenset({"binance"})) as sync:
        summary = await sync.run_cycle()

    assert summary.streams == 0 and await orders(server_db) == []
    [mismatch] = [e for e in logs if e["event"] == "robot account mismatch"]
    assert (mismatch["robot_id"], mismatch["account_id"]) == (105, 14)
    [warning] = [e for e in logs if e["event"] == "robots on unconfigured platforms skipped"]
    assert warning["platforms"] == ["okx"]

    # the plan's sample query used status = 1; the schema's "running" is 2, configurable
    async with history_sync(server_db, replay, running_status=1) as sync:
        assert (await sync.run_cycle()).inserted == 1


async def test_robots_sharing_an_account_and_symbol_share_one_stream(
    server_db: Database, tmp_path: Path
) -> None:
    await add_account(server_db, 10, user_id=7)
    await add_robot(server_db, 100, user_id=7, account_id=10)
    await add_robot(server_db, 101, user_id=7, account_id=10)
    await add_robot(server_db, 102, user_id=7, account_id=10, symbol="ETHUSDT")
    replay = write_replay(
        tmp_path / "r.jsonl",
        [
            position(10, "B-1", closed=NOW - timedelta(hours=1)),
            position(10, "E-1", closed=NOW - timedelta(hours=1), symbol="ETH/USDT:USDT"),
        ],
    )
    async with history_sync(server_db, replay) as sync:
        summary = await sync.run_cycle()
    assert (summary.streams, summary.inserted) == (2, 2)
    by_symbol = {o.symbol: o.robot_id for o in await orders(server_db)}
    assert by_symbol == {"BTCUSDT": 100, "ETHUSDT": 102}

    async def cursors(conn: AsyncConnection) -> list[Any]:
        return list(await conn.execute(select(stream_cursor).order_by(stream_cursor.c.symbol)))

    rows = await server_db.transaction(cursors, what="cursors")
    assert [(c.account_id, c.symbol) for c in rows] == [(10, "BTCUSDT"), (10, "ETHUSDT")]


async def test_two_concurrent_cycles_converge(server_url: str, tmp_path: Path) -> None:
    first, second = await open_database(server_url), await open_database(server_url)
    try:
        for account in range(10, 16):
            await add_account(first, account, user_id=account)
            await add_robot(first, account * 10, user_id=account, account_id=account)
        records = [
            position(a, f"K{a}-{i}", closed=NOW - timedelta(minutes=5 * i + 1), net=str(i - 3))
            for a in range(10, 16)
            for i in range(12)
        ]
        replay = write_replay(tmp_path / "r.jsonl", records)
        async with history_sync(first, replay) as one, history_sync(second, replay) as two:
            a, b = await asyncio.gather(one.run_cycle(), two.run_cycle())
        rows = await orders(first)
        assert len(rows) == len(records)
        assert len({o.order_sn for o in rows}) == len(records)
        profitable = sum(1 for r in records if Decimal(r["net_profit"]) > 0)
        assert len(await consumes(first)) == profitable
        assert a.charged + b.charged == profitable
        await assert_ledger_consistent(first, {})
    finally:
        await first.close()
        await second.close()


async def test_a_failing_account_lock_fails_that_account_only(
    server_db: Database, tmp_path: Path, logs: list[dict[str, Any]]
) -> None:
    """GET_LOCK's connection breaking for one account (a fault injected into our own lock
    method: no real artefact makes GET_LOCK fail on cue) fails that account; the cycle syncs
    the others and logs its summary."""
    for account in (10, 11, 12):
        await add_account(server_db, account, user_id=account)
        await add_robot(server_db, account * 10, user_id=account, account_id=account)
    replay = write_replay(
        tmp_path / "r.jsonl",
        [position(a, f"K{a}", closed=NOW - timedelta(hours=1)) for a in (10, 11, 12)],
    )

    class LockFails(HistorySync):
        @asynccontextmanager
        async def _account_lock(self, account_id: int) -> AsyncIterator[bool]:
            if account_id == 11:
                raise ConnectionLost("open a session connection: connection refused")
            async with super()._account_lock(account_id) as held:
                yield held

    async with history_sync(server_db, replay) as sync:
        broken = LockFails(sync.db, sync.consumer, sync.provider, sync.settings)
        summary = await broken.run_cycle()
    assert (summary.streams, summary.failed_streams, summary.inserted) == (3, 1, 2)
    [failed] = [e for e in logs if e["event"] == "account failed"]
    assert failed["account_id"] == 11 and failed["will_retry"] == "next cycle"
    assert [e for e in logs if e["event"] == "history sync summary"]


async def test_an_order_inserted_for_a_record_but_never_bound_is_that_records(
    server_db: Database, tmp_path: Path
) -> None:
    """An order carrying the order_sn derived from a record (rule f) with no binding - the
    first release's orders, or one a crash left - is that record's order, not a duplicate key
    that would fail the stream forever."""
    await one_robot(server_db)
    closed = NOW - timedelta(hours=2)
    mine = await insert_order(
        server_db,
        user_id=7,
        robot_id=100,
        order_sn=order_sn_for("binance", 10, "B-1"),
        exchange_order_id="something else",
        close_time=server_db.to_db_time(closed),
        close_price=Decimal("61250"),
        hold_duration=3600,
        open_time=server_db.to_db_time(closed - timedelta(hours=1)),
    )
    replay = write_replay(tmp_path / "r.jsonl", [position(10, "B-1", closed=closed)])
    async with history_sync(server_db, replay) as sync:
        summary = await sync.run_cycle()
    assert (summary.failed_streams, summary.inserted, summary.matched) == (0, 0, 1)
    assert await bindings(server_db) == {"B-1": (mine, "order", "order_id")}


async def test_two_closes_a_minute_apart_are_two_orders_across_pages(
    server_db: Database, tmp_path: Path
) -> None:
    """An order the daemon inserted for one record is that record's: a second record closing
    60 s later (same direction, same size) is not 'ambiguous' with it, even in a later page."""
    await one_robot(server_db)
    closed = NOW - timedelta(hours=1)
    replay = write_replay(
        tmp_path / "r.jsonl",
        [
            position(10, "B-1", closed=closed),
            position(10, "B-2", closed=closed + timedelta(seconds=60)),
        ],
    )
    async with history_sync(server_db, replay, page_size=1) as sync:
        summary = await sync.run_cycle()
    assert (summary.inserted, summary.ambiguous, summary.parts) == (2, 0, 0)
    assert len(await orders(server_db)) == 2


async def test_a_bound_order_whose_charge_never_ran_is_charged_when_read_again(
    any_db: Database, tmp_path: Path
) -> None:
    """A crash after a page's COMMIT and before its charge (and before the cursor moved): the
    next cycle reads the records again, finds them bound (rule a, nothing to write) and must
    charge the orders still waiting. The state is made by the real paths: a cycle that charges
    nothing (power.mode off) writes the orders and bindings; its cursor is then dropped."""
    await one_robot(any_db)
    replay = write_replay(
        tmp_path / "r.jsonl",
        [
            position(10, "C-1", closed=NOW - timedelta(hours=2), net="12.5"),
            position(10, "C-2", closed=NOW - timedelta(hours=1), net="-3.25"),
        ],
    )
    async with ExchangeRegistry({"replay": AdapterOptions(path=replay)}) as registry:
        uncharged = PowerConsumer(any_db, RULES, PowerMode.OFF)
        first = await HistorySync(any_db, uncharged, registry, SyncSettings()).run_cycle()
        assert (first.inserted, first.charged, len(await consumes(any_db))) == (2, 0, 0)

        async def crash_before_the_cursor(conn: AsyncConnection) -> None:
            await conn.execute(stream_cursor.delete())

        await any_db.transaction(crash_before_the_cursor, what="forget the cursor")
        charging = PowerConsumer(any_db, RULES)
        again = await HistorySync(any_db, charging, registry, SyncSettings()).run_cycle()
    assert (again.records, again.inserted, again.matched, again.charged) == (2, 0, 2, 1)
    [charge] = await consumes(any_db)
    won = next(o for o in await orders(any_db) if o.realized_profit > 0)
    assert charge.order_id == won.id and charge.consume_power == Decimal("1.25")
    await assert_ledger_consistent(any_db, {})
