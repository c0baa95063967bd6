"""``doctor``'s checks of the way out: the proxy exchange requests leave through
(``proxy.source``: the engine's ``hg_trading_proxy_config`` row by default; its password is never
shown), every enabled exchange probed with a cheap public call (its markets) through that proxy,
on the host the account would call, with a warning for an account whose ``base_url`` names
another API of that exchange (a spot host for the futures client), and the replay path, read and
parsed. Exchange calls are public and made once (no retries). See docs/operations.md ("Checking
an installation") and docs/exchanges.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from daemon.config import Config
from daemon.doctor_accounts import CheckedAccount
from daemon.doctor_report import Mark, Report, listed_ids
from daemon.exchanges_config import ProxyConfig
from exchange_adapters.base import CcxtAdapter
from exchange_adapters.errors import UnknownSymbol
from exchange_adapters.options import CCXT_PLATFORMS, REPLAY, AdapterOptions
from exchange_adapters.registry import ADAPTERS, ExchangeRegistry
from exchange_adapters.replay import read_file, replay_files
from exchange_adapters.symbols import to_unified
from exchange_adapters.transport import host_for
from reconcile.errors import ConfigError, ReconcileError
from reconcile.records import Proxy
from reconcile.storage.db import Database
from reconcile.sync.accounts import ApiAccount, load_proxy

#: symbol probed on an exchange that has no robot symbol to check (only reachability counts)
PROBE_SYMBOL = "BTC/USDT:USDT"


@dataclass(frozen=True)
class Egress:
    """The proxy the exchange requests leave through, as the proxy check found it."""

    proxy: Proxy | None = None
    #: False when it could not be read: the exchanges are then not probed
    known: bool = True


async def egress(report: Report, section: ProxyConfig, db: Database | None) -> Egress:
    if section.source == "none":
        report.emit(Mark.OK, "proxy", "none (proxy.source: none): exchange requests go direct")
        return Egress()
    try:
        if section.source == "config":
            proxy = section.configured()
        elif db is None:
            report.emit(
                Mark.SKIP,
                "proxy",
                "not checked: no database to read hg_trading_proxy_config from",
            )
            return Egress(known=False)
        else:
            proxy = await load_proxy(db)
    except ReconcileError as exc:
        report.emit(Mark.FAIL, "proxy", str(exc))
        return Egress(known=False)
    if proxy is None:
        report.emit(
            Mark.OK,
            "proxy",
            "none: hg_trading_proxy_config has no enabled global row (user_id 0, tenant_id 0),"
            " so the engine and the daemon go direct",
        )
    else:
        report.emit(Mark.OK, "proxy", f"{proxy.label}: every exchange request uses it")
    return Egress(proxy)


@dataclass(frozen=True)
class ExchangeChecks:
    """The exchanges and the replay path, for the accounts examined (None: the database was
    unusable) of ``scope``, through ``egress``."""

    report: Report
    config: Config
    accounts: list[CheckedAccount] | None
    egress: Egress
    scope: str

    async def run(self) -> None:
        enabled = self.config.exchanges.enabled()
        if not enabled:
            self.report.emit(
                Mark.WARN, "exchanges", "none enabled under exchanges: (history sync polls nothing)"
            )
        options = {
            platform: dataclasses.replace(
                opts, retry=dataclasses.replace(opts.retry, attempts=1), close_delay_ms=0
            )
            for platform, opts in self.config.exchanges.adapter_options().items()
        }
        if self.egress.known:
            await self._probe_all(options)
        else:
            for platform in (p for p in CCXT_PLATFORMS if p in enabled):
                self.report.emit(
                    Mark.SKIP, platform, "not checked: the proxy is not known or usable"
                )
        if REPLAY in enabled:
            await self._replay()
        accounts = self.accounts or []
        others = sorted(
            {a.account.platform for a in accounts} - set(enabled) - {REPLAY}
        )  # platforms neither enabled nor served by replay
        if others and REPLAY not in enabled:
            ids = [a.account.id for a in accounts if a.account.platform in others]
            self.report.emit(
                Mark.WARN,
                "exchanges",
                f"account(s) {listed_ids(ids)} on {', '.join(others)}: not enabled under "
                "exchanges: and no replay - their robots are skipped by the history sync",
            )

    async def _probe_all(self, options: dict[str, AdapterOptions]) -> None:
        enabled = self.config.exchanges.enabled()
        async with ExchangeRegistry(options, proxy=self.egress.proxy) as registry:
            for platform in (p for p in CCXT_PLATFORMS if p in enabled):
                mine = [a for a in self.accounts or [] if a.account.platform == platform]
                if self.accounts is None:
                    self.report.emit(
                        Mark.SKIP, platform, "not checked: no accounts (database unusable)"
                    )
                elif not mine:
                    self.report.emit(
                        Mark.SKIP, platform, f"enabled; none of the {self.scope} uses it"
                    )
                for acct in mine:
                    self.report.emit(*await self._probe(registry, platform, acct))
                    misroute = _misroute(platform, acct.account, options[platform])
                    if misroute:
                        self.report.emit(Mark.WARN, platform, misroute)

    async def _probe(
        self, registry: ExchangeRegistry, platform: str, acct: CheckedAccount
    ) -> tuple[Mark, str, str]:
        account = acct.account
        via = _host(host_for(registry.platforms[platform], account))
        proxy = self.egress.proxy
        through = f" through {proxy.label}" if proxy is not None else ""
        label = f"account {account.id} via {via}{through}"
        try:
            source = registry.source_for(account)
            if not isinstance(source, CcxtAdapter):
                raise ConfigError(f"{platform} is not served by its ccxt adapter")
            symbols = acct.symbols or [PROBE_SYMBOL]
            missing: list[str] = []
            for symbol in symbols:
                try:
                    await source.client.market(to_unified(symbol))
                except UnknownSymbol:
                    if acct.symbols:
                        missing.append(symbol)
        except ReconcileError as exc:
            detail = str(exc).removeprefix(f"{platform} account {account.id}: ")
            return Mark.FAIL, platform, f"{label}: {detail}"
        if missing:
            return (
                Mark.FAIL,
                platform,
                f"{label}: reachable, but robot symbol(s) {', '.join(missing)} are not listed "
                "USDT-margined swaps there",
            )
        listed = "no robot symbols to check"
        if acct.symbols:
            listed = f"robot symbol(s) {', '.join(acct.symbols)} listed"
        return Mark.OK, platform, f"{label}: markets loaded; {listed}"

    async def _replay(self) -> None:
        path = self.config.exchanges[REPLAY].path
        if path is None:  # the config model requires it; kept for the type checker
            self.report.emit(Mark.FAIL, REPLAY, "exchanges.replay: path is required")
            return
        shown = path if path.is_absolute() else Path.cwd() / path

        def read() -> tuple[int, int]:
            files = replay_files(path)
            return len(files), sum(len(read_file(f)) for f in files)

        try:
            files, records = await asyncio.to_thread(read)
        except ConfigError as exc:
            self.report.emit(Mark.FAIL, REPLAY, str(exc))
            return
        enabled = set(self.config.exchanges.enabled())
        served = sorted(
            a.account.id for a in self.accounts or [] if a.account.platform not in enabled
        )
        serves = f"; serves account(s) {listed_ids(served)}" if served else ""
        self.report.emit(
            Mark.OK, REPLAY, f"{shown}: readable, {files} file(s), {records} record(s){serves}"
        )


def _misroute(platform: str, account: ApiAccount, options: AdapterOptions) -> str | None:
    """A warning when the account's base_url names another API of its exchange (upstream's
    platform list offers https://api.binance.com, the spot host, for binance)."""
    adapter = ADAPTERS.get(platform)
    if adapter is None:
        return None
    hosts, domain = adapter.spec.futures_hosts, adapter.spec.domain
    host = (urlsplit(account.base_url or "").hostname or "").lower()
    if not host or not domain or host in hosts or not host.endswith(domain):
        return None
    used = options.account_base_url and not options.base_url
    effect = (
        "it is honoured (use_account_base_url: true): requests go to the wrong API"
        if used
        else "ignored, as the engine ignores it (ccxt's host is called)"
    )
    return (
        f"account {account.id}: base_url {account.base_url} is not a {platform} futures host "
        f"({', '.join(sorted(hosts))}); {effect}"
    )


def _host(base_url: str | None) -> str:
    if not base_url:
        return "the default API host"
    parts = urlsplit(base_url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")
