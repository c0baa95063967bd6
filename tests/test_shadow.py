"""``power.mode: shadow`` and ``off`` beside hotgo's live charger, and ``report --shadow``.

On MariaDB and PostgreSQL (upstream's DDL), against two fake Bybit servers (real ccxt), with
the real command line. The "engine" below charges some orders the way upstream's engine did
(docs/architecture.md; lilei800/toogo_v2 ``order_sync.go``: ``ConsumePower`` writes a consume row
and ``ChangeBalance`` reads the wallet without a lock, writes the absolute balance back and a
wallet-log row; then the order gets ``power_consumed = 1`` and ``power_amount = profit ×
rate``, no VIP discount). The differences are planted: an order both charged alike, one the
engine charged without the VIP discount, one only the engine charged (its 2006 placeholder
close time keeps the daemon away), and orders only the daemon would charge.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from daemon.config import load_config
from daemon.runtime import sync_settings
from kits.fake_exchanges import FAKES, FakeExchange
from kits.seed import insert_order, seed_backlog, set_discount, set_wallet
from reconcile.charging.consumer import PowerConsumer
from reconcile.charging.corrections import CorrectionMode
from reconcile.charging.outcomes import Outcome, PowerMode, Source
from reconcile.charging.shadow import Verdict, compare
from reconcile.charging.sweep import SweepSettings, sweep
from reconcile.storage.db import Database
from reconcile.storage.schema import (
    binding,
    exchange_record,
    power_consume,
    record_order_id,
    shadow_charge,
    stream_cursor,
    table_names,
    trading_order,
    wallet,
    wallet_log,
)
from reconcile.storage.schema import verdict as trade_verdict
from tests.history_kit import RULES, add_account, add_robot, record
from tests.procs import run_cli, write_config

HOUR = timedelta(hours=1)
Q = Decimal("0.00000001")
RATE = Decimal("0.10")
VIP = Decimal("20")  # user 8's power_discount, percent


def daemon_figure(profit: Decimal, user_id: int) -> Decimal:
    """The daemon's rule, by hand: profit × rate, less user 8's VIP discount."""
    off = VIP if user_id == 8 else Decimal(0)
    return (profit * RATE * (1 - off / 100)).quantize(Q)


async def engine_charge(db: Database, order_id: int) -> Decimal:
    """What upstream's engine wrote when it charged an order (no unique key, no lock)."""

    async def charge(conn: AsyncConnection) -> Decimal:
        t = trading_order.c
        columns = (t.id, t.user_id, t.robot_id, t.order_sn, t.realized_profit)
        o = (await conn.execute(select(*columns).where(t.id == order_id))).one()
        amount = (o.realized_profit * RATE).quantize(Q)
        now = db.now()
        await conn.execute(
            power_consume.insert().values(
                user_id=o.user_id,
                robot_id=o.robot_id,
                order_id=o.id,
                order_sn=o.order_sn,
                profit_amount=o.realized_profit,
                consume_rate=RATE,
                consume_power=amount,
                from_power=amount,
                vip_level=1,
                discount_rate=0,
                original_power=amount,
                created_at=now,
            )
        )
        before = (
            await conn.execute(select(wallet.c.power).where(wallet.c.user_id == o.user_id))
        ).scalar_one()
        await conn.execute(
            wallet.update().where(wallet.c.user_id == o.user_id).values(power=before - amount)
        )
        await conn.execute(
            wallet_log.insert().values(
                user_id=o.user_id,
                account_type="power",
                change_type="power_consume",
                change_amount=-amount,
                before_amount=before,
                after_amount=before - amount,
                related_id=o.id,
                related_type="trading_order",
                order_sn=o.order_sn,
                remark="profit order power consume",
                created_at=now,
            )
        )
        await conn.execute(
            trading_order.update()
            .where(trading_order.c.id == order_id)
            .values(power_consumed=1, power_amount=amount, updated_at=now)
        )
        return Decimal(amount)

    return await db.transaction(charge, what="the engine charges an order")


@dataclass
class Planted:
    equal: set[int]  # the engine charged them as the daemon would
    different: dict[int, tuple[Decimal, Decimal]]  # order -> (engine's, daemon's)
    hotgo_only: set[int]
    daemon_only: set[int]  # engine orders it missed
    realtime: int  # charged through `consume --order-id` first
    losing: int  # an engine order that lost: never charged, never shadowed


