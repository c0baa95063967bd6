"""Unusable exchange records: quarantined with their payload, never blocking the stream."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from kits.fake_exchanges import FAKES, FakeExchange
from kits.fake_exchanges.harness import closed_record
from reconcile.errors import BadExchangeResponse
from reconcile.records import UnusableRecord
from reconcile.storage.db import Database
from reconcile.storage.schema import OWN_TABLES, power_consume, stream_cursor, trading_order
from reconcile.storage.schema import quarantine as quarantine_table
from reconcile.sync import quarantine
from tests.history_kit import sync_for, wire_account
from tests.procs import run_cli, write_config

PLATFORMS = sorted(FAKES)
HOUR_MS = 3_600_000
#: a field each platform's record cannot do without (removing it makes the record unusable)
BROKEN_FIELD = {
    "binance": "realizedPnl",
    "okx": "closeAvgPx",
    "gate": "pnl_fee",
    "bitget": "openFee",
    "bybit": "cumExitValue",
}


def now_ms() -> int:
    return int(time.time() * 1000)


def unusable(key: str = "k1", reason: str = "'openFee' is empty") -> UnusableRecord:
    return UnusableRecord(
        platform="bitget",
        account_id=10,
        symbol="BTC/USDT:USDT",
        record_key=key,
        reason=reason,
        raw={"openFee": "", "pnl": "1.5"},
        close_time=datetime(2026, 5, 17, 6, 40, tzinfo=UTC),
        context={"symbol": "BTC/USDT:USDT", "id": "BTCUSDT", "contract_size": "1"},
    )


def test_the_table_is_one_of_the_daemons_own() -> None:
    assert quarantine_table in OWN_TABLES


async def test_store_is_an_idempotent_upsert(any_db: Database) -> None:
    assert await quarantine.unresolved_count(any_db) == 0
    assert await quarantine.store(any_db, [unusable()]) == 1
    await quarantine.store(any_db, [unusable(reason="'openFee' is empty (again)")])
    (row,) = await quarantine.list_unresolved(any_db)
    assert (row.platform, row.account_id, row.record_key, row.attempts) == ("bitget", 10, "k1", 2)
    assert row.reason == "'openFee' is empty (again)" and row.raw == {"openFee": "", "pnl": "1.5"}
    assert row.close_time == datetime(2026, 5, 17, 6, 40, tzinfo=UTC)
    assert row.context["id"] == "BTCUSDT"
    await quarantine.store(any_db, [unusable("k2")])
    assert await quarantine.unresolved_count(any_db) == 2
    assert await quarantine.mark_resolved(any_db, [row.id], "renormalized") == 1
    assert await quarantine.mark_resolved(any_db, [row.id], "renormalized") == 0
    assert [r.record_key for r in await quarantine.list_unresolved(any_db)] == ["k2"]
    await quarantine.store(any_db, [unusable()])  # unusable again: unresolved again
    assert await quarantine.unresolved_count(any_db) == 2


@pytest.fixture(params=PLATFORMS)
async def fake(request: pytest.FixtureRequest) -> AsyncIterator[FakeExchange]:
    async with FAKES[request.param]() as server:
        yield server


async def count(db: Database, table: Any) -> int:
    async def read(conn: AsyncConnection) -> int:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())

    return await db.transaction(read, what="count")


async def seed_page_with_a_bad_record(fake: FakeExchange) -> dict[str, Any]:
    """Three closes on one page; the middle one lacks a required field."""
    t = now_ms()
    fake.records += closed_record(fake.platform, close_ms=t - 3 * HOUR_MS, profit="10")
    (broken,) = closed_record(fake.platform, close_ms=t - 2 * HOUR_MS, profit="20")
    fake.records.append(broken)
    fake.records += closed_record(fake.platform, close_ms=t - HOUR_MS, profit="30")
    return broken


async def test_an_unusable_record_mid_page_is_quarantined_and_the_stream_moves_on(
    mysql_db: Database, fake: FakeExchange
) -> None:
    await wire_account(mysql_db, fake)
    broken = await seed_page_with_a_bad_record(fake)
    field = BROKEN_FIELD[fake.platform]
    saved = broken.pop(field)
    async with sync_for(mysql_db, fake) as sync:
        summary = await sync.run_cycle()
        assert summary.ok and (summary.records, summary.inserted, summary.charged) == (2, 2, 2)
        (row,) = await quarantine.list_unresolved(mysql_db)
        assert field in row.reason and row.platform == fake.platform and row.account_id == 10
        assert (row.raw["fills"][0] if fake.platform == "binance" else row.raw) == broken
        (cursor,) = await _cursor_rows(mysql_db)
        assert cursor.complete_until is not None  # the stream's cursor advanced past it
        # the next cycle re-reads the overlap: the same row, seen again, nothing else changes
        again = await sync.run_cycle()
        assert again.ok and (again.inserted, again.charged) == (0, 0)
        (row_again,) = await quarantine.list_unresolved(mysql_db)
        assert row_again.id == row.id and row_again.attempts >= row.attempts
    assert await count(mysql_db, trading_order) == 2
    assert await count(mysql_db, power_consume) == 2
    broken[field] = saved


async def _cursor_rows(db: Database) -> list[Any]:
    async def read(conn: AsyncConnection) -> list[Any]:
        return list(await conn.execute(select(stream_cursor)))

    return await db.transaction(read, what="read cursor")


async def test_exchange_quarantine_lists_unresolved_records(
    mysql_db: Database, mysql_url: str, tmp_path: Path
) -> None:
    async with FAKES["bitget"]() as fake:
        await wire_account(mysql_db, fake)
        broken = await seed_page_with_a_bad_record(fake)
        broken["openFee"] = ""
        async with sync_for(mysql_db, fake) as sync:
            assert (await sync.run_cycle()).ok
        cfg = write_config(tmp_path / "c.yaml", mysql_url, exchanges={"bitget": {}})
        code, out, err = await run_cli(cfg, "exchange", "quarantine", "--json")
        assert code == 0, err
        (line,) = out.splitlines()
        listed = json.loads(line)
        assert listed["record_key"] == broken["positionId"] and "openFee" in listed["reason"]
        assert listed["raw"] == broken
        code, out, err = await run_cli(cfg, "exchange", "quarantine")
        assert code == 0 and broken["positionId"] in out and "1 unresolved" in err


async def test_retry_after_the_exchange_fixed_the_record_processes_it_exactly_once(
    mysql_db: Database, mysql_url: str, tmp_path: Path
) -> None:
    async with FAKES["bitget"]() as fake:
        await wire_account(mysql_db, fake)
        broken = await seed_page_with_a_bad_record(fake)
        fee = broken["openFee"]
        broken["openFee"] = ""
        async with sync_for(mysql_db, fake) as sync:
            assert (await sync.run_cycle()).charged == 2
        cfg = write_config(
            tmp_path / "c.yaml",
            mysql_url,
            exchanges={
                "bitget": {
                    "timeout": "2s",
                    "retry": {"attempts": 2, "initial": "10ms", "max": "20ms"},
                }
            },
        )
        code, out, _ = await run_cli(cfg, "audit")
        assert code == 1 and "✗ quarantine" in out and broken["positionId"] in out
        code, out, _ = await run_cli(cfg, "doctor")
        assert "! quarantine" in out and "1 unusable" in out
        code, _, _ = await run_cli(cfg, "exchange", "quarantine", "--retry")
        assert code == 1  # still unusable at the exchange
        broken["openFee"] = fee  # the exchange corrected it
        code, out, err = await run_cli(cfg, "exchange", "quarantine", "--retry")
        assert code == 0, err
        assert await quarantine.unresolved_count(mysql_db) == 0
        code, out, err = await run_cli(cfg, "exchange", "quarantine", "--retry")
        assert code == 0 and out == ""
        code, out, _ = await run_cli(cfg, "audit")
        assert "✓ quarantine" in out
    assert await count(mysql_db, trading_order) == 3
    assert await count(mysql_db, power_consume) == 3


def test_a_stored_payload_renormalizes_without_network() -> None:
    """What --retry does after an upgrade: the stored raw record and market context are enough."""
    from exchange_adapters.registry import normalize_stored

    raw = {
        "symbol": "BTCUSDT",
        "holdSide": "long",
        "openAvgPrice": "37272.1",
        "closeAvgPrice": "37271.4",
        "closeTotalPos": "0.001",
        "pnl": "-0.0007",
        "netProfit": "-0.0454261",
        "totalFunding": "0",
        "openFee": "-0.02236326",
        "closeFee": "-0.02236284",
        "utime": "1700720700400",
        "ctime": "1700720651684",
    }
    context = {
        "symbol": "BTC/USDT:USDT",
        "id": "BTCUSDT",
        "settle": "USDT",
        "settle_id": "USDT",
        "contract_size": "1",
    }
    record = normalize_stored("bitget", 10, raw, context)
    assert record.record_key == "BTCUSDT:long:1700720651684:1700720700400"
    assert record.net_profit == Decimal("-0.0454261") and record.account_id == 10
    with pytest.raises(BadExchangeResponse, match="openFee"):
        normalize_stored("bitget", 10, dict(raw, openFee=""), context)


async def test_retry_leaves_a_still_unusable_record_unresolved(
    mysql_db: Database, mysql_url: str, tmp_path: Path
) -> None:
    async with FAKES["bitget"]() as fake:
        await wire_account(mysql_db, fake)
        broken = await seed_page_with_a_bad_record(fake)
        broken["openFee"] = ""
        async with sync_for(mysql_db, fake) as sync:
            assert (await sync.run_cycle()).charged == 2
        cfg = write_config(
            tmp_path / "c.yaml",
            mysql_url,
            exchanges={
                "bitget": {
                    "timeout": "2s",
                    "retry": {"attempts": 2, "initial": "10ms", "max": "20ms"},
                }
            },
        )
        code, out, err = await run_cli(cfg, "exchange", "quarantine", "--retry", "--json")
        assert code == 1, err
        (line,) = out.splitlines()
        assert json.loads(line)["outcome"] == "unresolved: still unusable"
        assert fake.count("closed") >= 2  # the sync's read and the retry's re-read
    assert await quarantine.unresolved_count(mysql_db) == 1
    assert await count(mysql_db, power_consume) == 2
