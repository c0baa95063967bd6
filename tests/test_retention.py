"""Retention of the daemon's own tables (reconcile/storage/retention.py), on MariaDB and PostgreSQL:
exactly the rows older than each default go, hotgo's tables stay untouched, charges running
beside the pruner stay exactly once."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Table, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from daemon.config import Config
from kits.seed import (
    assert_ledger_consistent,
    eligible_ids,
    insert_order,
    live_columns,
    seed_backlog,
)
from reconcile.charging.consumer import PowerConsumer
from reconcile.charging.outcomes import Source
from reconcile.charging.pricing import PowerRules
from reconcile.charging.sweep import SweepSettings, sweep
from reconcile.storage.db import Database
from reconcile.storage.retention import PRUNED_RAW, Pruner, RetentionSettings, describe, table_sizes
from reconcile.storage.schema import (
    binding,
    exchange_record,
    power_consume,
    quarantine,
    record_order_id,
    shadow_charge,
    skipped_duplicate,
    stream_cursor,
    trading_order,
    wallet,
    wallet_log,
)
from tests.history_kit import add_account, add_robot
from tests.procs import run_cli, write_config

RULES = PowerRules(Decimal("0.10"), Decimal("0.01"))
FAST = RetentionSettings(batch_size=3, pause=timedelta(0))


def record_rows(db: Database, ages_days: list[float], start: int = 0) -> list[dict[str, Any]]:
    now = db.now()
    return [
        {
            "platform": "binance",
            "account_id": 1,
            "record_key": f"k{start + i}",
            "symbol": "BTCUSDT",
            "close_time": now - timedelta(days=age),
            "profit": Decimal("1.5"),
            "profit_basis": "net",
            "normalized_json": json.dumps({"key": f"k{start + i}"}),
            "raw_json": json.dumps({"id": start + i, "payload": "x" * 50}),
            "created_at": now - timedelta(days=age),
        }
        for i, age in enumerate(ages_days)
    ]


async def seed_records(db: Database, ages_days: list[float], start: int = 0) -> None:
    rows = record_rows(db, ages_days, start)

    async def ins(conn: AsyncConnection) -> None:
        for at in range(0, len(rows), 2000):
            chunk = rows[at : at + 2000]
            await conn.execute(exchange_record.insert(), chunk)
            keys = [{k: r[k] for k in ("platform", "account_id", "record_key")} for r in chunk]
            await conn.execute(
                record_order_id.insert(),
                [{**k, "exchange_order_id": "E" + k["record_key"]} for k in keys],
            )
            await conn.execute(
                binding.insert(),
                [
                    {
                        **k,
                        "order_id": 10_000 + start + at + i,
                        "primary_order_id": None,
                        "kind": "part",
                        "rule": "insert",
                        "created_at": r["created_at"],
                    }
                    for i, (k, r) in enumerate(zip(keys, chunk, strict=True))
                ],
            )

    await db.transaction(ins, what="seed records")


async def rows_of(db: Database, table: Table, *columns: str) -> list[tuple[Any, ...]]:
    async def read(conn: AsyncConnection) -> list[tuple[Any, ...]]:
        cols = [table.c[c] for c in columns]
        return [tuple(r) for r in await conn.execute(select(*cols).order_by(table.c.id))]

    return await db.transaction(read, what="read rows")


async def count(db: Database, table: Table) -> int:
    async def read(conn: AsyncConnection) -> int:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())

    return await db.transaction(read, what="count")


async def hotgo_snapshot(db: Database) -> list[list[tuple[Any, ...]]]:
    async def read(conn: AsyncConnection) -> list[list[tuple[Any, ...]]]:
        out = []
        for table in (trading_order, power_consume, wallet, wallet_log):
            out.append(
                [
                    tuple(r)
                    for r in await conn.execute(
                        select(*await live_columns(conn, table)).order_by(*table.primary_key)
                    )
                ]
            )
        return out

    return await db.transaction(read, what="hotgo snapshot")


async def test_the_job_prunes_exactly_what_is_older_than_each_default(server_db: Database) -> None:
    db = server_db
    now, utc = db.now(), datetime.now(UTC).replace(tzinfo=None)
    # records: 2 past the record default (730 d), 3 past the raw default (90 d), 2 young
    await seed_records(db, [800, 760, 200, 120, 95, 30, 1])
    await add_account(db, 1, 7)
    await add_robot(db, 1, 7, 1, symbol="BTCUSDT")  # running: its stream is polled
    old, young = now - timedelta(days=100), now - timedelta(days=10)

    async def seed(conn: AsyncConnection) -> None:
        skip = {"user_id": 7, "source": "sweep", "consume_power": Decimal("1")}
        await conn.execute(
            skipped_duplicate.insert(),
            [{**skip, "order_id": i, "created_at": t} for i, t in enumerate([old, old, young])],
        )
        shadow = {
            "user_id": 7,
            "robot_id": 1,
            "order_sn": "sn",
            "profit_amount": Decimal("1"),
            "consume_rate": Decimal("0.1"),
            "consume_power": Decimal("0.1"),
            "source": "sweep",
        }
        await conn.execute(
            shadow_charge.insert(),
            [{**shadow, "order_id": i, "created_at": t} for i, t in enumerate([old, young])],
        )
        q = {
            "platform": "binance",
            "account_id": 1,
            "symbol": "BTCUSDT",
            "reason": "r",
            "raw_json": "{}",
            "context_json": "{}",
            "first_seen": utc - timedelta(days=300),
            "last_seen": utc - timedelta(days=300),
        }
        await conn.execute(
            quarantine.insert(),
            [
                {
                    **q,
                    "record_key": "resolved-old",
                    "resolved_at": utc - timedelta(days=100),
                    "resolution": "retried",
                },
                {
                    **q,
                    "record_key": "resolved-young",
                    "resolved_at": utc - timedelta(days=10),
                    "resolution": "retried",
                },
                {**q, "record_key": "unresolved", "resolved_at": None, "resolution": None},
            ],
        )
        cursor = {"platform": "binance", "complete_until": utc, "keys_at_cursor": "[]"}
        d40, d2 = now - timedelta(days=40), now - timedelta(days=2)
        await conn.execute(
            stream_cursor.insert(),
            [
                {**cursor, "account_id": 1, "symbol": "BTCUSDT", "updated_at": d40},
                {**cursor, "account_id": 2, "symbol": "ETHUSDT", "updated_at": d40},
                {**cursor, "account_id": 3, "symbol": "ETHUSDT", "updated_at": d2},
            ],
        )

    await db.transaction(seed, what="seed own tables")
    await insert_order(db, user_id=7, realized_profit=Decimal("5"))
    hotgo = await hotgo_snapshot(db)

    dry = await Pruner(db, FAST).run(dry_run=True)
    summary = await Pruner(db, FAST).run()
    expected = {
        "records": 2,
        "record_raw": 3,
        "skips": 2,
        "shadow": 1,
        "quarantine": 1,
        "cursors": 1,
    }
    assert summary.counts == expected
    assert dry.counts == {**expected, "record_raw": 5}  # counted before the records went

    records = await rows_of(db, exchange_record, "record_key", "raw_json", "normalized_json")
    assert [r[0] for r in records] == ["k2", "k3", "k4", "k5", "k6"]
    assert [r[1] == PRUNED_RAW for r in records] == [True, True, True, False, False]
    assert all(json.loads(r[2])["key"] == r[0] for r in records)  # normalized fields stay
    kept = await rows_of(db, record_order_id, "record_key")
    assert [r[0] for r in kept] == ["k2", "k3", "k4", "k5", "k6"]
    assert await count(db, binding) == 7  # bindings are never pruned
    assert await rows_of(db, skipped_duplicate, "order_id") == [(2,)]
    assert await rows_of(db, shadow_charge, "order_id") == [(1,)]
    assert await rows_of(db, quarantine, "record_key") == [("resolved-young",), ("unresolved",)]
    assert await rows_of(db, stream_cursor, "account_id") == [(1,), (3,)]
    assert await hotgo_snapshot(db) == hotgo

    again = await Pruner(db, FAST).run()
    assert again.total == 0  # nothing more: idempotent, the raw bisection skips emptied rows


async def test_null_keeps_forever(server_db: Database) -> None:
    await seed_records(server_db, [800, 100])
    keep = RetentionSettings(records=None, record_raw=None, pause=timedelta(0))
    assert (await Pruner(server_db, keep).run()).total == 0
    assert await count(server_db, exchange_record) == 2


async def test_charges_beside_the_pruner_stay_exactly_once(server_db: Database) -> None:
    db = server_db
    seeded = await seed_backlog(db, orders=800, users=60, seed=5)
    eligible = await eligible_ids(db)
    await seed_records(db, [800.0] * 3000 + [1.0] * 10)
    consumer = PowerConsumer(db, RULES)
    pruner = Pruner(db, RetentionSettings(batch_size=50, pause=timedelta(0)))

    async def singles() -> None:
        for i in seeded.order_ids[::3]:
            await consumer.charge(i, Source.REALTIME)

    results = await asyncio.gather(
        pruner.run(),
        sweep(consumer, SweepSettings(page_size=40)),
        sweep(consumer, SweepSettings(page_size=70)),
        singles(),
    )
    assert results[0].counts["records"] == 3000
    counts = await assert_ledger_consistent(db, seeded.initial_power)
    assert counts["consumes"] == counts["ledger"] == len(eligible)
    assert await count(db, exchange_record) == 10


async def test_a_set_stop_ends_the_run_between_batches(server_db: Database) -> None:
    await seed_records(server_db, [800.0] * 20)
    stop = asyncio.Event()
    stop.set()
    summary = await Pruner(server_db, FAST).run(stop)
    assert summary.stopped and summary.total == 0
    assert await count(server_db, exchange_record) == 20


async def test_sizes_for_the_metrics_and_doctor(server_db: Database) -> None:
    await seed_records(server_db, [40, 2])
    sizes = {s.table: s for s in await table_sizes(server_db)}
    record = sizes["toogo_reconcile_record"]
    assert record.rows == 2 and record.oldest_seconds is not None
    assert 39 * 86400 < record.oldest_seconds < 41 * 86400
    assert sizes["toogo_reconcile_skip"].rows == 0
    assert sizes["toogo_reconcile_skip"].oldest_seconds is None
    assert "record 2 (oldest 40d)" in describe(list(sizes.values()))


def test_config_defaults_null_and_errors() -> None:
    c = Config.model_validate({"retention": {"record_raw": "30d", "skips": None}})
    assert c.retention.record_raw == timedelta(days=30) and c.retention.skips is None
    assert Config().retention.records == timedelta(days=730)
    assert Config().schedule.retention == timedelta(hours=1)
    with pytest.raises(ValueError, match=r"retention\.records"):
        Config.model_validate({"retention": {"records": "3d"}})
    with pytest.raises(ValueError, match="extra"):
        Config.model_validate({"retention": {"raw": "3d"}})


async def test_prune_command_and_doctor_line(
    mysql_db: Database, mysql_url: str, tmp_path: Path
) -> None:
    await seed_records(mysql_db, [800, 100, 1])
    cfg = write_config(tmp_path / "c.yaml", mysql_url)
    code, out, err = await run_cli(cfg, "prune", "--dry-run", "--json")
    assert code == 0, err
    assert json.loads(out)["records"] == 1 and json.loads(out)["record_raw"] == 2
    assert await count(mysql_db, exchange_record) == 3
    code, out, err = await run_cli(cfg, "prune")
    assert code == 0, err
    assert "records: 1 pruned" in out and "record_raw: 1 pruned" in out
    code, out, err = await run_cli(cfg, "doctor")
    [line] = [x for x in out.splitlines() if "table sizes" in x]
    assert "record 2" in line, line
