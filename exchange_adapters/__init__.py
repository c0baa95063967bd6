"""Exchange adapters: reconcile's ``ClosedPositionSource`` port implemented with ccxt and files.

One small module per exchange (binance USDⓈ-M, okx, gate, bitget, bybit) over a common base,
a replay adapter for JSON Lines / CSV files, one error mapping (:func:`map_ccxt_errors`), one
retry layer, and a registry holding one ccxt client per (platform, API account).
"""

from exchange_adapters.errors import UnknownSymbol, map_ccxt_errors
from exchange_adapters.options import (
    CCXT_PLATFORMS,
    PLATFORMS,
    AdapterOptions,
    CredentialEnv,
    ProfitBasis,
    RetryOptions,
    profit_of,
)
from exchange_adapters.registry import (
    ExchangeRegistry,
    closed_positions_for_account,
    position_to_json,
)
from exchange_adapters.replay import ReplaySource, ReplayStore
from exchange_adapters.symbols import to_unified

__all__ = [
    "CCXT_PLATFORMS",
    "PLATFORMS",
    "AdapterOptions",
    "CredentialEnv",
    "ExchangeRegistry",
    "ProfitBasis",
    "ReplaySource",
    "ReplayStore",
    "RetryOptions",
    "UnknownSymbol",
    "closed_positions_for_account",
    "map_ccxt_errors",
    "position_to_json",
    "profit_of",
    "to_unified",
]
