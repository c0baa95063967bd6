"""Benchmark of the exchange adapters against the fake exchanges (real ccxt, loopback HTTP).

Run from the repository root::

    .venv/bin/python -m bench.bench_adapters [--accounts 200] [--symbols 2] [--per-day 3]

Measures, for N API accounts spread evenly over the five exchanges, each polled for S symbols:

- a cold 7-day sync: fresh registry (clients created, markets fetched), every stream reads 7 days;
- a quiet incremental cycle: the same clients, every stream reads the last minute (nothing new);
- normalization throughput: raw exchange records -> ClosedPosition, without HTTP, per exchange;
- end-to-end paging throughput: one account reading a long history page by page over HTTP.

ccxt's own rate limiter runs with each exchange's real limits (one bucket per account).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Any

from exchange_adapters.base import CcxtAdapter
from exchange_adapters.clients import ExchangeClient
from exchange_adapters.markets import MarketCache, MarketInfo
from exchange_adapters.options import AdapterOptions
from exchange_adapters.registry import ADAPTERS, ExchangeRegistry
from kits.fake_exchanges import DEFAULT_MARKETS, FAKES, FakeExchange
from kits.fake_exchanges.harness import DAY_MS, T0, T0_MS, account_for, closed_record
from reconcile.records import ClosedPositionSource

SYMBOLS = ("BTC_USDT", "ETHUSDT", "1000PEPE-USDT")
OPTIONS = AdapterOptions(timeout=10.0)  # production defaults: real ccxt rate limits


def _populate(fake: FakeExchange, symbols: Sequence[str], per_day: int) -> int:
    count = 0
    for symbol in symbols:
        base = symbol.replace("-", "_").split("_")[0].removesuffix("USDT")
        for i in range(7 * per_day):
            close_ms = T0_MS - 5 * 60_000 - i * (DAY_MS // per_day)  # none in the last minute
            fake.records += closed_record(fake.platform, close_ms=close_ms, symbol=base)
            count += 1
    return count


def _requests(fakes: dict[str, FakeExchange]) -> dict[str, int]:
    return {name: fake.count("*") for name, fake in fakes.items()}


async def _cycle(
    streams: list[tuple[ClosedPositionSource, str]], window: timedelta, limit: int
) -> tuple[float, int]:
    gate = asyncio.Semaphore(limit)

    async def one(source: ClosedPositionSource, symbol: str) -> int:
        async with gate:
            return len((await source.fetch_closed(symbol, T0 - window, T0)).records)

    started = time.perf_counter()
    counts = await asyncio.gather(*(one(s, sym) for s, sym in streams))
    return time.perf_counter() - started, sum(counts)


async def bench_sync(accounts: int, symbols: int, per_day: int, limit: int) -> dict[str, Any]:
    chosen = SYMBOLS[:symbols]
    fakes = {name: cls() for name, cls in FAKES.items()}
    for fake in fakes.values():
        await fake.start()
    try:
        per_stream = _populate(next(iter(fakes.values())), chosen, per_day) // len(chosen)
        for fake in list(fakes.values())[1:]:
            _populate(fake, chosen, per_day)
        platforms = sorted(fakes)
        async with ExchangeRegistry({p: OPTIONS for p in platforms}) as registry:
            started = time.perf_counter()
            streams = []
            for n in range(accounts):
                fake = fakes[platforms[n % len(platforms)]]
                source = registry.source_for(account_for(fake, n + 1))
                streams += [(source, symbol) for symbol in chosen]
            clients_s = time.perf_counter() - started
            fetch_s, cold_records = await _cycle(streams, timedelta(days=7), limit)
            cold_s = clients_s + fetch_s
            cold_requests = _requests(fakes)
            for fake in fakes.values():
                fake.reset_counts()
            quiet_s, quiet_records = await _cycle(streams, timedelta(minutes=1), limit)
            quiet_requests = _requests(fakes)
        return {
            "accounts": accounts,
            "streams": len(streams),
            "records_per_stream_7d": per_stream,
            "cold": {
                "seconds": round(cold_s, 3),
                "creating_clients_s": round(clients_s, 3),
                "records": cold_records,
                "requests": sum(cold_requests.values()),
                "by_platform": cold_requests,
            },
            "quiet": {
                "seconds": round(quiet_s, 3),
                "records": quiet_records,
                "requests": sum(quiet_requests.values()),
                "by_platform": quiet_requests,
            },
        }
    finally:
        for fake in fakes.values():
            await fake.stop()


def bench_normalize(records: int) -> dict[str, float]:
    """Records/s of each adapter's normalization, on raw wire records (no HTTP)."""
    results: dict[str, float] = {}
    for platform, adapter_class in ADAPTERS.items():
        fake = FAKES[platform]()
        client = ExchangeClient(adapter_class.spec, account_for(fake), OPTIONS, MarketCache())
        adapter: CcxtAdapter = adapter_class(client)
        market = _market(adapter_class)
        raws = [
            r for i in range(records) for r in closed_record(platform, close_ms=T0_MS - i * 1000)
        ]
        started = time.perf_counter()
        context = adapter.context(market)
        positions = [adapter.normalize(context, r) for r in adapter.records_of(market, raws)]
        elapsed = time.perf_counter() - started
        assert len(positions) == records
        results[platform] = round(records / elapsed)
        asyncio.run(client.close())
    return results


