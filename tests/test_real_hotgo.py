"""The daemon on the real hotgo: upstream's own DDL, rows shaped the way upstream's engine writes
them, `run --once` twice against a fake Bybit (real ccxt).

What is real here: the schema (kits/upstream.py loads tests/fixtures/upstream) and the shape
of the engine's rows, as docs/architecture.md records them from lilei800/toogo_v2 - the opening
order's id in exchange_order_id, the closing order's id in close_order_id (where the column exists),
a POS-… placeholder for positions the engine back-filled, TO… order numbers, DATETIMEs written in
Asia/Shanghai. What is ours: the fake exchange (its wire format is Bybit's closed-pnl; the
fixtures of the exchanges' own docs examples are tested with the adapters) and the scenario.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from kits.databases import open_database
from kits.fake_exchanges import FAKES, FakeExchange
from kits.seed import assert_ledger_consistent, engine_order_sn
from kits.upstream import drop_close_id_columns
from reconcile.charging.consumer import PowerConsumer
from reconcile.charging.outcomes import Source
from reconcile.storage.db import Database
from reconcile.storage.schema import binding, power_consume, trading_order, wallet, wallet_log
from tests.history_kit import RULES, add_account, add_robot, record
from tests.procs import run_cli, write_config

pytestmark = pytest.mark.mysql

ZONE = "Asia/Shanghai"  # upstream deploys with TZ=Asia/Shanghai
HOUR = timedelta(hours=1)


class Engine:
    """Writes hg_trading_order rows as upstream's engine does (its own clock, in Asia/Shanghai)."""

    def __init__(self, db: Database, close_ids: bool) -> None:
        self.db = db
        self.close_ids = close_ids

    async def order(self, **fields: Any) -> int:
        now = self.db.now()
        row: dict[str, Any] = {
            "tenant_id": 3,
            "user_id": 7,
            "robot_id": 100,
            "order_sn": engine_order_sn(now),
            "symbol": "BTCUSDT",
            "direction": "long",
            "open_price": Decimal("60000"),
            "quantity": Decimal("0.01"),
            "leverage": 10,
            "margin": Decimal("60"),
            "status": 2,
            "created_at": now,
            "updated_at": now,
        }
        row.update(fields)
        if row["status"] == 2:
            row.setdefault("close_price", Decimal("61250"))
        for name in ("open_time", "close_time"):
            if isinstance(row.get(name), datetime) and row[name].tzinfo is not None:
                row[name] = self.db.to_db_time(row[name])
        if not self.close_ids:
            row.pop("close_order_id", None)
        if row.get("close_time") and "hold_duration" not in fields:
            row["hold_duration"] = int((row["close_time"] - row["open_time"]).total_seconds())

        async def ins(conn: AsyncConnection) -> int:
            result = await conn.execute(trading_order.insert().values(**row))
            return int(result.inserted_primary_key[0])  # type: ignore[index]

        return await self.db.transaction(ins, what="engine writes an order")


