"""History sync over real ccxt against the fake exchanges: cursors, quiet cycles, failures."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from kits.fake_exchanges import FAKES, FakeExchange, Fault
from kits.fake_exchanges.harness import FAST_RETRY, closed_record
from kits.seed import assert_ledger_consistent
from reconcile.storage.db import Database
from reconcile.storage.schema import stream_cursor, trading_order
from tests.history_kit import sync_for, wire_account
from tests.procs import run_cli, write_config

PLATFORMS = sorted(FAKES)
HOUR_MS = 3_600_000


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture(params=PLATFORMS)
async def fake(request: pytest.FixtureRequest) -> AsyncIterator[FakeExchange]:
    async with FAKES[request.param]() as server:
        yield server


async def table(db: Database, t: Any) -> list[Any]:
    async def read(conn: AsyncConnection) -> list[Any]:
        return [tuple(r) for r in await conn.execute(select(t).order_by(t.c.id))]

    return await db.transaction(read, what="read table")


async def test_cycles_cursor_and_failures(mysql_db: Database, fake: FakeExchange) -> None:
    await wire_account(mysql_db, fake)
    fake.records += closed_record(fake.platform, close_ms=now_ms() - 3 * HOUR_MS, profit="10")
    fake.records += closed_record(
        fake.platform, close_ms=now_ms() - 2 * HOUR_MS, profit="-4", long=False
    )
    async with sync_for(mysql_db, fake) as sync:
        cold = await sync.run_cycle()
        assert (cold.streams, cold.records, cold.inserted, cold.charged) == (1, 2, 2, 1)
        assert cold.ok and cold.requests >= 1

        # quiet: one request for the stream, nothing changes
        orders, cursor = await table(mysql_db, trading_order), await table(mysql_db, stream_cursor)
        fake.reset_counts()
        quiet = await sync.run_cycle()
        assert fake.count("closed") == 1 and quiet.requests == 1
        assert (quiet.inserted, quiet.closed, quiet.charged) == (0, 0, 0)
        assert await table(mysql_db, trading_order) == orders
        cursor_after_quiet = await table(mysql_db, stream_cursor)
        assert cursor_after_quiet[0][4] >= cursor[0][4]

        # a garbage answer (a proxy's HTML page with 200) is a failure, not "nothing closed"
        fake.records += closed_record(fake.platform, close_ms=now_ms(), profit="7")
        fake.fail(Fault.html(), times=FAST_RETRY.attempts)
        failed = await sync.run_cycle()
        assert (failed.failed_streams, failed.inserted) == (1, 0) and not failed.ok
        assert await table(mysql_db, stream_cursor) == cursor_after_quiet

        # and so is a server error that outlasts the retries
        fake.fail(Fault.http(503), times=FAST_RETRY.attempts)
        assert (await sync.run_cycle()).failed_streams == 1
        assert await table(mysql_db, stream_cursor) == cursor_after_quiet

        healed = await sync.run_cycle()
        assert (healed.failed_streams, healed.inserted, healed.charged) == (0, 1, 1)
    await assert_ledger_consistent(mysql_db, {})


async def test_exchange_closed_command(mysql_db: Database, mysql_url: str, tmp_path: Path) -> None:
    async with FAKES["okx"]() as fake:
        await wire_account(mysql_db, fake)
        fake.records += closed_record("okx", close_ms=now_ms() - HOUR_MS, profit="10", key="77")
        cfg = write_config(
            tmp_path / "c.yaml",
            mysql_url,
            exchanges={
                "okx": {
                    "timeout": "2s",
                    "retry": {"attempts": 2, "initial": "10ms", "max": "20ms"},
                },
            },
        )
        code, out, err = await run_cli(
            cfg, "exchange", "closed", "--account", "10", "--symbol", "BTC-USDT-SWAP", "--json"
        )
        assert code == 0, err
        [line] = out.splitlines()
        record = json.loads(line)
        assert record["platform"] == "okx" and record["account_id"] == 10
        assert record["symbol"] == "BTC/USDT:USDT" and record["direction"] == "long"
        assert Decimal(record["net_profit"]) == Decimal("9.7")  # 10 - 0.2 fee - 0.1 funding
        code, _, err = await run_cli(
            cfg, "exchange", "closed", "--account", "99", "--symbol", "BTCUSDT"
        )
        assert code == 2 and "API account 99 not found" in err
        code, _, err = await run_cli(
            cfg, "exchange", "closed", "--account", "10", "--symbol", "NOT A SYMBOL"
        )
        assert code == 2, err
        assert "secret" not in err.lower()


async def test_sync_command_refuses_nothing_configured(
    mysql_db: Database, mysql_url: str, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path / "c.yaml", mysql_url)
    code, out, err = await run_cli(cfg, "sync")
    assert code == 0, err
    [summary] = [json.loads(x) for x in out.splitlines() if "history sync summary" in x]
    assert summary["streams"] == 0
    _ = timedelta