async def plant(db: Database, fakes: tuple[FakeExchange, FakeExchange]) -> Planted:
    """Two users on two accounts; the engine records six closes and charges half of them."""
    for account, user, fake in ((10, 7, fakes[0]), (11, 8, fakes[1])):
        await add_account(
            db,
            account,
            user_id=user,
            platform="bybit",
            base_url=fake.url,
            api_key=fake.api_key,
            secret_key=fake.secret,
            passphrase=fake.passphrase,
        )
        await add_robot(db, account * 10, user_id=user, account_id=account, exchange="bybit")
        await set_wallet(db, user, Decimal("100"))
    await set_discount(db, 8, VIP)
    now = datetime.now(UTC).replace(microsecond=0)

    async def engine_close(robot: int, user: int, hours: int, key: str) -> int:
        closed = now - hours * HOUR
        oid = await insert_order(
            db,
            user_id=user,
            robot_id=robot,
            open_price=Decimal("60000"),
            close_price=Decimal("61000"),
            quantity=Decimal("0.01"),
            margin=Decimal("60"),
            realized_profit=Decimal("9.8"),
            open_time=db.to_db_time(closed - HOUR),
            close_time=db.to_db_time(closed + timedelta(seconds=20)),
        )
        fakes[0 if robot == 100 else 1].records.append(record(key, closed, size="0.01", pnl="9.8"))
        return oid

    equal_a = await engine_close(100, 7, 9, "c-1")
    daemon_a = await engine_close(100, 7, 8, "c-2")
    realtime = await engine_close(100, 7, 7, "c-3")
    vip = await engine_close(110, 8, 6, "c-4")
    daemon_b = await engine_close(110, 8, 5, "c-5")
    # without an exchange record: found by the sweep alone
    equal_b = await insert_order(db, user_id=7, robot_id=100, realized_profit=Decimal("4.2"))
    losing = await insert_order(db, user_id=7, robot_id=100, realized_profit=Decimal("-3"))
    placeholder = await insert_order(
        db,
        user_id=7,
        robot_id=100,
        realized_profit=Decimal("5"),
        close_time=datetime(2006, 1, 2, 15, 4, 5),
    )
    still_open = await insert_order(
        db,
        user_id=7,
        robot_id=100,
        status=1,
        close_time=None,
        close_price=None,
        realized_profit=Decimal(0),
        open_time=db.to_db_time(now - 4 * HOUR),
    )
    fakes[0].records.append(record("c-6", now - 3 * HOUR, size="1", pnl="9.8"))  # closes it
    # closed on the exchange only: the sync inserts them (one profitable, one losing)
    fakes[1].records.append(record("c-7", now - 2 * HOUR, size="0.01", pnl="9.8"))
    fakes[1].records.append(record("c-8", now - HOUR, size="0.01", pnl="-10.2", long=False))

    for oid in (equal_a, equal_b, vip, placeholder):
        await engine_charge(db, oid)
    return Planted(
        equal={equal_a, equal_b},
        different={vip: (Decimal("0.98"), daemon_figure(Decimal("9.8"), 8))},
        hotgo_only={placeholder},
        daemon_only={daemon_a, realtime, daemon_b, still_open},
        realtime=realtime,
        losing=losing,
    )


async def dump(db: Database, *, skip: set[str]) -> dict[str, list[tuple[Any, ...]]]:
    """Every table of the database but ``skip``, whole (SELECT *), rows sorted."""

    async def read(conn: AsyncConnection) -> dict[str, list[tuple[Any, ...]]]:
        out = {}
        for name in sorted(await table_names(conn) - skip):
            rows = await conn.execute(text(f"SELECT * FROM {name}"))
            out[name] = sorted((tuple(r) for r in rows), key=repr)
        return out

    return await db.transaction(read, what="dump tables")


async def power_columns(db: Database) -> dict[int, tuple[int, Decimal]]:
    o = trading_order.c

    async def read(conn: AsyncConnection) -> dict[int, tuple[int, Decimal]]:
        rows = await conn.execute(select(o.id, o.power_consumed, o.power_amount))
        return {r.id: (r.power_consumed, r.power_amount) for r in rows}

    return await db.transaction(read, what="read power columns")


