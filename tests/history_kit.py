"""Building blocks for history-sync tests: robots, accounts, replay files, a sync to run."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from exchange_adapters.options import AdapterOptions
from exchange_adapters.registry import ExchangeRegistry
from kits.fake_exchanges import FakeExchange
from kits.fake_exchanges import bybit as bybit_wire
from kits.fake_exchanges.harness import fast_options
from reconcile.charging.consumer import PowerConsumer
from reconcile.charging.pricing import PowerRules
from reconcile.storage.db import Database
from reconcile.storage.schema import trading_api_config, trading_robot
from reconcile.sync.history import HistorySync
from reconcile.sync.settings import SyncSettings

RULES = PowerRules(Decimal("0.10"), Decimal("0.01"))
NOW = datetime.now(UTC).replace(microsecond=0)


async def add_account(
    db: Database, account_id: int, user_id: int, platform: str = "binance", **fields: Any
) -> None:
    values: dict[str, Any] = {
        "id": account_id,
        "user_id": user_id,
        "platform": platform,
        "api_name": f"{platform} account {account_id}",
        "base_url": "",
        "api_key": "k",
        "secret_key": "s",
        "status": 1,
    }
    values.update(fields)

    async def ins(conn: AsyncConnection) -> None:
        await conn.execute(trading_api_config.insert().values(**values))

    await db.transaction(ins, what="seed account")


async def add_robot(
    db: Database,
    robot_id: int,
    user_id: int,
    account_id: int,
    symbol: str = "BTCUSDT",
    **fields: Any,
) -> None:
    values: dict[str, Any] = {
        "id": robot_id,
        "tenant_id": 3,
        "user_id": user_id,
        "api_config_id": account_id,
        "exchange": "binance",
        "symbol": symbol,
        "robot_name": f"robot {robot_id}",
        "leverage": 10,
        "status": 2,
    }
    values.update(fields)

    async def ins(conn: AsyncConnection) -> None:
        await conn.execute(trading_robot.insert().values(**values))

    await db.transaction(ins, what="seed robot")


def position(
    account_id: int,
    key: str,
    *,
    closed: datetime,
    net: str = "12.5",
    direction: str = "long",
    symbol: str = "BTC/USDT:USDT",
    opened: datetime | None = None,
) -> dict[str, Any]:
    gross = Decimal(net) + Decimal("0.5")
    return {
        "platform": "binance",
        "account_id": account_id,
        "symbol": symbol,
        "direction": direction,
        "size": "0.01",
        "open_price": "60000",
        "close_price": "61250",
        "gross_pnl": str(gross),
        "fee": "-0.5",
        "funding": "0",
        "net_profit": net,
        "open_time": (opened or closed - timedelta(hours=1)).isoformat(),
        "close_time": closed.isoformat(),
        "record_key": key,
    }


def write_replay(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@asynccontextmanager
async def history_sync(db: Database, replay: Path, **settings: Any) -> AsyncIterator[HistorySync]:
    async with ExchangeRegistry({"replay": AdapterOptions(path=replay)}) as registry:
        yield HistorySync(db, PowerConsumer(db, RULES), registry, SyncSettings(**settings))


def api_fields(fake: FakeExchange) -> dict[str, Any]:
    """An API account row's platform, base URL and credentials pointing at ``fake``."""
    return {
        "platform": fake.platform,
        "base_url": fake.url,
        "api_key": fake.api_key,
        "secret_key": fake.secret,
        "passphrase": fake.passphrase,
    }


async def wire_account(db: Database, fake: FakeExchange, account_id: int = 10) -> None:
    """User 7's API account ``account_id`` on ``fake``, and its running BTCUSDT robot
    ``account_id`` × 10."""
    await add_account(db, account_id, user_id=7, **api_fields(fake))
    await add_robot(
        db,
        account_id * 10,
        user_id=7,
        account_id=account_id,
        symbol="BTCUSDT",
        exchange=fake.platform,
    )


@asynccontextmanager
async def sync_for(db: Database, fake: FakeExchange, **settings: Any) -> AsyncIterator[HistorySync]:
    """The history sync over real ccxt against ``fake`` (fast options)."""
    async with ExchangeRegistry({fake.platform: fast_options()}) as registry:
        yield HistorySync(
            db,
            PowerConsumer(db, RULES),
            registry,
            SyncSettings(platforms=frozenset({fake.platform}), **settings),
        )


def record(order_id: str, closed: datetime, *, size: str, pnl: str, long: bool = True) -> Any:
    """A Bybit closed-pnl record: one per closing order (``order_id`` is the closing order's)."""
    entry, exit_ = ("60000", "61000") if long else ("61000", "60000")
    return bybit_wire.closed(
        order_id=order_id,
        side="Sell" if long else "Buy",  # bybit names the closing side
        entry=entry,
        exit_=exit_,
        size=size,
        closed_pnl=pnl,
        open_fee="0.1",
        close_fee="0.1",
        created=int(closed.timestamp() * 1000),
    )
