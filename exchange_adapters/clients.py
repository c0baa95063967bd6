"""ccxt clients: one light client per API account over one shared ccxt instance per host and
egress; markets loaded once and shared; every request within the platform's budgets.

A ccxt instance costs ~150 KB and ~5 ms of CPU to build, and each holds its own HTTP session and
connection pool. So one :class:`Transport` (a credential-less ccxt instance: session, connection
pool, TLS context, proxy) serves every account of a platform on one host and egress; an
account's request runs on a shallow copy of it carrying that account's credentials (~3 KB,
~20 µs, dropped after the request). ccxt's own rate limiter is off: the budgets
(:mod:`exchange_adapters.budgets`) decide when a request may go. Markets are fetched once per
(platform, API host) by the transport itself - ``fetch_markets`` only, no private currency
calls - and shared by every account on that host.

Hosts are ccxt's own, the ones the engine calls (its ``exchange.Config`` has no base URL), unless
``exchanges.<platform>.base_url`` names one for the platform, or ``use_account_base_url`` honours
the account's ``hg_trading_api_config.base_url``.
"""

from __future__ import annotations

import asyncio
import copy
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

from exchange_adapters.budgets import Budget, Limits
from exchange_adapters.errors import (
    ResponseCapture,
    UnknownSymbol,
    capturing,
    install_response_hook,
    map_ccxt_errors,
)
from exchange_adapters.options import AdapterOptions
from exchange_adapters.retry import Cooldowns, with_retries
from reconcile.errors import BadExchangeResponse, ConfigError, ExchangeUnavailable, ReconcileError
from reconcile.records import ApiAccount, Proxy

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
    #: the hosts ccxt calls for this client (the engine's too), and the exchange's domain: another
    #: host of that domain is another of its APIs (spot, options, ...)
    futures_hosts: frozenset[str] = frozenset()
    domain: str = ""
    #: what the exchange allows per IP and per account
    limits: Limits = field(default_factory=Limits)


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


def host_for(options: AdapterOptions, account: ApiAccount) -> str | None:
    """The host overriding ccxt's for ``account`` (None: ccxt's own, as the engine)."""
    if options.base_url:
        return options.base_url
    if options.account_base_url and account.base_url:
        return account.base_url
    return None