async def rows_of(db: Database, stmt: Any) -> list[Any]:
    async def read(conn: AsyncConnection) -> list[Any]:
        return list(await conn.execute(stmt))

    return await db.transaction(read, what="test read")


@asynccontextmanager
async def beside_the_engine(
    db: Database, url: str, tmp_path: Path, mode: str
) -> AsyncIterator[tuple[Planted, Path]]:
    """The planted orders and records, served by two fake Bybits; a config in ``mode``."""
    async with FAKES["bybit"]() as one, FAKES["bybit"]() as two:
        cfg = write_config(
            tmp_path / "c.yaml",
            url,
            power={"consume_rate": "0.10", "min_consume": "0.01", "mode": mode},
            exchanges={"bybit": {"timeout": "2s", "retry": {"attempts": 2, "initial": "10ms"}}},
        )
        yield await plant(db, (one, two)), cfg


def events(out: str, name: str) -> list[dict[str, Any]]:
    lines = (json.loads(x) for x in out.splitlines() if x.startswith("{"))
    return [e for e in lines if e.get("event") == name]


async def cli(cfg: Path, *args: str) -> str:
    code, out, err = await run_cli(cfg, *args)
    assert code == 0, err + out
    return out


async def test_shadow_mode_beside_the_engine(
    server_db: Database, server_url: str, tmp_path: Path
) -> None:
    async with beside_the_engine(server_db, server_url, tmp_path, "shadow") as (planted, cfg):
        hotgo = {power_consume.name, wallet.name, wallet_log.name}
        before = await dump(server_db, skip=set())
        flags = await power_columns(server_db)

        # the realtime path, then the daemon's cycle: history sync and compensation sweep
        out = await cli(cfg, "consume", "--order-id", str(planted.realtime))
        [result] = events(out, "consume result")
        assert result["outcome"] == "would_charge"
        assert [e["order_id"] for e in events(out, "would charge")] == [planted.realtime]
        out = await cli(cfg, "run", "--once")
        assert not events(out, "power consumed") and not events(out, "skip duplicate")
        first = await rows_of(server_db, select(shadow_charge))

        # again: nothing new, and the realtime path finds the row
        out = await cli(cfg, "run", "--once")
        assert not events(out, "would charge")
        out = await cli(cfg, "consume", "--order-id", str(planted.realtime))
        [dup] = events(out, "skip duplicate (shadow)")
        assert dup["order_id"] == planted.realtime and dup["source"] == "realtime"
        assert await rows_of(server_db, select(shadow_charge)) == first

        # hotgo's tables byte for byte as the engine left them, its orders' power_* too
        after = await dump(server_db, skip=set())
        assert {t: after[t] for t in hotgo} == {t: before[t] for t in hotgo}
        now_flags = await power_columns(server_db)
        assert {i: now_flags[i] for i in flags} == flags
        assert all(v == (0, Decimal(0)) for i, v in now_flags.items() if i not in flags)

        # every eligible order (charged by hotgo or not) has exactly one shadow row, priced
        o = trading_order.c
        eligible = {
            r.id: r
            for r in await rows_of(
                server_db,
                select(o.id, o.user_id, o.realized_profit).where(
                    o.status == 2, o.realized_profit > 0, o.close_time >= datetime(2010, 1, 1)
                ),
            )
        }
        shadowed = [r.order_id for r in first]
        assert sorted(shadowed) == sorted(eligible)
        for r in first:
            order = eligible[r.order_id]
            assert r.consume_power == daemon_figure(order.realized_profit, order.user_id)
            assert r.profit_amount == order.realized_profit and r.user_id == order.user_id
        inserted = set(eligible) - planted.equal - set(planted.different) - planted.daemon_only
        assert len(inserted) == 1  # c-7, closed on the exchange only
        sources = {r.order_id: r.source for r in first}
        assert sources[planted.realtime] == "realtime"
        assert {sources[i] for i in inserted} == {"history"}
        assert planted.losing not in sources

        # the report lists exactly what was planted
        out = await cli(cfg, "report", "--shadow", "--since", "1d", "--format", "json")
        doc = json.loads(out)
        by: dict[str, dict[int, Any]] = {}
        for row in doc["orders"]:
            by.setdefault(row["verdict"], {})[row["order_id"]] = row
        assert set(by["equal"]) == planted.equal
        assert set(by["hotgo_only"]) == planted.hotgo_only
        assert set(by["daemon_only"]) == planted.daemon_only | inserted
        assert {
            k: (Decimal(v["hotgo"]), Decimal(v["daemon"])) for k, v in by["different"].items()
        } == planted.different
        totals = {t["verdict"]: t for t in doc["totals"]}
        assert totals["different"]["orders"] == 1
        assert Decimal(totals["hotgo_only"]["hotgo"]) == Decimal("0.5")

        table = await cli(cfg, "report", "--shadow", "--format", "table")
        [vip] = planted.different
        assert f"{vip}" in table and "0.78400000" in table and "2 equal order(s)" in table
        sheet = list(
            csv.reader(io.StringIO(await cli(cfg, "report", "--shadow", "--format", "csv")))
        )
        assert sheet[0][:4] == ["order_id", "user_id", "order_sn", "verdict"]
        assert len(sheet) == 1 + len(doc["orders"])
        code, _, err = await run_cli(cfg, "report", "--shadow", "--order", str(vip))
        assert code == 2 and "--shadow takes only" in err