def _market(adapter_class: type[CcxtAdapter]) -> MarketInfo:
    ids = {
        "binance": "BTCUSDT",
        "okx": "BTC-USDT-SWAP",
        "gate": "BTC_USDT",
        "bitget": "BTCUSDT",
        "bybit": "BTCUSDT",
    }
    sizes = {"okx": DEFAULT_MARKETS[0].okx_ct_val, "gate": DEFAULT_MARKETS[0].gate_multiplier}
    platform = adapter_class.spec.platform
    return MarketInfo(
        symbol="BTC/USDT:USDT",
        id=ids[platform],
        settle="USDT",
        settle_id="USDT",
        contract_size=Decimal(sizes.get(platform, "1")),
        info={},
    )


async def bench_paging(records: int) -> dict[str, dict[str, float]]:
    """One account reading ``records`` closed positions over HTTP, at real rate limits."""
    results: dict[str, dict[str, float]] = {}
    for platform, fake_class in FAKES.items():
        async with fake_class() as fake:
            span = 6 * DAY_MS // records
            for i in range(records):
                fake.records += closed_record(platform, close_ms=T0_MS - 1 - i * span)
            async with ExchangeRegistry({platform: OPTIONS}) as registry:
                source = registry.source_for(account_for(fake))
                await source.fetch_closed("BTCUSDT", T0 - timedelta(minutes=1), T0)  # markets
                fake.reset_counts()
                started = time.perf_counter()
                window = await source.fetch_closed("BTCUSDT", T0 - timedelta(days=7), T0)
                positions = window.records
                elapsed = time.perf_counter() - started
            assert len(positions) == records, (platform, len(positions))
            results[platform] = {
                "requests": fake.count("closed"),
                "seconds": round(elapsed, 3),
                "records_per_s": round(records / elapsed),
            }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--symbols", type=int, default=2, choices=(1, 2, 3))
    parser.add_argument("--per-day", type=int, default=3, help="closed positions per stream/day")
    parser.add_argument("--concurrency", type=int, default=100, help="streams in flight")
    parser.add_argument("--normalize", type=int, default=20_000, help="records per exchange")
    parser.add_argument("--paging", type=int, default=2_000, help="records for the paging run")
    args = parser.parse_args()
    report = {
        "sync": asyncio.run(
            bench_sync(args.accounts, args.symbols, args.per_day, args.concurrency)
        ),
        "normalize_records_per_s": bench_normalize(args.normalize),
        "paging": asyncio.run(bench_paging(args.paging)),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
