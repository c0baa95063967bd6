"""A cold sync of many accounts in parallel on upstream's DDL: no stream may fail.

On upstream's indexes (idx_status, idx_symbol, …, none on exchange_order_id) the first release's
locking reads of the matching rules deadlocked each other: 31 of 40 streams gave up after their
retries. The records here come from the replay adapter (our own data: what is under test is the
database path, at volume); the engine's rows are shaped as upstream's engine writes them.
"""

from __future__ import annotations

import random
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from kits.seed import assert_ledger_consistent, engine_order_id, engine_order_sn
from reconcile.storage.db import Database
from reconcile.storage.schema import binding, power_consume, trading_order
from tests.history_kit import NOW, add_account, add_robot, history_sync, position, write_replay

pytestmark = [pytest.mark.mysql, pytest.mark.slow]

ACCOUNTS, CLOSES, ENGINE_SHARE = 40, 750, 5  # every 5th close the engine recorded itself


async def count(db: Database, table: Any) -> int:
    async def read(conn: AsyncConnection) -> int:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())

    return await db.transaction(read, what="count")


@pytest.mark.timeout(900)
async def test_cold_sync_of_40_accounts_8_in_parallel(mysql_db: Database, tmp_path: Path) -> None:
    rnd = random.Random(40)
    records: list[dict[str, Any]] = []
    engine_rows: list[dict[str, Any]] = []
    now = mysql_db.now()
    for n in range(ACCOUNTS):
        account, user = 100 + n, 1 + n % 10  # ten users, four accounts each
        await add_account(mysql_db, account, user_id=user)
        await add_robot(mysql_db, account * 10, user_id=user, account_id=account)
        for i in range(CLOSES):
            closed = NOW - timedelta(seconds=60 + i * 600 + rnd.randint(0, 59))
            net = str(Decimal(rnd.randint(-500, 1500)) / 100)
            records.append(position(account, f"{account}-{i}", closed=closed, net=net))
            if i % ENGINE_SHARE == 0:  # the engine's own close, 30 s off the exchange's
                engine_rows.append(
                    {
                        "tenant_id": 3,
                        "user_id": user,
                        "robot_id": account * 10,
                        "order_sn": engine_order_sn(now) + f"{account}{i}",
                        "exchange_order_id": engine_order_id(),
                        "symbol": "BTCUSDT",
                        "direction": "long",
                        "open_price": Decimal("60000"),
                        "close_price": Decimal("61250"),
                        "quantity": Decimal("0.01"),
                        "leverage": 10,
                        "margin": Decimal("60"),
                        "realized_profit": Decimal(net),
                        "status": 2,
                        "open_time": mysql_db.to_db_time(closed - timedelta(hours=1)),
                        "close_time": mysql_db.to_db_time(closed + timedelta(seconds=30)),
                        "created_at": now,
                        "updated_at": now,
                    }
                )

    async def seed(conn: AsyncConnection) -> None:
        for start in range(0, len(engine_rows), 2000):
            await conn.execute(trading_order.insert(), engine_rows[start : start + 2000])

    await mysql_db.transaction(seed, what="seed the engine's orders")
    replay = write_replay(tmp_path / "r.jsonl", records)
    async with history_sync(mysql_db, replay, concurrency=8) as sync:
        summary = await sync.run_cycle()

    assert summary.failed_streams == 0 and summary.streams == ACCOUNTS
    assert summary.records == ACCOUNTS * CLOSES
    engine = len(engine_rows)
    assert (summary.matched, summary.inserted) == (engine, ACCOUNTS * CLOSES - engine)
    assert await count(mysql_db, trading_order) == ACCOUNTS * CLOSES
    assert await count(mysql_db, binding) == ACCOUNTS * CLOSES
    profitable_new = sum(
        1
        for i, r in enumerate(records)
        if Decimal(r["net_profit"]) > 0 and (i % CLOSES) % ENGINE_SHARE != 0
    )
    assert summary.charged == profitable_new
    assert await count(mysql_db, power_consume) == profitable_new
    await assert_ledger_consistent(mysql_db, {})