async def test_off_mode_writes_nothing_but_orders_and_bindings(
    server_db: Database, server_url: str, tmp_path: Path
) -> None:
    async with beside_the_engine(server_db, server_url, tmp_path, "off") as (planted, cfg):
        # the orders, their bindings with the records bound (and the records' order ids, and
        # the legs those ids reveal), the cursors: nothing else
        reconciled = {
            trading_order.name,
            binding.name,
            exchange_record.name,
            record_order_id.name,
            trade_verdict.name,
            stream_cursor.name,
            "toogo_reconcile_poll",
        }
        before = await dump(server_db, skip=reconciled)
        flags = await power_columns(server_db)

        out = await cli(cfg, "consume", "--order-id", str(planted.realtime))
        [result] = events(out, "consume result")
        assert result["outcome"] == "not_eligible" and "power.mode: off" in result["reason"]
        out = await cli(cfg, "run", "--once")
        await cli(cfg, "sweep")
        [summary] = events(out, "history sync summary")
        assert (summary["inserted"], summary["closed"], summary["charged"]) == (2, 1, 0)

        assert await dump(server_db, skip=reconciled) == before
        now_flags = await power_columns(server_db)
        assert {i: now_flags[i] for i in flags} == flags
        assert len(now_flags) == len(flags) + 2
        assert len(await rows_of(server_db, select(binding))) == 8  # c-1 ... c-8


async def test_shadow_sweeps_share_the_work_and_record_each_order_once(
    server_db: Database,
) -> None:
    seeded = await seed_backlog(server_db, orders=300, users=20)
    # a third of them charged by the engine meanwhile: shadowed too
    for oid in seeded.order_ids[::3]:
        await engine_charge_flag(server_db, oid)
    consumers = [PowerConsumer(server_db, RULES, PowerMode.SHADOW) for _ in range(3)]
    summaries = await asyncio.gather(
        *(sweep(c, SweepSettings(page_size=40, workers=2)) for c in consumers)
    )
    assert all(s.ok for s in summaries)
    o = trading_order.c
    eligible = {
        r.id
        for r in await rows_of(server_db, select(o.id).where(o.status == 2, o.realized_profit > 0))
    }
    shadowed = [r.order_id for r in await rows_of(server_db, select(shadow_charge.c.order_id))]
    assert sorted(shadowed) == sorted(eligible)
    assert sum(s.would_charge for s in summaries) == len(eligible)
    assert not await rows_of(server_db, select(power_consume))

    again = await sweep(consumers[0], SweepSettings(page_size=40))
    assert (again.would_charge, again.pages) == (0, 0)
    many = await consumers[0].charge_many(sorted(eligible)[:5], Source.HISTORY)
    assert {r.outcome for r in many.results} == {Outcome.SKIPPED_DUPLICATE}
    off = PowerConsumer(server_db, RULES, PowerMode.OFF)
    assert (await sweep(off, SweepSettings())).pages == 0
    assert (await off.charge_many(sorted(eligible), Source.HISTORY)).results == []


