"""Which source serves an API account, the clients' lifecycle, and the CLI's one-shot helpers.

``ExchangeRegistry`` is reconcile's :class:`~reconcile.records.SourceProvider` (the history sync
is given the registry itself).

``ExchangeRegistry`` keeps one adapter (a light client) per (platform, API account) for every
enabled platform over one shared ccxt :class:`~exchange_adapters.transport.Transport` per
(platform, host), all leaving through one egress (the proxy, or ``direct``), and one replay
store per replay path. The process's budgets (:class:`~exchange_adapters.budgets.Budgets`) are
the registry's: one per platform for the egress, one per account. An account whose platform is
enabled is served by that exchange; otherwise, when ``replay`` is enabled, by the replay files
(that is the embedded default); otherwise its platform is a configuration error.
See docs/exchanges.md.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import structlog

from exchange_adapters.base import CcxtAdapter
from exchange_adapters.binance import BinanceAdapter
from exchange_adapters.bitget import BitgetAdapter
from exchange_adapters.budgets import DIRECT, Budget, BudgetOptions, Budgets
from exchange_adapters.bybit import BybitAdapter
from exchange_adapters.clients import ExchangeClient
from exchange_adapters.fields import RecordUnusable
from exchange_adapters.gate import GateAdapter
from exchange_adapters.markets import MarketCache
from exchange_adapters.okx import OkxAdapter
from exchange_adapters.options import CCXT_PLATFORMS, PLATFORMS, REPLAY, AdapterOptions
from exchange_adapters.positions import Context, market_from_context
from exchange_adapters.replay import ReplaySource, ReplayStore
from exchange_adapters.transport import PlatformSpec, Transport, host_for
from reconcile.errors import ConfigError
from reconcile.records import (
    ApiAccount,
    ClosedPosition,
    ClosedPositionSource,
    ClosedWindow,
    ProfitBasis,
    Proxy,
    Secret,
    UnusableRecord,
)

log = structlog.get_logger("exchange_adapters")

#: the latency one polling place is sized for: a proxy and a distant exchange, up to a second
SLOT_LATENCY = 1
#: places for a platform whose budgets are per account only
ACCOUNT_BOUND_SLOTS = 32
REPLAY_SLOTS = 8
MAX_SLOTS = 64


def _by_platform(*classes: type[CcxtAdapter[Any]]) -> dict[str, type[CcxtAdapter[Any]]]:
    """The adapter classes by their spec's platform, in ``options.Platform``'s order; exactly
    one for every ccxt platform there (a platform without an adapter fails at import)."""
    adapters = {cls.spec.platform: cls for cls in classes}
    if sorted(adapters) != sorted(CCXT_PLATFORMS) or len(adapters) != len(classes):
        raise RuntimeError(f"adapters {sorted(adapters)} do not serve {list(CCXT_PLATFORMS)}")
    return {platform: adapters[platform] for platform in CCXT_PLATFORMS}


ADAPTERS = _by_platform(BinanceAdapter, OkxAdapter, GateAdapter, BitgetAdapter, BybitAdapter)


def apply_env_credentials(
    account: ApiAccount, options: AdapterOptions, environ: Mapping[str, str] | None = None
) -> ApiAccount:
    """The account with credentials from the environment variables the config names, if any."""
    names = options.credentials_env
    if names is None:
        return account
    env = os.environ if environ is None else environ

    def read(name: str | None, current: Secret | None) -> Secret | None:
        if name is None:
            return current
        value = env.get(name)
        if value is None:
            raise ConfigError(
                f"exchanges.{account.platform}: environment variable {name} is not set"
            )
        return Secret(value)

    api_key = read(names.api_key, account.api_key)
    secret = read(names.secret, account.secret)
    return account.with_credentials(
        api_key=api_key if api_key is not None else Secret(""),
        secret=secret if secret is not None else Secret(""),
        passphrase=read(names.passphrase, account.passphrase),
    )


class ExchangeRegistry:
    """Sources for API accounts, created on first use and closed together (``async with``)."""

    def __init__(
        self,
        platforms: Mapping[str, AdapterOptions],
        *,
        environ: Mapping[str, str] | None = None,
        proxy: Proxy | None = None,
        budgets: Budgets | None = None,
    ) -> None:
        unknown = set(platforms) - set(PLATFORMS)
        if unknown:
            raise ConfigError(f"exchanges: unknown platform(s) {', '.join(sorted(unknown))}")
        self.platforms = dict(platforms)
        self.markets = MarketCache()
        self.proxy = proxy
        self.egress = proxy.egress if proxy is not None else DIRECT
        self.budgets = budgets if budgets is not None else Budgets()
        self._transports: dict[tuple[str, str | None], Transport] = {}
        self._environ = environ
        for platform in CCXT_PLATFORMS:  # made now: their metrics exist at 0 from the start
            if platform in self.platforms:
                self._egress_budget(ADAPTERS[platform].spec, self.platforms[platform])
        self._adapters: dict[tuple[str, int], tuple[ApiAccount, CcxtAdapter[Any]]] = {}
        self._retired: list[CcxtAdapter[Any]] = []
        self._replay: dict[Path, ReplayStore] = {}
        self._closed = False

    def source_for(self, account: ApiAccount) -> ClosedPositionSource:
        """The source serving ``account``; the same object for the same account until closed.

        A changed account row (rotated key, new base_url) gets a new client; the old one is
        closed with the registry.
        """
        if self._closed:
            raise RuntimeError("the exchange registry is closed")
        platform = account.platform
        adapter_class = ADAPTERS.get(platform)
        if adapter_class is None or platform not in self.platforms:
            return self._replay_source(account)
        options = self.platforms[platform]
        key = (platform, account.id)
        known = self._adapters.get(key)
        if known is not None and known[0] == account:
            return known[1]
        if known is not None:
            self._retired.append(known[1])
        resolved = apply_env_credentials(account, options, self._environ)
        spec = adapter_class.spec
        client = ExchangeClient(
            spec,
            resolved,
            options,
            self.markets,
            self._transport(spec, options, host_for(options, account)),
            egress_budget=self._egress_budget(spec, options),
            account_budget=self.budgets.for_account(
                platform, account.id, _budget(spec.limits.account, options, "account_budget")
            ),
        )
        adapter = adapter_class(client)
        self._adapters[key] = (account, adapter)
        return adapter

    def _egress_budget(self, spec: PlatformSpec, options: AdapterOptions) -> Budget | None:
        budget = _budget(spec.limits.egress, options, "budget")
        return self.budgets.for_egress(spec.platform, self.egress, spec.limits, budget)

    def _transport(
        self, spec: PlatformSpec, options: AdapterOptions, host: str | None
    ) -> Transport:
        key = (spec.platform, host)
        transport = self._transports.get(key)
        if transport is None:
            transport = Transport(spec, options, base_url=host, proxy=self.proxy)
            self._transports[key] = transport
        return transport

    def concurrency(self) -> int:
        """Accounts worth polling at once (``sync.concurrency: auto``), sized by the budgets.

        A platform counted per IP (Binance, Bybit) gets as many places as its share of the
        egress budget sends requests of its closed-position endpoint in ``SLOT_LATENCY``, plus
        one: more would only wait in the budget's queue while holding their leases. A platform
        counted per account (OKX, Gate, Bitget) is not bounded by the egress: it gets
        ``ACCOUNT_BOUND_SLOTS``. Replay reads files: ``REPLAY_SLOTS``. At most ``MAX_SLOTS``.
        """
        total = 0
        for platform, options in self.platforms.items():
            adapter = ADAPTERS.get(platform)
            if adapter is None:
                total += REPLAY_SLOTS
                continue
            egress = _budget(adapter.spec.limits.egress, options, "budget")
            if egress is None:
                total += ACCOUNT_BOUND_SLOTS
                continue
            per_second = egress.rate / adapter.spec.limits.weight(adapter.endpoint.method)
            total += math.ceil(per_second * SLOT_LATENCY) + 1
        return max(1, min(MAX_SLOTS, total))

    def options_for(self, account: ApiAccount) -> AdapterOptions:
        """The options serving ``account`` (its platform's, or replay's): e.g. ``profit_basis``."""
        if account.platform in ADAPTERS and account.platform in self.platforms:
            return self.platforms[account.platform]
        if REPLAY in self.platforms:
            return self.platforms[REPLAY]
        raise ConfigError(
            f"API account {account.id}: platform {account.platform!r} is not enabled under "
            "exchanges: (and no replay source is configured)"
        )

    def profit_basis(self, account: ApiAccount) -> ProfitBasis:
        """What the platform charges ``account``'s closed positions on."""
        return self.options_for(account).profit_basis

    def _replay_source(self, account: ApiAccount) -> ClosedPositionSource:
        options = self.options_for(account)
        if options.path is None:
            raise ConfigError("exchanges.replay: path is required")
        store = self._replay.setdefault(options.path, ReplayStore(options.path))
        return ReplaySource(store, account.id, account.platform)

    def requests(self) -> int:
        """HTTP requests made so far by the account clients (markets loading excluded)."""
        return sum(adapter.client.requests for _, adapter in self._adapters.values())

    def requests_by_platform(self) -> dict[str, int]:
        """The same per platform, since the registry opened (clients replaced since included):
        only ever grows, for the ``toogo_exchange_requests_total`` counter."""
        counts: dict[str, int] = {}
        for adapter in [a for _, a in self._adapters.values()] + self._retired:
            platform = adapter.client.platform
            counts[platform] = counts.get(platform, 0) + adapter.client.requests
        return counts

    async def close(self) -> None:
        """Close every client; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        adapters = [a for _, a in self._adapters.values()] + self._retired
        self._adapters.clear()
        self._retired.clear()
        closing = [a.close() for a in adapters] + [t.close() for t in self._transports.values()]
        self._transports.clear()
        results = await asyncio.gather(*closing, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                log.warning("exchange client close failed", error=type(result).__name__)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _budget(
    default: BudgetOptions | None, options: AdapterOptions, name: str
) -> BudgetOptions | None:
    """The configured budget, else the platform's with the configured share."""
    configured: BudgetOptions | None = getattr(options, name)
    if configured is not None:
        return configured
    if default is None:
        return None
    return BudgetOptions(limit=default.limit, window=default.window, share=options.budget_share)


