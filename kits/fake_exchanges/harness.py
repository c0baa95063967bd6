"""Helpers shared by the adapter tests and the benchmark: accounts pointing at a fake, fast
options, and realistic record sets per exchange."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from exchange_adapters.options import AdapterOptions, RetryOptions
from exchange_adapters.registry import ExchangeRegistry
from kits.fake_exchanges import binance, bitget, bybit, gate, okx
from kits.fake_exchanges.server import FakeExchange
from reconcile.records import ApiAccount, ClosedPositionSource, Secret

#: 2026-05-17T06:40:00Z, a fixed instant the fake records are placed around
T0_MS = 1_779_000_000_000
T0 = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=T0_MS)
MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000

FAST_RETRY = RetryOptions(attempts=3, initial=0.001, maximum=0.005, retry_after_max=5.0)


def fast_options(**overrides: Any) -> AdapterOptions:
    """Tiny retry waits, a 5 ms ccxt rate limit and no close delay: the suite stays fast. The
    accounts' base_url points them at their fake (``account_base_url``)."""
    settings: dict[str, Any] = {
        "retry": FAST_RETRY,
        "timeout": 2.0,
        "rate_limit_ms": 5,
        "cooldown": 60.0,
        "close_delay_ms": 0,
        "account_base_url": True,
    }
    settings.update(overrides)
    return AdapterOptions(**settings)


def account_for(fake: FakeExchange, account_id: int = 1, **overrides: Any) -> ApiAccount:
    """An API account whose base_url points the real ccxt client at ``fake``."""
    fields: dict[str, Any] = {
        "id": account_id,
        "user_id": 100 + account_id,
        "platform": fake.platform,
        "base_url": fake.url,
        "api_key": Secret(fake.api_key),
        "secret": Secret(fake.secret),
        "passphrase": Secret(fake.passphrase),
    }
    fields.update(overrides)
    return ApiAccount(**fields)


def at(ms: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)


_seq = itertools.count(1)


def closed_record(
    platform: str,
    *,
    close_ms: int,
    symbol: str = "BTC",
    key: str | None = None,
    profit: str = "10",
    long: bool = True,
) -> list[dict[str, Any]]:
    """Raw wire record(s) of one closed position on ``platform`` closing at ``close_ms``.

    Same economics everywhere: 0.01 BTC (or the contract equivalent), open 60000, gross
    ``profit``, fees -0.2, funding -0.1 where the exchange reports funding.
    """
    n = next(_seq)
    key = key or f"{n}"
    entry, exit_ = (
        ("60000", str(60000 + int(profit) * 100))
        if long
        else (str(60000 + int(profit) * 100), "60000")
    )
    if platform == "binance":
        side = "SELL" if long else "BUY"
        return [
            binance.fill(
                order_id=int(key) if key.isdigit() else n,
                side=side,
                price=exit_,
                qty="0.01",
                realized_pnl=profit,
                commission="-0.2",
                time=close_ms,
                symbol=f"{symbol}USDT",
            )
        ]
    if platform == "okx":
        return [
            okx.position(
                pos_id=f"pos{key}",
                direction="long" if long else "short",
                open_px=entry,
                close_px=exit_,
                close_total_pos="1",
                pnl=profit,
                fee="-0.2",
                funding_fee="-0.1",
                c_time=close_ms - HOUR_MS,
                u_time=close_ms,
                inst_id=f"{symbol}-USDT-SWAP",
            )
        ]
    if platform == "gate":
        return [
            gate.closed(
                side="long" if long else "short",
                long_price=entry if long else exit_,
                short_price=exit_ if long else entry,
                accum_size="100",
                pnl_pnl=profit,
                pnl_fee="-0.2",
                pnl_fund="-0.1",
                first_open_time=close_ms // 1000 - 3600 - n,
                time=close_ms // 1000,
                contract=f"{symbol}_USDT",
            )
        ]
    if platform == "bitget":
        return [
            bitget.closed(
                position_id=f"{10**15 + n}",
                hold_side="long" if long else "short",
                open_price=entry,
                close_price=exit_,
                size="0.01",
                pnl=profit,
                open_fee="-0.1",
                close_fee="-0.1",
                funding="-0.1",
                ctime=close_ms - HOUR_MS,
                utime=close_ms,
                symbol=f"{symbol}USDT",
            )
        ]
    if platform == "bybit":
        net = format(Decimal(profit) - Decimal("0.2"), "f")
        return [
            bybit.closed(
                order_id=f"ord-{key}",
                side="Sell" if long else "Buy",
                entry=entry,
                exit_=exit_,
                size="0.01",
                closed_pnl=net,
                open_fee="0.1",
                close_fee="0.1",
                created=close_ms,
                symbol=f"{symbol}USDT",
            )
        ]
    raise ValueError(platform)


@contextlib.asynccontextmanager
async def open_source(
    fake: FakeExchange, account_id: int = 1, **options: Any
) -> AsyncIterator[ClosedPositionSource]:
    """The registry's source for an account on ``fake`` (fast options unless overridden)."""
    async with ExchangeRegistry({fake.platform: fast_options(**options)}) as registry:
        yield registry.source_for(account_for(fake, account_id))


def record_key_of(platform: str, raw: dict[str, Any]) -> str:
    """The record key an adapter must give the position of this raw record (worked out here
    independently of the adapters)."""
    if platform == "binance":
        return str(raw["orderId"])
    if platform == "okx":
        return f"{raw['posId']}:{raw['cTime']}"
    if platform == "gate":
        return f"{raw['contract']}:{raw['side']}:{raw['first_open_time']}:{raw['time']}"
    if platform == "bitget":
        return str(raw["positionId"])
    if platform == "bybit":
        return str(raw["orderId"])
    raise ValueError(platform)


def close_ms_of(platform: str, raw: dict[str, Any]) -> int:
    return {
        "binance": lambda r: int(r["time"]),
        "okx": lambda r: int(r["uTime"]),
        "gate": lambda r: int(r["time"]) * 1000,
        "bitget": lambda r: int(r["utime"]),
        "bybit": lambda r: int(r["createdTime"]),
    }[platform](raw)
