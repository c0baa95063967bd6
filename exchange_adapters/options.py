"""Per-platform adapter options: plain frozen dataclasses, built by the daemon's config model.

``exchange_adapters`` does not import the daemon; ``daemon.exchanges_config`` turns the validated
YAML section into these.
See docs/exchanges.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from exchange_adapters.budgets import DEFAULT_SHARE, BudgetOptions
from reconcile.records import ProfitBasis


class Platform(StrEnum):
    """The one list of platforms, by the name ``hg_trading_api_config.platform`` and the
    ``exchanges:`` section use. ``registry.ADAPTERS`` must serve every ccxt platform (checked
    when it is built); the config accepts exactly these names."""

    BINANCE = "binance"
    OKX = "okx"
    GATE = "gate"
    BITGET = "bitget"
    BYBIT = "bybit"
    REPLAY = "replay"


REPLAY: str = Platform.REPLAY.value
#: The exchanges served through ccxt.
CCXT_PLATFORMS: tuple[str, ...] = tuple(p.value for p in Platform if p is not Platform.REPLAY)
PLATFORMS: tuple[str, ...] = tuple(p.value for p in Platform)


__all__ = [
    "CCXT_PLATFORMS",
    "PLATFORMS",
    "REPLAY",
    "AdapterOptions",
    "BudgetOptions",
    "CredentialEnv",
    "Platform",
    "RetryOptions",
]


@dataclass(frozen=True)
class RetryOptions:
    """Retries of one exchange request: bounded, exponential with jitter, honouring Retry-After.

    ``attempts`` counts the first try. A Retry-After longer than ``retry_after_max`` seconds
    ends the retries at once (the error still is temporary: the next cycle tries again).
    """

    attempts: int = 4
    initial: float = 0.5
    maximum: float = 10.0
    retry_after_max: float = 60.0


@dataclass(frozen=True)
class CredentialEnv:
    """Names of environment variables holding the credentials (not the values)."""

    api_key: str | None = None
    secret: str | None = None
    passphrase: str | None = None


@dataclass(frozen=True, eq=False)
class AdapterOptions:
    """What one platform's adapters are configured with (``exchanges.<platform>``)."""

    ccxt_options: Mapping[str, Any] = field(default_factory=dict)
    timeout: float = 10.0
    retry: RetryOptions = field(default_factory=RetryOptions)
    max_concurrent_requests: int = 4
    profit_basis: ProfitBasis = ProfitBasis.NET
    cooldown: float = 900.0
    credentials_env: CredentialEnv | None = None
    #: ccxt's ``rateLimit`` (milliseconds per unit of request cost); None keeps ccxt's value.
    rate_limit_ms: int | None = None
    #: Records per request; None uses the exchange's maximum. Tests use small pages.
    page_size: int | None = None
    #: ccxt waits this long on close for TLS connections to shut down (None: ccxt's 250 ms).
    close_delay_ms: int | None = None
    #: Replay only: a JSON Lines / CSV file, or a directory of them.
    path: Path | None = None
    #: Every account of the platform calls this host instead of ccxt's (tests, benchmarks, a
    #: mirror). None: ccxt's own hosts, the ones the engine calls.
    base_url: str | None = None
    #: Honour ``hg_trading_api_config.base_url`` (the engine ignores it: off by default).
    account_base_url: bool = False
    #: The daemon's part of the platform's budgets (the rest is the engine's).
    budget_share: float = DEFAULT_SHARE
    #: Replace the platform's per-IP (egress) budget / per-account budget (None: the spec's).
    budget: BudgetOptions | None = None
    account_budget: BudgetOptions | None = None