def build_exchange(
    spec: PlatformSpec,
    options: AdapterOptions,
    *,
    base_url: str | None,
    account: ApiAccount | None,
    proxy: Proxy | None = None,
) -> Any:
    """A configured ccxt async instance (credentials only when ``account`` is given).

    ccxt's rate limiter runs only when ``rate_limit_ms`` is configured (the budgets pace
    requests otherwise). Through a SOCKS5 proxy host names are resolved by the proxy
    (``socks5h``), as the engine's Go client does.
    """
    config: dict[str, Any] = {
        "enableRateLimit": options.rate_limit_ms is not None,
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
    if proxy is not None:
        config["socksProxy" if proxy.kind == "socks5" else "httpProxy"] = proxy.url()
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


class Transport:
    """One credential-less ccxt instance for a (platform, host, egress): its HTTP session,
    connection pool and proxy serve every account there. :meth:`view` lends an account a
    shallow copy carrying its credentials; :meth:`release` detaches the copy from the session
    so that nothing but :meth:`close` ever closes it."""

    def __init__(
        self,
        spec: PlatformSpec,
        options: AdapterOptions,
        *,
        base_url: str | None,
        proxy: Proxy | None,
    ) -> None:
        self.spec = spec
        self.base_url = base_url
        self.proxy = proxy
        self.exchange = build_exchange(spec, options, base_url=base_url, account=None, proxy=proxy)
        self._opened = False
        self._closed = False

    def _open(self) -> None:
        """Open the session (and the SOCKS session) once, inside the running loop, before any
        copy is made: a copy made earlier would open a session of its own."""
        if self._opened:
            return
        exchange = self.exchange
        exchange.open()
        if exchange.socksProxy:
            exchange.get_socks_proxy_session(exchange.socksProxy)
        self._opened = True

    def view(self, account: ApiAccount | None) -> Any:
        """The instance itself (``account`` None: public calls) or a copy signing as ``account``."""
        if self._closed:
            raise RuntimeError(f"{self.spec.platform} transport is closed")
        self._open()
        if account is None:
            return self.exchange
        view = copy.copy(self.exchange)
        view.apiKey = account.api_key.get()
        view.secret = account.secret.get()
        view.password = account.passphrase.get() if account.passphrase is not None else ""
        return view

    def release(self, view: Any) -> None:
        if view is self.exchange:
            return
        view.session = None
        view.socks_proxy_sessions = None
        view.tcp_connector = None
        view.aiohttp_socks_connector = None
        view.apiKey = view.secret = view.password = ""

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.exchange.close()


class ExchangeClient:
    """One API account's client, used by every robot on that account: its credentials, its
    cool-downs, its concurrency limit and budgets, over a shared :class:`Transport`.

    ``async with`` it, or call :meth:`close` (safe twice); the transport is closed by whoever
    made it (the registry).
    """

    def __init__(
        self,
        spec: PlatformSpec,
        account: ApiAccount,
        options: AdapterOptions,
        markets: MarketCache,
        transport: Transport | None = None,
        *,
        egress_budget: Budget | None = None,
        account_budget: Budget | None = None,
    ) -> None:
        self.spec = spec
        self.platform = spec.platform
        self.account_id = account.id
        self.options = options
        self.cooldowns = Cooldowns()
        self.requests = 0
        self._account = account
        self._owns_transport = transport is None
        self._transport = transport or Transport(
            spec, options, base_url=host_for(options, account), proxy=None
        )
        self._base_url = self._transport.base_url
        self._markets = markets
        self._semaphore = asyncio.Semaphore(options.max_concurrent_requests)
        self._egress_budget = egress_budget
        self._account_budget = account_budget
        self._closed = False

    def _where(self, what: str) -> str:
        return f"{self.platform} account {self.account_id}: {what}"

    async def _attempt(
        self,
        signed: bool,
        call: Callable[[Any], Awaitable[Any]],
        validate: Callable[[Any, str], T],
        what: str,
        cost: int,
    ) -> T:
        where = self._where(what)
        budgets = [b for b in (self._account_budget if signed else None, self._egress_budget) if b]
        async with self._semaphore:
            for budget in budgets:  # the account's first: a wait there holds no egress queue
                await budget.acquire(cost)
            view = self._transport.view(self._account if signed else None)
            try:
                with (
                    capturing() as capture,
                    map_ccxt_errors(
                        where, capture=capture, temporary_codes=self.spec.temporary_codes
                    ),
                ):
                    if signed:
                        self.requests += 1  # the account's own calls (markets are shared)
                    try:
                        raw = await call(view)
                    finally:
                        for budget in budgets:
                            budget.record(capture)
            except ReconcileError as exc:
                _redact(exc, self._transport.proxy)
                refused = _proxy_refused(self._transport.proxy, capture)
                if refused is not None:
                    raise ExchangeUnavailable(f"{where}: {refused}") from exc
                raise
            finally:
                self._transport.release(view)
        return validate(raw, where)

    async def _call(
        self,
        signed: bool,
        call: Callable[[Any], Awaitable[Any]],
        validate: Callable[[Any, str], T],
        *,
        what: str,
        symbol: str | None,
        cost: int = 1,
    ) -> T:
        if self._closed:
            raise RuntimeError(f"{self._where(what)}: client is closed")
        return await with_retries(
            lambda: self._attempt(signed, call, validate, what, cost),
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

        cost = self.spec.limits.weight(endpoint)
        return await self._call(True, call, validate, what=what, symbol=symbol, cost=cost)

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
        async def call(exchange: Any) -> Any:
            return await exchange.fetch_markets()

        def validate(raw: Any, where: str) -> dict[str, MarketInfo]:
            return market_table(self.spec, raw, where)

        table = await self._call(False, call, validate, what="fetch_markets", symbol=None)
        log.info("exchange markets loaded", platform=self.platform, markets=len(table))
        return table

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owns_transport:
            await self._transport.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _proxy_refused(proxy: Proxy | None, answer: ResponseCapture) -> str | None:
    """An HTTP proxy that refuses our credentials answers 407 with Proxy-Authenticate (tinyproxy:
    401, ``Server: tinyproxy/…``): say it is the proxy, not the exchange, that refused.
    Temporary: the account's key is not at fault, and the proxy may be fixed."""
    status = answer.status
    if proxy is None or proxy.kind != "http" or status not in (401, 407):
        return None
    server = answer.header("Server") or ""
    by_proxy = answer.header("Proxy-Authenticate") is not None or "proxy" in server.lower()
    if status == 407 or by_proxy:
        return f"the HTTP proxy {proxy.label} refused our credentials (HTTP {status})"
    return None


def _redact(exc: BaseException, proxy: Proxy | None) -> None:
    """Strip the proxy's password from an error's message (an HTTP client may quote the URL)."""
    if proxy is None or proxy.password is None or not proxy.password.get():
        return
    secret = proxy.password.get()
    exc.args = tuple(a.replace(secret, "**********") if isinstance(a, str) else a for a in exc.args)
