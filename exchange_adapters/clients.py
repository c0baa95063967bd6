"""ccxt clients: one instance per (platform, API account), markets loaded once and shared.

Every robot on one API account shares its account's client, so they share ccxt's rate-limit
bucket (one per instance), the concurrency limit, and the cool-down. Markets are fetched once
per (platform, API host) by a short-lived credential-less instance - ``fetch_markets`` only, no
private currency calls - and shared by every account on that host.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import urlsplit

import ccxt.async_support as ccxt
import structlog

from exchange_adapters.errors import (
    UnknownSymbol,
    capturing,
    install_response_hook,
    map_ccxt_errors,
)
from exchange_adapters.options import AdapterOptions
from exchange_adapters.retry import Cooldowns, with_retries
from reconcile.errors import BadExchangeResponse, ConfigError
from reconcile.records import ApiAccount

log = structlog.get_logger("exchange_adapters")

T = TypeVar("T")

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


@dataclass(frozen=True)
class PlatformSpec:
    """How to build and talk to one platform's ccxt client."""

    platform: str
    ccxt_id: str
    default_options: Mapping[str, Any]
    #: exchange error codes ccxt calls permanent but which are transient (clock skew, ...)
    temporary_codes: frozenset[str]
    #: exact contract size from a ccxt market's raw ``info`` (never ccxt's float)
    contract_size: Callable[[Mapping[str, Any]], Decimal]


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def override_hosts(urls: dict[str, Any], base_url: str) -> None:
    """Replace scheme and host of every REST URL in ``urls`` (in place) with ``base_url``'s.

    A path in ``base_url`` becomes a prefix: ``https://proxy/bn`` + ``/fapi/v1`` ->
    ``https://proxy/bn/fapi/v1``. Templated hosts (``https://api.{hostname}``) are replaced too.
    """
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError("base_url must be an http(s) URL with a host")
    root = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
    for key, value in urls.items():
        if isinstance(value, dict):
            override_hosts(value, base_url)
        elif isinstance(value, str) and "://" in value:
            rest = value.split("://", 1)[1]
            path = rest[rest.index("/") :] if "/" in rest else ""
            urls[key] = root + path


def build_exchange(
    spec: PlatformSpec,
    options: AdapterOptions,
    *,
    base_url: str | None,
    account: ApiAccount | None,
) -> Any:
    """A configured ccxt async instance (credentials only when ``account`` is given)."""
    config: dict[str, Any] = {
        "enableRateLimit": True,
        "timeout": max(1, round(options.timeout * 1000)),
        "options": deep_merge(spec.default_options, options.ccxt_options),
    }
    if options.rate_limit_ms is not None:
        config["rateLimit"] = options.rate_limit_ms
    if options.close_delay_ms is not None:
        config["timeout_on_exit"] = options.close_delay_ms
    if account is not None:
        config["apiKey"] = account.api_key.get()
        config["secret"] = account.secret.get()
        if account.passphrase is not None:
            config["password"] = account.passphrase.get()
    exchange = getattr(ccxt, spec.ccxt_id)(config)
    if exchange.verify and exchange.ssl_context is None:
        exchange.ssl_context = _ssl_context(exchange.cafile)
    if base_url:
        override_hosts(exchange.urls["api"], base_url)
    install_response_hook(exchange)
    return exchange


@functools.cache
def _ssl_context(cafile: str | None) -> ssl.SSLContext:
    """One TLS context (ccxt's CA bundle) shared by all clients: building one costs ~50 ms of
    CPU, which ccxt would otherwise spend per client when it opens its session."""
    return ssl.create_default_context(cafile=cafile)


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


class ExchangeClient:
    """One ccxt instance for one API account, used by every robot on that account.

    ``async with`` it, or call :meth:`close` (safe twice).
    """

    def __init__(
        self,
        spec: PlatformSpec,
        account: ApiAccount,
        options: AdapterOptions,
        markets: MarketCache,
    ) -> None:
        self.spec = spec
        self.platform = spec.platform
        self.account_id = account.id
        self.options = options
        self.cooldowns = Cooldowns()
        self.requests = 0
        self._base_url = account.base_url or None
        self._exchange = build_exchange(spec, options, base_url=self._base_url, account=account)
        self._markets = markets
        self._semaphore = asyncio.Semaphore(options.max_concurrent_requests)
        self._closed = False

    def _where(self, what: str) -> str:
        return f"{self.platform} account {self.account_id}: {what}"

    async def _attempt(
        self,
        exchange: Any,
        call: Callable[[Any], Awaitable[Any]],
        validate: Callable[[Any, str], T],
        what: str,
    ) -> T:
        where = self._where(what)
        async with self._semaphore:
            with (
                capturing() as capture,
                map_ccxt_errors(where, capture=capture, temporary_codes=self.spec.temporary_codes),
            ):
                if exchange is self._exchange:
                    self.requests += 1  # the account's own calls (markets are shared)
                raw = await call(exchange)
        return validate(raw, where)

    async def _call(
        self,
        exchange: Any,
        call: Callable[[Any], Awaitable[Any]],
        validate: Callable[[Any, str], T],
        *,
        what: str,
        symbol: str | None,
    ) -> T:
        if self._closed:
            raise RuntimeError(f"{self._where(what)}: client is closed")
        return await with_retries(
            lambda: self._attempt(exchange, call, validate, what),
            policy=self.options.retry,
            cooldowns=self.cooldowns,
            cooldown_seconds=self.options.cooldown,
            symbol=symbol,
            log_fields={
                "platform": self.platform,
                "account_id": self.account_id,
                "symbol": symbol,
                "what": what,
            },
        )

    async def request(
        self,
        endpoint: str,
        params: dict[str, Any],
        validate: Callable[[Any, str], T],
        *,
        what: str,
        symbol: str | None,
    ) -> T:
        """Call ccxt's implicit API method ``endpoint`` (e.g. ``fapiPrivateGetUserTrades``)."""

        async def call(exchange: Any) -> Any:
            return await getattr(exchange, endpoint)(dict(params))

        return await self._call(self._exchange, call, validate, what=what, symbol=symbol)

    async def market(self, symbol: str) -> MarketInfo:
        """The market of a unified symbol; :class:`UnknownSymbol` when the exchange lacks it."""
        key = (self.platform, self._base_url or "")
        table = await self._markets.table(key, self._load_markets)
        try:
            return table[symbol]
        except KeyError:
            raise UnknownSymbol(
                f"{self._where('markets')}: {symbol} is not a listed USDT-margined swap"
            ) from None

    async def _load_markets(self) -> dict[str, MarketInfo]:
        public = build_exchange(self.spec, self.options, base_url=self._base_url, account=None)
        try:

            async def call(exchange: Any) -> Any:
                return await exchange.fetch_markets()

            def validate(raw: Any, where: str) -> dict[str, MarketInfo]:
                return market_table(self.spec, raw, where)

            table = await self._call(public, call, validate, what="fetch_markets", symbol=None)
        finally:
            await public.close()
        log.info("exchange markets loaded", platform=self.platform, markets=len(table))
        return table

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._exchange.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
