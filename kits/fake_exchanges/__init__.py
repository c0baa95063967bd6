"""Fake exchanges for the adapter tests and the benchmark: real wire formats on 127.0.0.1.

ccxt is never mocked: the adapters' real ccxt clients are pointed at these servers through the
account's ``base_url`` (which replaces the REST host in ``exchange.urls['api']``).
"""

from __future__ import annotations

from kits.fake_exchanges.binance import FakeBinance
from kits.fake_exchanges.bitget import FakeBitget
from kits.fake_exchanges.bybit import FakeBybit
from kits.fake_exchanges.gate import FakeGate
from kits.fake_exchanges.okx import FakeOkx
from kits.fake_exchanges.server import DEFAULT_MARKETS, FakeExchange, Fault, MarketSpec, Seen

FAKES: dict[str, type[FakeExchange]] = {
    "binance": FakeBinance,
    "okx": FakeOkx,
    "gate": FakeGate,
    "bitget": FakeBitget,
    "bybit": FakeBybit,
}

__all__ = [
    "DEFAULT_MARKETS",
    "FAKES",
    "FakeBinance",
    "FakeBitget",
    "FakeBybit",
    "FakeExchange",
    "FakeGate",
    "FakeOkx",
    "Fault",
    "MarketSpec",
    "Seen",
]
