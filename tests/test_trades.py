"""reconcile.trades rule by rule, on MariaDB and PostgreSQL with upstream's DDL.

Each test writes a trade row as upstream's engine closes it (opening id in exchange_order_id,
closing id in close_order_id: robot_engine.go 7206-7248, order_status_sync.go 1834-1990) and, where
the rule is about one, its closing leg as ``SyncOrderHistoryToDB`` inserts it (robot.go 1110-1286:
the closing order's id as exchange_order_id, its price and time as open_price/open_time, ``short``
for a SELL) and the position check closes it (order_status_sync.go 1122-1168: close_reason
手动平仓(同步检测), the fill's PnL or a ticker estimate). The consumer then charges what it is
given; what it charged is read back from hg_toogo_power_consume. tests/test_trades_legs.py runs the
whole daemon on such data.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from kits.seed import engine_order_id, insert_order
from kits.upstream import PG_CLOSE_ID_COLUMNS
from reconcile.charging.consumer import PowerConsumer
from reconcile.charging.held import decide, list_held
from reconcile.charging.outcomes import Outcome, Source
from reconcile.charging.pricing import PowerRules
from reconcile.charging.trade_rows import symbol_key
from reconcile.charging.trades import TradeJudge
from reconcile.charging.verdicts import Rule, Verdict
from reconcile.storage.db import Database
from reconcile.storage.schema import (
    binding,
    power_consume,
    record_order_id,
    stream_cursor,
    trading_order,
    trading_robot,
    verdict,
)
from tests.history_kit import add_account, add_robot

pytestmark = pytest.mark.mysql

RULES = PowerRules(Decimal("0.10"), Decimal("0.01"), vip_discount=False)
LEG_REASON = "手动平仓(同步检测)"


async def trade_and_leg(
    db: Database,
    *,
    robot_id: int = 100,
    leg_robot_id: int | None = None,
    direction: str = "long",
    leg_direction: str = "short",
    leg_profit: str = "3.0000",
    close_ids: bool = True,
) -> tuple[int, int, str]:
    """A closed trade and its closing leg, both profitable; (trade id, leg id, closing id)."""
    now = db.now()
    opened, closed = now - timedelta(hours=2), now - timedelta(minutes=30)
    closing = engine_order_id()
    trade = await insert_order(
        db,
        user_id=7,
        robot_id=robot_id,
        direction=direction,
        open_time=opened,
        close_time=closed,
        open_price=Decimal("60000"),
        close_price=Decimal("60300"),
        quantity=Decimal("0.01"),
        realized_profit=Decimal("3.0000"),
        **({"close_order_id": closing} if close_ids else {}),
    )
    leg = await insert_order(
        db,
        user_id=7,
        robot_id=leg_robot_id or robot_id,
        direction=leg_direction,
        exchange_order_id=closing,
        open_price=Decimal("60300"),
        open_time=closed,
        created_at=closed,
        quantity=Decimal("0.01"),
        leverage=0,
        margin=Decimal("0"),
        close_time=closed + timedelta(seconds=40),
        close_price=Decimal("60300"),
        realized_profit=Decimal(leg_profit),
        close_reason=LEG_REASON,
        **({"close_order_id": closing} if close_ids else {}),
    )
    return trade, leg, closing


async def synced_trade_and_leg(db: Database) -> tuple[int, int, str]:
    """A trade and its leg without close ids, the trade bound by the sync to binance's close
    (record key = the closing orderId, as the binance adapter keys it)."""
    trade, leg, closing = await trade_and_leg(db, close_ids=False)
    await insert(
        db,
        binding,
        platform="binance",
        account_id=10,
        record_key=closing,
        order_id=trade,
        primary_order_id=trade,
        kind="order",
        rule="close_time",
        created_at=db.now(),
    )
    return trade, leg, closing


async def charged(db: Database) -> dict[int, Decimal]:
    async def read(conn: AsyncConnection) -> dict[int, Decimal]:
        c = power_consume.c
        return {
            r.order_id: r.consume_power
            for r in await conn.execute(select(c.order_id, c.consume_power))
        }

    return await db.transaction(read, what="read charges")


async def insert(db: Database, table: Any, **values: Any) -> None:
    async def ins(conn: AsyncConnection) -> None:
        await conn.execute(table.insert().values(**values))

    await db.transaction(ins, what=f"seed {table.name}")


async def verdicts(db: Database) -> dict[int, tuple[str, str, int | None]]:
    async def read(conn: AsyncConnection) -> dict[int, tuple[str, str, int | None]]:
        v = verdict.c
        rows = await conn.execute(select(v.order_id, v.verdict, v.rule, v.trade_order_id))
        return {r.order_id: (r.verdict, r.rule, r.trade_order_id) for r in rows}

    return await db.transaction(read, what="read verdicts")


@pytest.fixture
async def account(server_db: Database) -> Database:
    if server_db.dialect.is_postgresql:

        async def columns(conn: AsyncConnection) -> None:
            await conn.exec_driver_sql(PG_CLOSE_ID_COLUMNS)

        await server_db.transaction(columns, what="the close-id columns")
    await add_account(server_db, 10, user_id=7)
    await add_robot(server_db, 100, user_id=7, account_id=10)
    await add_robot(server_db, 101, user_id=7, account_id=10)  # a second robot, same account
    return server_db


async def test_a_leg_named_by_the_trades_close_order_id_is_never_charged(account: Database) -> None:
    db = account
    trade, leg, _ = await trade_and_leg(db, leg_robot_id=101)  # the leg under the other robot
    consumer = PowerConsumer(db, RULES)
    batch = await consumer.charge_many([leg, trade], Source.SWEEP)
    outcomes = {r.order_id: r for r in batch.results}
    assert outcomes[trade].outcome is Outcome.CHARGED
    assert outcomes[leg].outcome is Outcome.LEG and f"of order {trade}" in str(outcomes[leg].reason)
    assert set(await charged(db)) == {trade}
    assert (await verdicts(db))[leg] == ("leg", "close_order_id", trade)
    # once recorded, the leg stays a leg: a second pass charges nothing and says why
    again = await consumer.charge(leg, Source.REALTIME)
    assert again.outcome is Outcome.LEG and set(await charged(db)) == {trade}


async def test_a_close_order_id_on_another_account_is_no_evidence(account: Database) -> None:
    db = account
    await add_account(db, 11, user_id=7)
    await add_robot(db, 110, user_id=7, account_id=11)
    trade, leg, _ = await trade_and_leg(db, leg_robot_id=110)  # same id, another account
    results = (await PowerConsumer(db, RULES).charge_many([trade, leg], Source.SWEEP)).results
    assert {r.order_id: r.outcome for r in results} == {
        trade: Outcome.CHARGED,
        leg: Outcome.CHARGED,
    }


async def test_the_exchange_record_of_the_trade_names_its_leg(account: Database) -> None:
    """No close-id columns on this install; the sync bound binance's close (orderId = the closing
    order) to the trade, so the row that order opened is its leg."""
    db = account
    trade, leg, closing = await synced_trade_and_leg(db)
    await insert(
        db,
        record_order_id,
        platform="binance",
        account_id=10,
        record_key=closing,
        exchange_order_id=closing,
    )
    results = (await PowerConsumer(db, RULES).charge_many([trade, leg], Source.SWEEP)).results
    outcomes = {r.order_id: r.outcome for r in results}
    assert outcomes == {trade: Outcome.CHARGED, leg: Outcome.LEG}
    assert (await verdicts(db))[leg] == ("leg", "exchange_record", trade)


@pytest.mark.parametrize(
    ("direction", "leg_direction"),
    [("long", "short"), ("short", "long"), ("short", "short")],
    ids=["long-sell", "short-oneway-buy", "short-hedge"],
)
async def test_a_row_shaped_like_a_leg_is_held_not_charged(
    account: Database, direction: str, leg_direction: str
) -> None:
    """No close ids, no sync: the leg is only "possibly" one (it opened at the trade's close, in
    its closing direction, as large): held. The trade itself is charged."""
    db = account
    trade, leg, _ = await trade_and_leg(
        db, direction=direction, leg_direction=leg_direction, close_ids=False
    )
    consumer = PowerConsumer(db, RULES)
    results = {
        r.order_id: r for r in (await consumer.charge_many([trade, leg], Source.SWEEP)).results
    }
    assert results[trade].outcome is Outcome.CHARGED
    assert results[leg].outcome is Outcome.HELD
    assert f"possibly the closing leg of order {trade}" in str(results[leg].reason)
    assert set(await charged(db)) == {trade} and leg not in await verdicts(db)
    listed = await list_held(db, consumer.judge, since=db.now() - timedelta(days=1))
    assert [(h.order_id, h.rule, h.trade_order_id) for h in listed] == [(leg, "shape", trade)]


async def test_a_long_followed_by_a_long_is_not_a_leg(account: Database) -> None:
    db = account
    trade, second, _ = await trade_and_leg(db, leg_direction="long", close_ids=False)
    results = (await PowerConsumer(db, RULES).charge_many([trade, second], Source.SWEEP)).results
    assert {r.outcome for r in results} == {Outcome.CHARGED}


async def test_a_row_bound_by_the_sync_is_a_trade_even_if_shaped_like_a_leg(
    account: Database,
) -> None:
    db = account
    trade, second, _ = await trade_and_leg(db, close_ids=False)
    await insert(
        db,
        binding,
        platform="binance",
        account_id=10,
        record_key="r-2",
        order_id=second,
        primary_order_id=second,
        kind="order",
        rule="close_time",
        created_at=db.now(),
    )
    results = (await PowerConsumer(db, RULES).charge_many([trade, second], Source.SWEEP)).results
    assert {r.outcome for r in results} == {Outcome.CHARGED}


async def test_a_close_the_sync_has_not_read_yet_waits_for_it(account: Database) -> None:
    db = account
    closed = db.now() - timedelta(minutes=1)
    order = await insert_order(
        db, user_id=7, robot_id=100, close_time=closed, open_time=closed - timedelta(hours=1)
    )
    behind = datetime.now(UTC) - timedelta(minutes=5)  # the cursor, in UTC, before the close

    async def cursor(until: datetime, updated: datetime) -> None:
        await insert(
            db,
            stream_cursor,
            platform="binance",
            account_id=10,
            symbol="BTCUSDT",
            complete_until=until.replace(tzinfo=None),
            keys_at_cursor=json.dumps([]),
            updated_at=updated,
        )

    await cursor(behind, db.now())
    consumer = PowerConsumer(db, RULES)
    held = await consumer.charge(order, Source.REALTIME)
    assert held.outcome is Outcome.HELD and "awaiting the exchange sync" in str(held.reason)

    async def advance(conn: AsyncConnection) -> None:
        await conn.execute(
            stream_cursor.update().values(complete_until=datetime.now(UTC).replace(tzinfo=None))
        )

    await db.transaction(advance, what="the sync read past the close")
    assert (await consumer.charge(order, Source.REALTIME)).outcome is Outcome.CHARGED


async def test_a_stream_the_daemon_stopped_syncing_holds_nothing(account: Database) -> None:
    db = account
    order = await insert_order(db, user_id=7, robot_id=100)
    stale = db.now() - timedelta(days=2)
    await insert(
        db,
        stream_cursor,
        platform="binance",
        account_id=10,
        symbol="BTCUSDT",
        complete_until=datetime(2020, 1, 1),
        keys_at_cursor="[]",
        updated_at=stale,
    )
    assert (
        await PowerConsumer(db, RULES).charge(order, Source.REALTIME)
    ).outcome is Outcome.CHARGED


async def test_an_operator_charges_or_dismisses_a_held_row_once(account: Database) -> None:
    db = account
    trade, leg, _ = await trade_and_leg(db, close_ids=False)
    _, leg2, _ = await trade_and_leg(db, close_ids=False)
    consumer = PowerConsumer(db, RULES)
    await consumer.charge_many([trade, leg, leg2], Source.SWEEP)

    first = await decide(db, leg, Verdict.TRADE, actor="ops-anna", note="ticket 42")
    assert first.changed
    assert (await consumer.charge(leg, Source.OPERATOR)).outcome is Outcome.CHARGED
    again = await decide(db, leg, Verdict.TRADE, actor="ops-anna", note=None)
    assert not again.changed
    assert (await consumer.charge(leg, Source.OPERATOR)).outcome is Outcome.SKIPPED_DUPLICATE

    assert (await decide(db, leg2, Verdict.DISMISSED, actor="ops-ben", note=None)).changed
    dismissed = await consumer.charge(leg2, Source.SWEEP)
    assert dismissed.outcome is Outcome.NOT_ELIGIBLE and "dismissed" in str(dismissed.reason)
    recorded = await verdicts(db)
    assert recorded[leg] == ("trade", "operator", None)
    assert recorded[leg2] == ("dismissed", "operator", None)
    from reconcile.errors import PermanentError

    with pytest.raises(PermanentError, match="recorded as dismissed"):
        await decide(db, leg2, Verdict.TRADE, actor="ops-anna", note=None)
    with pytest.raises(PermanentError, match="charged already"):
        await decide(db, trade, Verdict.DISMISSED, actor="ops-anna", note=None)
    # a leg the rules prove (here by the trade's close_order_id) is never charged, even by hand
    proven_trade, proven_leg, _ = await trade_and_leg(db, close_ids=True)
    with pytest.raises(PermanentError, match="a leg is never charged"):
        await decide(db, proven_leg, Verdict.TRADE, actor="ops-anna", note=None)
    assert proven_leg not in await verdicts(db) and proven_trade not in await charged(db)
    assert set(await charged(db)) == {trade, leg}


async def test_the_sweep_passes_over_recorded_legs(account: Database) -> None:
    from reconcile.charging.sweep import SweepSettings, sweep

    db = account
    trade, leg, _ = await trade_and_leg(db)
    consumer = PowerConsumer(db, RULES)
    first = await sweep(consumer, SweepSettings(lookback=timedelta(days=1)))
    assert (first.charged, first.legs, first.held) == (1, 1, 0)
    second = await sweep(consumer, SweepSettings(lookback=timedelta(days=1)))
    assert (second.charged, second.legs, second.held, second.not_eligible) == (0, 0, 0, 0)

    async def count(conn: AsyncConnection) -> int:
        return int(
            (await conn.execute(select(func.count()).select_from(power_consume))).scalar_one()
        )

    assert await db.transaction(count, what="count") == 1
    assert leg in await verdicts(db) and trade not in await verdicts(db)


def test_symbols_compare_in_every_format() -> None:
    names = ("BTCUSDT", "BTC_USDT", "BTC-USDT-SWAP", "BTC/USDT:USDT", "btc_usdt")
    assert {symbol_key(s) for s in names} == {"BTCUSDT"}
    assert Rule("shape") is Rule.SHAPE and isinstance(TradeJudge, type)


async def test_audit_lists_a_leg_an_earlier_release_charged(account: Database) -> None:
    """The first releases charged every closed profitable row: a leg too. The audit names it,
    with its user, amount and trade; the daemon never charges it (nor anything) again."""
    from reconcile.views.audit import audit

    db = account
    trade, leg, _ = await trade_and_leg(db)
    old_release = PowerConsumer(db, RULES, judge=TradeJudge(db))
    # as the earlier release did: no judgement at all, every closed profitable row charged
    old_release.judge.judge = _every_row_a_trade  # type: ignore[method-assign]
    await old_release.charge_many([trade, leg], Source.SWEEP)
    assert set(await charged(db)) == {trade, leg}

    report = await audit(db, backlog_after=timedelta(hours=1))
    check = next(c for c in report.checks if c.name == "charged_legs")
    assert not report.ok and check.violations == 1
    [example] = check.examples
    assert (example["order_id"], example["user_id"], example["trade_order_id"]) == (leg, 7, trade)
    assert example["consume_power"] == Decimal("0.30000000") and example["rule"] == "close_order_id"
    # the daemon's periodic audit judges only recent charges; the command, the whole history

    async def age(conn: AsyncConnection) -> None:
        await conn.execute(power_consume.update().values(created_at=db.now() - timedelta(days=10)))

    await db.transaction(age, what="charged ten days ago")
    recent = await audit(db, backlog_after=timedelta(hours=1), legs_within=timedelta(days=7))
    assert next(c for c in recent.checks if c.name == "charged_legs").violations == 0
    whole = await audit(db, backlog_after=timedelta(hours=1))
    assert next(c for c in whole.checks if c.name == "charged_legs").violations == 1
    again = await PowerConsumer(db, RULES).charge_many([trade, leg], Source.SWEEP)
    assert {r.outcome for r in again.results} == {Outcome.SKIPPED_DUPLICATE}
    assert len(await charged(db)) == 2


async def _every_row_a_trade(conn: AsyncConnection, order_ids: Any, **_: Any) -> dict[int, Any]:
    return {}


async def test_migrate_up_refunds_the_charged_legs_once_and_rollback_puts_them_back(
    account: Database, server_url: str, tmp_path: Any
) -> None:
    from kits.seed import set_wallet
    from reconcile import migration as m
    from reconcile.storage.schema import wallet, wallet_log
    from reconcile.views.audit import audit
    from tests.procs import run_cli, write_config

    db = account
    await set_wallet(db, 7, Decimal("100"))
    trade, leg, _ = await trade_and_leg(db)
    old_release = PowerConsumer(db, RULES)
    old_release.judge.judge = _every_row_a_trade  # type: ignore[method-assign]
    await old_release.charge_many([trade, leg], Source.SWEEP)  # 0.3 each

    async def state(conn: AsyncConnection) -> tuple[Decimal, list[tuple[str, Decimal]], Any]:
        power = (await conn.execute(select(wallet.c.power).where(wallet.c.user_id == 7))).scalar()
        w = wallet_log.c
        log_rows = await conn.execute(
            select(w.change_type, w.change_amount).where(w.related_id == leg).order_by(w.id)
        )
        o = trading_order.c
        flags = (
            await conn.execute(select(o.power_consumed, o.power_amount).where(o.id == leg))
        ).one()
        return power, [tuple(r) for r in log_rows], tuple(flags)

    cfg = write_config(tmp_path / "c.yaml", server_url)
    _, out, err = await run_cli(cfg, "migrate", "check", "--json")
    listed = json.loads(out)["charged_legs"]
    assert [(x["order_id"], x["user_id"], x["trade_order_id"], x["amount"]) for x in listed] == [
        (leg, 7, trade, "0.30000000")
    ], err

    result = await m.up(db, refund_overcharge=True, dry_run=False)
    assert result.ok and result.legs is not None and result.legs.refunded_rows == 1
    power, ledger_rows, flags = await db.transaction(state, what="read")
    assert power == Decimal("99.70000000")  # 100 - 0.3 (trade) - 0.3 (leg) + 0.3 (refund)
    assert ledger_rows == [
        ("power_consume", Decimal("-0.30000000")),
        ("power_consume_refund", Decimal("0.30000000")),
    ]
    assert flags == (0, Decimal("0E-8")) or flags == (0, Decimal(0))
    assert set(await charged(db)) == {trade}
    assert (await audit(db, backlog_after=timedelta(hours=1))).ok
    again = await m.up(db, refund_overcharge=True, dry_run=False)
    assert not again.changed and (await db.transaction(state, what="read"))[0] == power
    assert (await PowerConsumer(db, RULES).charge(leg, Source.SWEEP)).outcome is Outcome.LEG

    undone = await m.rollback(db, dry_run=False, reverse_refunds=True)
    assert undone.restored_rows == 1 and undone.reversed_rows == 1
    assert undone.key_drop is None  # a legs backup: uk_user_order stays
    power, ledger_rows, flags = await db.transaction(state, what="read")
    assert power == Decimal("99.40000000") and flags[0] == 1 and flags[1] == Decimal("0.3")
    assert ledger_rows[-1] == ("power_consume_refund_reversal", Decimal("-0.30000000"))
    report = await audit(db, backlog_after=timedelta(hours=1))
    assert [c.name for c in report.checks if not c.ok] == ["charged_legs"]


async def test_an_upgrade_back_fills_the_order_ids_of_the_records_kept_before(
    account: Database,
) -> None:
    """Records bound by a release without toogo_reconcile_record_order: `migrate up` reads their
    order ids from the normalized JSON kept with them, so rule exchange_record sees their legs."""
    from reconcile import migration as m
    from reconcile.storage.schema import exchange_record

    db = account
    trade, leg, closing = await synced_trade_and_leg(db)
    now = db.now()
    normalized = json.dumps({"record_key": closing, "exchange_order_ids": [closing]})
    await insert(
        db,
        exchange_record,
        platform="binance",
        account_id=10,
        record_key=closing,
        symbol="BTCUSDT",
        close_time=now,
        profit=Decimal("3"),
        profit_basis="fees",
        normalized_json=normalized,
        raw_json="{}",
        created_at=now,
    )

    async def drop(conn: AsyncConnection) -> None:  # the release before this one
        for table in (record_order_id, verdict):
            await conn.exec_driver_sql(f"DROP TABLE {table.name}")

    await db.transaction(drop, what="the tables of the release before")
    assert (await m.up(db, dry_run=False)).ok

    async def ids(conn: AsyncConnection) -> list[tuple[Any, ...]]:
        ro = record_order_id.c
        rows = await conn.execute(select(ro.platform, ro.account_id, ro.exchange_order_id))
        return [tuple(r) for r in rows]

    assert await db.transaction(ids, what="read") == [("binance", 10, closing)]
    assert (await m.up(db, dry_run=False)).ok  # idempotent: nothing written twice
    assert await db.transaction(ids, what="read") == [("binance", 10, closing)]
    results = (await PowerConsumer(db, RULES).charge_many([trade, leg], Source.SWEEP)).results
    assert {r.order_id: r.outcome for r in results} == {
        trade: Outcome.CHARGED,
        leg: Outcome.LEG,
    }


@pytest.mark.parametrize("close_ids", [True, False], ids=["close_order_id", "no_close_ids"])
@pytest.mark.parametrize("leg_status", [1, 2], ids=["leg_open", "leg_closed"])
def test_the_sync_binds_a_close_to_its_trade_never_to_its_leg(
    close_ids: bool, leg_status: int
) -> None:
    """binance's record names the closing order; the leg row carries that id as its
    exchange_order_id (robot.go 1110-1286), opened at the close. Rule b used to bind the record
    to the leg (and, while the leg was still open, close and charge it). Now the record binds
    the trade (by close_order_id, or by close time without it) and names the leg."""
    from reconcile.records import ClosedPosition
    from reconcile.sync.matching import Candidate, Kind, Rule, Tolerances, decide

    closed = datetime(2026, 12, 1, 12, 0, 0)
    common: dict[str, Any] = {
        "robot_id": 100,
        "symbol": "BTCUSDT",
        "hold_duration": None,
        "power_consumed": 0,
        "bound": False,
    }
    trade = Candidate(
        id=1,
        order_sn="TO20261201110000AAAAAA",
        status=2,
        direction="long",
        exchange_order_id="700001",
        close_order_id="800001" if close_ids else None,
        quantity=Decimal("0.01"),
        open_time=closed - timedelta(hours=1),
        close_time=closed,
        close_price=Decimal("60300"),
        realized_profit=Decimal("3"),
        **common,
    )
    leg = Candidate(
        id=2,
        order_sn="TO20261201120000BBBBBB",
        status=leg_status,
        direction="short",
        exchange_order_id="800001",
        close_order_id="800001" if close_ids else None,
        quantity=Decimal("0.01"),
        open_time=closed,
        close_time=closed + timedelta(seconds=40) if leg_status == 2 else None,
        close_price=Decimal("60300") if leg_status == 2 else None,
        realized_profit=Decimal("3") if leg_status == 2 else None,
        **common,
    )
    record = ClosedPosition(
        platform="binance",
        account_id=10,
        symbol="BTC/USDT:USDT",
        direction="long",
        size=Decimal("0.01"),
        open_price=Decimal("60000"),
        close_price=Decimal("60300"),
        gross_pnl=Decimal("3"),
        fee=Decimal("-0.1"),
        funding=Decimal(0),
        net_profit=Decimal("2.9"),
        open_time=None,
        close_time=closed.replace(tzinfo=UTC),
        record_key="800001",
        exchange_order_ids=("800001",),
    )
    [decision] = decide(
        [record], [closed], [trade, leg], {}, "BTCUSDT", Tolerances(timedelta(seconds=120)), {}
    )
    assert decision.order is not None and decision.order.id == trade.id
    assert decision.kind is Kind.ORDER
    assert decision.rule is (Rule.ORDER_ID if close_ids else Rule.CLOSE_TIME)
    assert [c.id for c in decision.legs] == [leg.id]


async def test_report_counts_trades_legs_and_held_rows_per_account(account: Database) -> None:
    from reconcile.sync.settings import SyncSettings
    from reconcile.views.report import report
    from reconcile.views.report_figures import Period, Scope

    db = account
    trade, leg, _ = await trade_and_leg(db)  # a leg by close id: recorded
    other, shaped, _ = await trade_and_leg(db, robot_id=101)
    await insert_order(
        db, user_id=7, robot_id=101, direction="short", realized_profit=Decimal("-1")
    )  # a losing trade: still a trade

    async def forget_close_id(conn: AsyncConnection) -> None:  # `shaped` is only possibly a leg
        o = trading_order.c
        stmt = trading_order.update().where(o.id == other).values(close_order_id=None)
        await conn.execute(stmt)

    await db.transaction(forget_close_id, what="forget a close id")
    await PowerConsumer(db, RULES).charge_many([trade, leg, other, shaped], Source.SWEEP)
    now = datetime.now(UTC)
    got = await report(
        db,
        Period(now - timedelta(days=1), now + timedelta(minutes=1)),
        Scope(),
        sync=SyncSettings(),
    )
    [line] = got.accounts
    figures = line.figures
    assert line.id == 10
    assert (figures.trades, figures.legs, figures.held, figures.charges) == (3, 1, 1, 2)


async def test_a_table_created_under_a_snapshot_is_a_temporary_error(mysql_url: str) -> None:
    """`migrate up` creates the daemon's tables while the daemon may charge: a read of a table
    whose definition changed under the transaction (MariaDB 1412; 1684 from DESCRIBE during the
    DDL) is DefinitionChanging, which Database.transaction runs again."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from reconcile.errors import DatabaseTemporaryError, DefinitionChanging
    from reconcile.storage.db_errors import map_db_errors

    engine = create_async_engine(mysql_url, isolation_level="REPEATABLE READ")
    try:
        async with engine.connect() as reader, engine.connect() as ddl:
            await reader.execute(text("START TRANSACTION WITH CONSISTENT SNAPSHOT"))
            await ddl.execute(text("CREATE TABLE made_later (id INT PRIMARY KEY)"))
            await ddl.commit()
            with pytest.raises(DefinitionChanging) as raised, map_db_errors("read"):
                await reader.execute(text("SELECT * FROM made_later"))
            assert isinstance(raised.value, DatabaseTemporaryError)
            await reader.rollback()
    finally:
        await engine.dispose()


async def test_a_stream_no_longer_polled_holds_nothing(account: Database) -> None:
    """The robot stopped right after its last close: the sync no longer polls the stream, so
    that close is not waited for (it is charged at once, rule local)."""
    db = account
    closed = db.now() - timedelta(minutes=1)
    order = await insert_order(
        db, user_id=7, robot_id=100, close_time=closed, open_time=closed - timedelta(hours=1)
    )
    behind = (datetime.now(UTC) - timedelta(minutes=5)).replace(tzinfo=None)
    await insert(
        db,
        stream_cursor,
        platform="binance",
        account_id=10,
        symbol="BTCUSDT",
        complete_until=behind,
        keys_at_cursor="[]",
        updated_at=db.now(),
    )

    async def stop(conn: AsyncConnection) -> None:
        r = trading_robot.c
        await conn.execute(trading_robot.update().where(r.api_config_id == 10).values(status=4))

    await db.transaction(stop, what="stop the robots")
    result = await PowerConsumer(db, RULES).charge(order, Source.REALTIME)
    assert result.outcome is Outcome.CHARGED