async def closed_positions_for_account(
    account: ApiAccount,
    platforms: Mapping[str, AdapterOptions],
    symbol: str,
    since: datetime,
    until: datetime | None = None,
    *,
    proxy: Proxy | None = None,
) -> ClosedWindow:
    """One-shot (the CLI's ``exchange closed``): the account's closed positions of ``symbol``
    with since <= close_time < until (default now), sorted by close time, and the unusable
    records of that window."""
    async with ExchangeRegistry(platforms, proxy=proxy) as registry:
        source = registry.source_for(account)
        return await source.fetch_closed(symbol, since, until or datetime.now(UTC))


def _json_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    return value


def position_to_json(position: ClosedPosition, *, include_raw: bool = False) -> dict[str, Any]:
    """A JSON-ready dict: Decimals as plain strings (no exponent), times ISO 8601 UTC with Z."""
    data: dict[str, Any] = {
        "platform": position.platform,
        "account_id": position.account_id,
        "symbol": position.symbol,
        "direction": position.direction,
        "size": position.size,
        "open_price": position.open_price,
        "close_price": position.close_price,
        "gross_pnl": position.gross_pnl,
        "fee": position.fee,
        "funding": position.funding,
        "net_profit": position.net_profit,
        "open_time": position.open_time,
        "close_time": position.close_time,
        "record_key": position.record_key,
        "profit_basis": position.profit_basis,
        "funding_known": position.funding_known,
        "exchange_order_ids": list(position.exchange_order_ids),
    }
    if include_raw:
        data["raw"] = position.raw
    return {key: _json_value(value) for key, value in data.items()}


def unusable_to_json(record: UnusableRecord) -> dict[str, Any]:
    """An unusable record as a JSON-ready dict (``"unusable": true`` tells it from a position)."""
    data: dict[str, Any] = {
        "unusable": True,
        "platform": record.platform,
        "account_id": record.account_id,
        "symbol": record.symbol,
        "record_key": record.record_key,
        "reason": record.reason,
        "close_time": record.close_time,
        "raw": record.raw,
    }
    return {key: _json_value(value) for key, value in data.items()}


def normalize_stored(
    platform: str, account_id: int, raw: dict[str, Any], context: Mapping[str, str]
) -> ClosedPosition:
    """Re-normalize a stored raw record with the current adapter code, without network
    (``exchange quarantine --retry``). Raises RecordUnusable (a BadExchangeResponse) if it
    still cannot be normalized, ConfigError for an unknown platform."""
    adapter = ADAPTERS.get(platform)
    if adapter is None:
        raise ConfigError(f"no adapter for platform {platform!r}")
    try:
        market = market_from_context(context)
    except ValueError as exc:
        raise RecordUnusable(str(exc)) from None
    return adapter.normalize(Context(platform, account_id, market), raw)