async def engine_charge_flag(db: Database, order_id: int) -> None:
    """Only the flag, as the engine leaves an order it charged (enough for the sweep's passes)."""

    async def flag(conn: AsyncConnection) -> None:
        await conn.execute(
            trading_order.update().where(trading_order.c.id == order_id).values(power_consumed=1)
        )

    await db.transaction(flag, what="flag an order")


async def test_realtime_shadow_and_the_comparison_in_exact_decimals(any_db: Database) -> None:
    await set_wallet(any_db, 1, Decimal("10"))
    both = await insert_order(any_db, realized_profit=Decimal("0.7920"))  # 0.0792: the operators'
    mine = await insert_order(any_db, realized_profit=Decimal("3.3333"))
    await engine_charge(any_db, both)
    before = await dump(any_db, skip={shadow_charge.name})
    consumer = PowerConsumer(any_db, RULES, PowerMode.SHADOW)

    first = await consumer.charge(both, Source.REALTIME)
    assert (first.outcome, first.consume_power) == (Outcome.WOULD_CHARGE, Decimal("0.0792"))
    again = await consumer.charge(both, Source.SWEEP)
    assert (again.outcome, again.consume_power) == (Outcome.SKIPPED_DUPLICATE, Decimal("0.0792"))
    assert (await consumer.charge(mine, Source.REALTIME)).consume_power == Decimal("0.33333")
    assert await dump(any_db, skip={shadow_charge.name}) == before

    now = datetime.now(UTC)
    report = await compare(any_db, since=now - HOUR, until=now + HOUR)
    assert [(r.order_id, r.verdict, r.hotgo, r.daemon) for r in report.orders] == [
        (both, Verdict.EQUAL, Decimal("0.0792"), Decimal("0.0792")),
        (mine, Verdict.DAEMON_ONLY, None, Decimal("0.33333")),
    ]
    totals = {t.verdict: t for t in report.totals()}
    assert totals[Verdict.DAEMON_ONLY].daemon == Decimal("0.33333")
    assert str(totals[Verdict.HOTGO_ONLY].hotgo) == "0E-8"  # 0 at the columns' scale
    assert not (await compare(any_db, since=now + HOUR, until=now + 2 * HOUR)).orders


async def test_shadow_mode_never_waits_for_a_lock_hotgo_holds(server_db: Database) -> None:
    """hotgo's engine in the middle of charging an order (its row locked, uncommitted) does not
    hold up the shadow sweep, which locks nothing of hotgo's."""
    busy = await insert_order(server_db, realized_profit=Decimal("2"))
    other = await insert_order(server_db, realized_profit=Decimal("3"))
    consumer = PowerConsumer(server_db, RULES, PowerMode.SHADOW)
    async with server_db.engine.connect() as engine:
        await engine.begin()
        t = trading_order.c
        await engine.execute(select(t.id).where(t.id == busy).with_for_update())
        await engine.execute(trading_order.update().where(t.id == busy).values(power_consumed=1))
        summary = await asyncio.wait_for(sweep(consumer, SweepSettings()), timeout=5)
        realtime = await asyncio.wait_for(consumer.charge(busy, Source.REALTIME), timeout=5)
        await engine.rollback()
    assert summary.ok and summary.would_charge == 2
    assert realtime.outcome is Outcome.SKIPPED_DUPLICATE
    shadowed = await rows_of(server_db, select(shadow_charge.c.order_id))
    assert sorted(r.order_id for r in shadowed) == sorted([busy, other])


@pytest.mark.parametrize(
    ("mode", "applied"),
    [
        ("charge", CorrectionMode.ADJUST),
        ("shadow", CorrectionMode.LOG),
        ("off", CorrectionMode.LOG),
    ],
)
def test_corrections_are_charges_and_follow_the_mode(
    tmp_path: Path, mode: str, applied: CorrectionMode
) -> None:
    """``power.corrections: adjust`` writes ledger entries: only where the daemon charges.
    ``mode: off`` unquoted, as an operator writes it (YAML reads a boolean false)."""
    path = tmp_path / "c.yaml"
    path.write_text(f"power:\n  mode: {mode}\n  corrections: adjust\n")
    assert sync_settings(load_config(path)).corrections is applied
