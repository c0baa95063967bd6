"""The shared ccxt instances: one :class:`Transport` per (platform, host, egress), and how a
platform's ccxt client is built (:class:`PlatformSpec`, :func:`build_exchange`).

A ccxt instance costs ~150 KB and ~5 ms of CPU to build, and each holds its own HTTP session and
connection pool. So one :class:`Transport` (a credential-less ccxt instance: session, connection
pool, TLS context, proxy) serves every account of a platform on one host and egress; an
account's request runs on a shallow copy of it carrying that account's credentials (~3 KB,
~20 µs, dropped after the request). ccxt's own rate limiter is off: the budgets
(:mod:`exchange_adapters.budgets`) decide when a request may go.

Hosts are ccxt's own, the ones the engine calls (its ``exchange.Config`` has no base URL), unless
``exchanges.<platform>.base_url`` names one for the platform, or ``use_account_base_url`` honours
the account's ``hg_trading_api_config.base_url``. See docs/exchanges.md ("Reaching the exchanges
the way the engine does").
"""

from __future__ import annotations

import copy
import functools
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import ccxt.async_support as ccxt

from exchange_adapters.budgets import Limits
from exchange_adapters.errors import install_response_hook
from exchange_adapters.options import AdapterOptions
from reconcile.errors import ConfigError
from reconcile.records import ApiAccount, Proxy


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
