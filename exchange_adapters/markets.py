"""Markets: what an adapter needs about one market (:class:`MarketInfo`), read from
``fetch_markets`` with exact contract sizes, fetched once per (platform, API host) and shared by
every account there (:class:`MarketCache`). Only ``fetch_markets``, no private currency calls.
See docs/exchanges.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from exchange_adapters.transport import PlatformSpec
from reconcile.errors import BadExchangeResponse

MARKETS_TTL = 6 * 3600.0


@dataclass(frozen=True)
class MarketInfo:
    """What an adapter needs about one market: its exchange id and exact contract size."""

    symbol: str
    id: str
    settle: str
    settle_id: str
    contract_size: Decimal
    info: Mapping[str, Any] = field(repr=False, compare=False)


@dataclass
class _MarketEntry:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    table: dict[str, MarketInfo] | None = None
    loaded_at: float = 0.0


class MarketCache:
    """Markets per (platform, API host), fetched once and shared; refreshed after a TTL."""

    def __init__(self, ttl: float = MARKETS_TTL, clock: Callable[[], float] = time.monotonic):
        self._ttl = ttl
        self._clock = clock
        self._entries: dict[tuple[str, str], _MarketEntry] = {}
        self.loads = 0

    async def table(
        self, key: tuple[str, str], load: Callable[[], Awaitable[dict[str, MarketInfo]]]
    ) -> dict[str, MarketInfo]:
        entry = self._entries.setdefault(key, _MarketEntry())
        async with entry.lock:
            if entry.table is None or self._clock() - entry.loaded_at > self._ttl:
                entry.table = await load()
                entry.loaded_at = self._clock()
                self.loads += 1
            return entry.table


def market_table(spec: PlatformSpec, markets: list[Any], where: str) -> dict[str, MarketInfo]:
    """Swap markets by unified symbol, with exact contract sizes from the raw info."""
    if not isinstance(markets, list):
        raise BadExchangeResponse(f"{where}: fetch_markets returned {type(markets).__name__}")
    table: dict[str, MarketInfo] = {}
    for market in markets:
        if not isinstance(market, dict) or not market.get("swap") or not market.get("linear"):
            continue
        info = market.get("info")
        if not isinstance(info, Mapping):
            continue
        table[str(market["symbol"])] = MarketInfo(
            symbol=str(market["symbol"]),
            id=str(market["id"]),
            settle=str(market.get("settle") or ""),
            settle_id=str(market.get("settleId") or ""),
            contract_size=spec.contract_size(info),
            info=info,
        )
    return table