async def snapshot(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    async def read(conn: AsyncConnection) -> dict[str, list[tuple[Any, ...]]]:
        out: dict[str, list[tuple[Any, ...]]] = {}
        for table in (trading_order, power_consume, wallet, wallet_log, binding):
            # SELECT *: the live table, whatever columns this install has
            rows = await conn.execute(select(text("*")).select_from(table).order_by(table.c.id))
            out[table.name] = [tuple(r) for r in rows]
        return out

    return await db.transaction(read, what="snapshot")


@pytest.mark.parametrize("close_ids", [True, False], ids=["close_order_id", "no_close_ids"])
async def test_run_twice_on_engine_shaped_data(
    mysql_url: str, tmp_path: Path, close_ids: bool
) -> None:
    db = await open_database(mysql_url, timezone=ZONE)
    try:
        if not close_ids:

            async def drop(conn: AsyncConnection) -> None:
                await drop_close_id_columns(conn)

            await db.transaction(drop, what="an install without add_missing_order_fields.sql")
        async with FAKES["bybit"]() as fake:
            await run_scenario(db, mysql_url, tmp_path, fake, close_ids)
    finally:
        await db.close()


async def run_scenario(
    db: Database, url: str, tmp_path: Path, fake: FakeExchange, close_ids: bool
) -> None:
    await add_account(
        db,
        10,
        user_id=7,
        platform="bybit",
        base_url=fake.url,
        api_key=fake.api_key,
        secret_key=fake.secret,
        passphrase=fake.passphrase,
    )
    await add_robot(db, 100, user_id=7, account_id=10, exchange="bybit")
    await add_account(
        db,
        11,
        user_id=8,
        platform="bybit",
        base_url=fake.url,
        api_key=fake.api_key,
        secret_key=fake.secret,
    )
    await add_robot(db, 110, user_id=8, account_id=11, exchange="bybit", status=4)  # stopped
    engine = Engine(db, close_ids)
    now = datetime.now(UTC).replace(microsecond=0)
    t1, t2, t3, t4, t5, t6 = (now - k * HOUR for k in (6, 5, 4, 3, 2, 1))

    # 1. an engine-recorded close, charged already by the realtime path: opening id in
    #    exchange_order_id, closing id in close_order_id, closed 30 s from the exchange's close
    charged = await engine.order(
        exchange_order_id="1321003749386327552",
        close_order_id="c-1",
        open_time=t1 - HOUR,
        close_time=t1 + timedelta(seconds=30),
        close_price=Decimal("61000"),
        realized_profit=Decimal("9.8"),
    )
    await PowerConsumer(db, RULES).charge(charged, Source.REALTIME)
    fake.records += [record("c-1", t1, size="0.01", pnl="9.8")]
    # 2. a position the engine back-filled from the exchange: POS-… placeholder, not charged yet
    placeholder = await engine.order(
        exchange_order_id=f"POS-100-BTCUSDT-long-{time.time_ns()}",
        open_time=t2 - HOUR,
        close_time=t2 - timedelta(seconds=40),
        close_price=Decimal("61000"),
        realized_profit=Decimal("9.8"),
    )
    fake.records += [record("c-2", t2, size="0.01", pnl="9.8")]
    # 3. closed in two parts on the exchange, recorded by the engine as one order of 0.02
    parts = await engine.order(
        exchange_order_id="1321003749386327600",
        close_order_id="c-3b",
        quantity=Decimal("0.02"),
        margin=Decimal("120"),
        open_time=t3 - 2 * HOUR,
        close_time=t3 + timedelta(seconds=5),
        close_price=Decimal("61000"),
        realized_profit=Decimal("19.6"),
    )
    fake.records += [
        record("c-3a", t3 - timedelta(minutes=20), size="0.01", pnl="9.8"),
        record("c-3b", t3, size="0.01", pnl="9.8"),
    ]
    # 4. still open locally; the exchange shows it closed
    still_open = await engine.order(
        exchange_order_id="1321003749386327700",
        status=1,
        open_time=t4 - HOUR,
        close_time=None,
        realized_profit=Decimal(0),
    )
    fake.records += [record("c-4", t4, size="0.01", pnl="9.8")]
    # 5. closes the local table never saw: a profitable one and a losing one
    fake.records += [
        record("c-5", t5, size="0.01", pnl="9.8"),
        record("c-6", t6, size="0.01", pnl="-10.2", long=False),
    ]

    cfg = write_config(
        tmp_path / "c.yaml",
        url,
        power={"consume_rate": "0.10", "min_consume": "0.01"},
        exchanges={"bybit": {"timeout": "2s", "retry": {"attempts": 2, "initial": "10ms"}}},
    )
    cfg.write_text(cfg.read_text().replace("database:\n", f"database:\n  timezone: {ZONE}\n", 1))
    code, out, err = await run_cli(cfg, "run", "--once")
    assert code == 0, err + out
    first = await snapshot(db)
    code, out2, err = await run_cli(cfg, "run", "--once")
    assert code == 0, err + out2
    assert await snapshot(db) == first, "the second run changed something"

    orders = {r[0]: r for r in first[trading_order.name]}
    keys = {r[3]: r for r in first[binding.name]}  # record_key -> row
    kind = {k: (r[4], r[6]) for k, r in keys.items()}  # record_key -> (order_id, kind)
    assert kind["c-1"] == (charged, "order")
    assert kind["c-2"] == (placeholder, "order")
    assert kind["c-3a"] == (parts, "part") and kind["c-3b"] == (parts, "order")
    assert kind["c-4"] == (still_open, "order")
    inserted = {k: kind[k][0] for k in ("c-5", "c-6")}
    assert all(kind[k][1] == "order" for k in inserted)
    # every exchange close has exactly one local order; nothing inserted for the engine's closes
    assert set(keys) == {"c-1", "c-2", "c-3a", "c-3b", "c-4", "c-5", "c-6"}
    assert sorted(orders) == sorted([charged, placeholder, parts, still_open, *inserted.values()])
    # every profitable close has exactly one consume row; the losing one none
    consumed = [r[3] for r in first[power_consume.name]]  # order_id
    assert sorted(consumed) == sorted([charged, placeholder, parts, still_open, inserted["c-5"]])
    await assert_ledger_consistent(db, {})
    await check_orders(db, charged, still_open, inserted, close_ids)


async def check_orders(
    db: Database, charged: int, still_open: int, inserted: dict[str, int], close_ids: bool
) -> None:
    o = trading_order.c

    async def read(conn: AsyncConnection) -> dict[int, Any]:
        cols = [o.id, o.status, o.exchange_order_id, o.realized_profit, o.margin, o.close_reason]
        if close_ids:
            cols.append(o.close_order_id)
        return {r.id: r for r in await conn.execute(select(*cols))}

    rows = await db.transaction(read, what="read orders")
    assert rows[charged].exchange_order_id == "1321003749386327552"
    closed = rows[still_open]
    assert (closed.status, closed.exchange_order_id, closed.close_reason) == (
        2,
        "1321003749386327700",
        "exchange_sync",
    )
    # bybit: closedPnl is the net the exchange states: 9.8
    assert closed.realized_profit == Decimal("9.8")
    new = rows[inserted["c-5"]]
    assert new.exchange_order_id is None  # an inserted order has no opening id of ours to give
    # margin = open price × size ÷ leverage = 60000 × 0.01 ÷ 10
    assert new.margin == Decimal("60")
    if close_ids:
        assert new.close_order_id == "c-5" and closed.close_order_id == "c-4"


MISSING = {
    # add_power_consumed_field.sql never ran
    "power_consumed": (
        "ALTER TABLE hg_trading_order DROP INDEX idx_power_consumed, DROP COLUMN power_consumed",
        ("hg_trading_order.power_consumed missing", "add_power_consumed_field.sql"),
    ),
    # the daemon's own table: `migrate up` not run since the upgrade
    "binding_table": (
        "DROP TABLE toogo_reconcile_binding",
        ("toogo_reconcile_binding missing", "migrate up"),
    ),
}


@pytest.mark.parametrize("missing", sorted(MISSING))
async def test_a_missing_column_or_table_refuses_every_command(
    mysql_url: str, tmp_path: Path, missing: str
) -> None:
    """With hg_trading_order.power_consumed or one of the daemon's own tables missing, sweep,
    sync, run and doctor exit 1 naming it, and write nothing."""
    ddl, expected = MISSING[missing]
    db = await open_database(mysql_url)
    try:

        async def drop(conn: AsyncConnection) -> None:
            await conn.exec_driver_sql(ddl)

        await db.transaction(drop, what="an install without the power columns")
        before = await snapshot_counts(db)
        cfg = write_config(tmp_path / "c.yaml", mysql_url)
        for args in (("sweep",), ("sync",), ("run", "--once"), ("doctor",)):
            code, out, err = await run_cli(cfg, *args)
            assert code == 1, (args, out, err)
            assert all(text in out + err for text in expected), (args, out, err)
        assert await snapshot_counts(db) == before
    finally:
        await db.close()


async def snapshot_counts(db: Database) -> dict[str, int]:
    async def read(conn: AsyncConnection) -> dict[str, int]:
        tables = (trading_order, power_consume, wallet, wallet_log)
        return {
            t.name: int((await conn.execute(select(func.count()).select_from(t))).scalar_one())
            for t in tables
        }

    return await db.transaction(read, what="count rows")


async def test_upgrade_from_the_first_release_inserts_and_charges_nothing_twice(
    mysql_url: str, tmp_path: Path
) -> None:
    """The first release keyed its orders by record key in exchange_order_id (and an order_sn
    derived from it): `migrate up` back-fills their bindings, so the next sync re-reads those
    records as bound - no second order, no second charge."""
    from reconcile import migration as m
    from reconcile.sync.record_rows import order_sn_for
    from tests.history_kit import NOW, history_sync, position, write_replay

    db = await open_database(mysql_url)
    try:
        await add_account(db, 10, user_id=7, platform="binance")
        await add_robot(db, 100, user_id=7, account_id=10)
        engine = Engine(db, close_ids=True)
        closed = [NOW - timedelta(hours=h) for h in (5, 4, 3)]
        # what the first release wrote: an inserted order (rule 4) ...
        inserted = await engine.order(
            order_sn=order_sn_for("binance", 10, "B-1"),
            exchange_order_id="B-1",
            close_time=closed[0],
            open_time=closed[0] - HOUR,
            close_reason="exchange_sync",
            realized_profit=Decimal("12.5"),
        )
        # ... an engine order it closed (rule 3), its empty exchange_order_id filled with the key
        closed_by_it = await engine.order(
            exchange_order_id="B-2",
            close_time=closed[1],
            open_time=closed[1] - HOUR,
            close_reason="exchange_sync",
            realized_profit=Decimal("12.5"),
        )
        # ... and an engine order whose empty exchange_order_id it filled (rule 2), 10 min off
        filled = await engine.order(
            exchange_order_id="B-3",
            close_time=closed[2] + timedelta(minutes=10),
            open_time=closed[2] - HOUR,
            realized_profit=Decimal("12.5"),
        )
        for order_id in (inserted, closed_by_it, filled):
            await PowerConsumer(db, RULES).charge(order_id, Source.HISTORY)

        async def drop(conn: AsyncConnection) -> None:
            await conn.exec_driver_sql("DROP TABLE toogo_reconcile_binding")

        await db.transaction(drop, what="the first release had no bindings")
        result = await m.up(db, dry_run=False)
        assert result.ok
        before = await snapshot(db)
        by_key = {r[3]: (r[4], r[7]) for r in before[binding.name]}
        assert by_key == {"B-1": (inserted, "backfill"), "B-2": (closed_by_it, "backfill")}

        replay = write_replay(
            tmp_path / "r.jsonl",
            [
                position(10, key, closed=t)
                for key, t in zip(("B-1", "B-2", "B-3"), closed, strict=True)
            ],
        )
        async with history_sync(db, replay) as sync:
            summary = await sync.run_cycle()
        assert (summary.inserted, summary.closed, summary.charged) == (0, 0, 0)
        after = await snapshot(db)
        for table in (trading_order, power_consume, wallet, wallet_log):
            assert after[table.name] == before[table.name], table.name
        # B-3 bound now by its record key in exchange_order_id (rule b), nothing else written
        assert {r[3]: r[4] for r in after[binding.name]}["B-3"] == filled
        await assert_ledger_consistent(db, {})
    finally:
        await db.close()
