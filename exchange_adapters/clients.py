"""ccxt clients: one light :class:`ExchangeClient` per API account, over the shared
:class:`~exchange_adapters.transport.Transport` of its host and egress, with markets from the
shared :class:`~exchange_adapters.markets.MarketCache`; every request within the platform's
budgets (:mod:`exchange_adapters.budgets`), its errors translated once and retried by
:mod:`exchange_adapters.retry`. A proxy's password never reaches an error message. See
docs/exchanges.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self, TypeVar

import structlog

from exchange_adapters.answers import ResponseCapture
from exchange_adapters.budgets import Budget
from exchange_adapters.errors import (
    UnknownSymbol,
    capturing,
    map_ccxt_errors,
)
from exchange_adapters.markets import MarketCache, MarketInfo, market_table
from exchange_adapters.options import AdapterOptions
from exchange_adapters.retry import Cooldowns, with_retries
from exchange_adapters.transport import PlatformSpec, Transport, host_for
from reconcile.errors import ExchangeUnavailable, ReconcileError
from reconcile.records import ApiAccount, Proxy

log = structlog.get_logger("exchange_adapters")

T = TypeVar("T")


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
