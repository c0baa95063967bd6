"""``toogo-reconcile doctor``: is this installation able to run? One line per check.

Checks, in order: the configuration; the database (reachable; never shows a password); its
schema; time zones (``database.timezone`` against the server's clock); the API accounts'
credentials (an AES key is needed only when some value is ``ENC:``, and it must decrypt all of
them); the proxy exchange requests leave through (``proxy.source``: the engine's
``hg_trading_proxy_config`` row by default; its password is never shown); every configured
exchange, probed with a cheap public call (its markets) through that proxy, on the host the
account would call, with a warning for an account whose ``base_url`` names another API of that
exchange (a spot host for the futures client); the replay path, read and parsed. Each check
yields a :class:`Line`; a check that cannot run because an earlier one failed is skipped, not
failed.

Accounts examined: those of running robots (what the daemon polls), or with ``all_accounts``
every enabled account. Nothing is written anywhere: a SQLite file that does not exist yet is
not created, exchange calls are public and made once (no retries).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit

from daemon.config import Config
from exchange_adapters.base import CcxtAdapter
from exchange_adapters.clients import host_for
from exchange_adapters.errors import UnknownSymbol
from exchange_adapters.options import CCXT_PLATFORMS, REPLAY, AdapterOptions
from exchange_adapters.registry import ADAPTERS, ExchangeRegistry
from exchange_adapters.replay import read_file, replay_files
from exchange_adapters.symbols import to_unified
from reconcile.errors import ConfigError, ReconcileError
from reconcile.records import Proxy, Secret
from reconcile.storage import grants, retention
from reconcile.storage.contract import future_order_times
from reconcile.storage.db import Database, RetryPolicy
from reconcile.sync import quarantine
from reconcile.sync.accounts import ApiAccount, load_proxy
from reconcile.sync.credentials import (
    KEY_ENV,
    KEY_FILE,
    AesKey,
    aes_key_from_environment,
    decrypt_value,
    is_encrypted,
    is_upstream_default,
)
from reconcile.views.status import (
    SchemaStatus,
    schema_status,
    server_clock,
    server_version,
    stored_accounts,
    target,
)

#: the most the database's clock (read in database.timezone) may differ from ours
MAX_CLOCK_OFFSET = timedelta(seconds=5)
#: symbol probed on an exchange that has no robot symbol to check (only reachability counts)
PROBE_SYMBOL = "BTC/USDT:USDT"
_EXAMPLES = 3


class Mark(StrEnum):
    OK = "✓"
    FAIL = "✗"
    WARN = "!"  # worth knowing; does not fail the run
    SKIP = "-"  # could not or need not be checked


@dataclass(frozen=True)
class Line:
    mark: Mark
    name: str
    detail: str

    def render(self) -> str:
        return f"{self.mark} {self.name:<12} {self.detail}"


@dataclass
class _Account:
    account: ApiAccount
    stored: dict[str, str]
    symbols: list[str] = field(default_factory=list)


Emit = Callable[[Line], None]


class Doctor:
    """Runs the checks in order, handing each line to ``emit`` as soon as it is known."""

    def __init__(self, config: Config, emit: Emit, *, all_accounts: bool = False) -> None:
        self.config = config
        self._emit = emit
        self.all_accounts = all_accounts
        self.failed = False
        self.scope = "enabled account(s)" if all_accounts else "account(s) of running robots"

    def emit(self, mark: Mark, name: str, detail: str) -> None:
        self.failed |= mark is Mark.FAIL
        self._emit(Line(mark, name, detail))

    async def run(self) -> bool:
        """All checks; True when none failed."""
        accounts: list[_Account] | None = None
        self.proxy: Proxy | None = None
        self.proxy_ok = True
        async with self._database() as db:
            if db is not None:
                try:
                    tables = await self._schema(db)
                    await self._privileges(db)
                    await self._time_zone(db, tables)
                    await self._quarantine(db, tables)
                    if tables.has_quarantine:  # the own tables (the schema line says if not)
                        sizes = retention.describe(await retention.table_sizes(db))
                        self.emit(Mark.OK, "table sizes", f"own tables, rows (oldest): {sizes}")
                    if tables.has_accounts:
                        accounts = await self._accounts(db)
                    else:
                        self.emit(Mark.SKIP, "credentials", "not checked: no hotgo tables")
                except ReconcileError as exc:
                    self.emit(Mark.FAIL, "database", f"failed during the checks: {exc}")
            await self._proxy(db)
        self._credentials(accounts)
        await self._exchanges(accounts)
        return not self.failed

    # -- the database ---------------------------------------------------------------------------

    @asynccontextmanager
    async def _database(self) -> AsyncIterator[Database | None]:
        settings = dataclasses.replace(
            self.config.database_settings(), retry=RetryPolicy(attempts=1)
        )
        url = target(settings.url)
        if url.is_sqlite:
            where = url.sqlite_path
            if where is not None and not where.exists():
                self._fresh_sqlite(where)
                yield None
                return
            name = f"sqlite {where if where is not None else ':memory:'}"
        else:
            name = (
                f"{url.backend} {url.host or 'localhost'}:{url.port or 3306}"
                f"/{url.database or ''} as {url.username or '(no user)'}"
            )
        db = Database(settings)
        try:
            await db.open()
            version = await server_version(db)
        except ReconcileError as exc:
            await db.close()
            self.emit(Mark.FAIL, "database", f"{name}: cannot connect: {exc}")
            for check in ("schema", "time zone", "credentials"):
                self.emit(Mark.SKIP, check, "not checked: the database is unreachable")
            yield None
            return
        try:
            self.emit(Mark.OK, "database", f"{name}: connected ({version})")
            yield db
        finally:
            await db.close()

    def _fresh_sqlite(self, path: Path) -> None:
        directory = path.parent
        if directory.is_dir() and os.access(directory, os.W_OK | os.X_OK):
            self.emit(
                Mark.OK,
                "database",
                f"sqlite {path}: does not exist yet; created with its schema on first use",
            )
            self.emit(Mark.SKIP, "schema", "embedded SQLite: created on first use")
        else:
            self.emit(Mark.FAIL, "database", f"sqlite {path}: {directory} is not a writable folder")
            self.emit(Mark.SKIP, "schema", "not checked: no database")
        self._zone_only("embedded SQLite, no server clock")
        self.emit(Mark.SKIP, "credentials", "no database yet, so no API accounts")

    async def _schema(self, db: Database) -> SchemaStatus:
        """The schema line; which tables exist."""
        status = await schema_status(db)
        problems = status.problems
        if not problems:
            self.emit(
                Mark.OK,
                "schema",
                "ready: every column the daemon uses, uk_user_order, sweep index, own tables",
            )
        elif not db.dialect.concurrent:
            self.emit(Mark.OK, "schema", "embedded SQLite: the missing parts are created on use")
        else:
            self.emit(Mark.FAIL, "schema", "; ".join(problems))
        return status

    async def _privileges(self, db: Database) -> None:
        """The user's grants against the roles of ``reconcile.grants``."""
        found = await grants.privileges(db)
        if found is None:
            return  # the embedded SQLite has no users
        pg = db.dialect.is_postgresql
        v = grants.judge(found, grants.database_name(db), postgresql=pg)
        if v.missing:
            self.emit(Mark.FAIL, "privileges", f"{found.user} lacks {', '.join(v.missing)}")
        if v.superuser:
            self.emit(
                Mark.WARN, "privileges", "runs as a superuser: more than the runtime role needs"
            )
        elif v.role == "migration":
            self.emit(
                Mark.OK,
                "privileges",
                f"{found.user} matches the migration role (the "
                "runbook's); the daemon needs only `toogo-reconcile grants --role runtime`",
            )
        elif v.excess:
            self.emit(
                Mark.WARN,
                "privileges",
                f"{found.user} has more than the runtime role needs: {', '.join(v.excess)}",
            )
        elif v.role == "runtime":
            self.emit(Mark.OK, "privileges", f"{found.user}: exactly the runtime role")

    async def _quarantine(self, db: Database, tables: SchemaStatus) -> None:
        if not tables.has_quarantine:
            return  # before `migrate up`: the schema line says so
        waiting = await quarantine.unresolved_count(db)
        if waiting:
            self.emit(
                Mark.WARN,
                "quarantine",
                f"{waiting} unusable exchange record(s) wait: `toogo-reconcile exchange "
                "quarantine` lists them, `--retry` re-processes them",
            )
        else:
            self.emit(Mark.OK, "quarantine", "no unusable exchange record waits")

    # -- time ------------------------------------------------------------------------------------

    def _zone_only(self, why: str) -> None:
        zone = self.config.database.timezone
        self.emit(Mark.OK, "time zone", f"database.timezone {zone} ({why})")

    async def _time_zone(self, db: Database, tables: SchemaStatus) -> None:
        zone = self.config.database.timezone
        if not db.dialect.concurrent:
            self._zone_only("embedded SQLite, no server clock")
            return
        wrong = await future_order_times(db) if tables.has_orders else None
        if wrong is not None:
            self.emit(Mark.FAIL, "time zone", wrong)
            return
        before = time.time()
        server = await server_clock(db)
        ours = datetime.fromtimestamp((before + time.time()) / 2, UTC)
        server_now = db.from_db_time(server.now)  # NOW() read the way the daemon reads DATETIMEs
        clock = server.utc_now - ours  # UTC_TIMESTAMP(): clock skew alone
        offset = server_now - ours
        server_zone = server.zone
        if abs(offset) <= MAX_CLOCK_OFFSET:
            self.emit(
                Mark.OK,
                "time zone",
                f"database.timezone {zone}; server NOW() read in it is {_seconds(offset)} "
                f"from this host's clock (server time_zone {server_zone})",
            )
        elif abs(clock) <= MAX_CLOCK_OFFSET:
            self.emit(
                Mark.FAIL,
                "time zone",
                f"server NOW() read in database.timezone {zone} is {_seconds(offset)} from this "
                f"host's clock, though the clocks agree ({_seconds(clock)}): the server's "
                f"time_zone is {server_zone} - set database.timezone to the zone hotgo writes in",
            )
        else:
            self.emit(
                Mark.FAIL,
                "time zone",
                f"the database server's clock is {_seconds(clock)} from this host's "
                f"(NOW() read in {zone}: {_seconds(offset)}) - check NTP on both",
            )

    # -- accounts and credentials ----------------------------------------------------------------

    async def _accounts(self, db: Database) -> list[_Account]:
        running_status = self.config.robots.running_status
        return [
            _Account(account=a.account, stored=dict(a.stored), symbols=list(a.symbols))
            for a in await stored_accounts(db, running_status=running_status)
            if self.all_accounts or a.has_running_robots
        ]

    def _credentials(self, accounts: list[_Account] | None) -> None:
        if accounts is None:
            return
        encrypted = [
            (acct, name, value)
            for acct in accounts
            for name, value in acct.stored.items()
            if is_encrypted(value)
        ]
        try:
            key = aes_key_from_environment()
            key_error = None
        except ConfigError as exc:
            key, key_error = None, str(exc)
        where = f"{len(accounts)} {self.scope}"
        if key is not None and is_upstream_default(key):
            self.emit(
                Mark.WARN,
                "credentials",
                "the AES key is upstream Toogo's published default: anyone with read access to "
                "hg_trading_api_config can decrypt every API key and secret. Rotate it in hotgo "
                "(re-encrypt the accounts) and give this daemon the new one",
            )
        if not encrypted:
            state = "not configured"
            if key_error:
                state = f"unusable: {key_error}"
            elif key is not None:
                state = f"configured ({_key_source()})"
            self.emit(
                Mark.OK, "credentials", f"{where}, no ENC: values: AES key not needed ({state})"
            )
            for acct in accounts:
                acct.account = _with_secrets(acct, None)
            return
        owners = sorted({acct.account.id for acct, _, _ in encrypted})
        if key is None:
            self.emit(
                Mark.FAIL,
                "credentials",
                f"{len(encrypted)} ENC: value(s) in account(s) {_ids(owners)} but "
                + (key_error or f"no AES key: set {KEY_ENV} or the systemd credential {KEY_FILE}"),
            )
            return
        problems: list[str] = []
        for acct in accounts:
            try:
                acct.account = _with_secrets(acct, key)
            except ConfigError as exc:
                problems.append(str(exc))
        if problems:
            more = f" (and {len(problems) - _EXAMPLES} more)" if len(problems) > _EXAMPLES else ""
            self.emit(
                Mark.FAIL,
                "credentials",
                f"the AES key ({_key_source()}) fails: " + "; ".join(problems[:_EXAMPLES]) + more,
            )
        else:
            self.emit(
                Mark.OK,
                "credentials",
                f"{where}: the AES key ({_key_source()}) decrypts all {len(encrypted)} ENC: "
                "value(s)",
            )

    # -- the proxy -----------------------------------------------------------------------------

    async def _proxy(self, db: Database | None) -> None:
        section = self.config.proxy
        if section.source == "none":
            self.emit(Mark.OK, "proxy", "none (proxy.source: none): exchange requests go direct")
            return
        try:
            if section.source == "config":
                self.proxy = section.configured()
            elif db is None:
                self.emit(
                    Mark.SKIP,
                    "proxy",
                    "not checked: no database to read hg_trading_proxy_config from",
                )
                self.proxy_ok = False
                return
            else:
                self.proxy = await load_proxy(db)
        except ReconcileError as exc:
            self.proxy_ok = False
            self.emit(Mark.FAIL, "proxy", str(exc))
            return
        if self.proxy is None:
            self.emit(
                Mark.OK,
                "proxy",
                "none: hg_trading_proxy_config has no enabled global row (user_id 0, tenant_id 0),"
                " so the engine and the daemon go direct",
            )
        else:
            self.emit(Mark.OK, "proxy", f"{self.proxy.label}: every exchange request uses it")

    # -- exchanges ---------------------------------------------------------------------------------

    async def _exchanges(self, accounts: list[_Account] | None) -> None:
        enabled = self.config.exchanges.enabled()
        if not enabled:
            self.emit(
                Mark.WARN, "exchanges", "none enabled under exchanges: (history sync polls nothing)"
            )
        options = {
            platform: dataclasses.replace(
                opts, retry=dataclasses.replace(opts.retry, attempts=1), close_delay_ms=0
            )
            for platform, opts in self.config.exchanges.adapter_options().items()
        }
        if self.proxy_ok:
            await self._probe_all(options, accounts)
        else:
            for platform in (p for p in CCXT_PLATFORMS if p in enabled):
                self.emit(Mark.SKIP, platform, "not checked: the proxy is not known or usable")
        if REPLAY in enabled:
            await self._replay(accounts)
        others = sorted(
            {a.account.platform for a in accounts or []} - set(enabled) - {REPLAY}
        )  # platforms neither enabled nor served by replay
        if others and REPLAY not in enabled:
            ids = [a.account.id for a in accounts or [] if a.account.platform in others]
            self.emit(
                Mark.WARN,
                "exchanges",
                f"account(s) {_ids(ids)} on {', '.join(others)}: not enabled under exchanges: "
                "and no replay - their robots are skipped by the history sync",
            )

    async def _probe_all(
        self, options: dict[str, AdapterOptions], accounts: list[_Account] | None
    ) -> None:
        enabled = self.config.exchanges.enabled()
        async with ExchangeRegistry(options, proxy=self.proxy) as registry:
            for platform in (p for p in CCXT_PLATFORMS if p in enabled):
                mine = [a for a in accounts or [] if a.account.platform == platform]
                if accounts is None:
                    self.emit(Mark.SKIP, platform, "not checked: no accounts (database unusable)")
                elif not mine:
                    self.emit(Mark.SKIP, platform, f"enabled; none of the {self.scope} uses it")
                for acct in mine:
                    self.emit(*await self._probe(registry, platform, acct))
                    misroute = _misroute(platform, acct.account, options[platform])
                    if misroute:
                        self.emit(Mark.WARN, platform, misroute)

    async def _probe(
        self, registry: ExchangeRegistry, platform: str, acct: _Account
    ) -> tuple[Mark, str, str]:
        account = acct.account
        via = _host(host_for(registry.platforms[platform], account))
        through = f" through {self.proxy.label}" if self.proxy is not None else ""
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

    async def _replay(self, accounts: list[_Account] | None) -> None:
        path = self.config.exchanges[REPLAY].path
        if path is None:  # the config model requires it; kept for the type checker
            self.emit(Mark.FAIL, REPLAY, "exchanges.replay: path is required")
            return
        shown = path if path.is_absolute() else Path.cwd() / path

        def read() -> tuple[int, int]:
            files = replay_files(path)
            return len(files), sum(len(read_file(f)) for f in files)

        try:
            files, records = await asyncio.to_thread(read)
        except ConfigError as exc:
            self.emit(Mark.FAIL, REPLAY, str(exc))
            return
        enabled = set(self.config.exchanges.enabled())
        served = sorted(a.account.id for a in accounts or [] if a.account.platform not in enabled)
        serves = f"; serves account(s) {_ids(served)}" if served else ""
        self.emit(
            Mark.OK, REPLAY, f"{shown}: readable, {files} file(s), {records} record(s){serves}"
        )


# ------------------------------------------------------------------------------------------------


def _with_secrets(acct: _Account, key: AesKey | None) -> ApiAccount:
    where = f"hg_trading_api_config {acct.account.id}"
    stored = acct.stored

    def value(name: str) -> Secret:
        return decrypt_value(stored[name], key, field=f"{where} {name}")

    return acct.account.with_credentials(
        api_key=value("api_key"),
        secret=value("secret_key"),
        passphrase=value("passphrase") if stored["passphrase"] else None,
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


def _key_source() -> str:
    return KEY_ENV if os.environ.get(KEY_ENV) else f"$CREDENTIALS_DIRECTORY/{KEY_FILE}"


def _host(base_url: str | None) -> str:
    if not base_url:
        return "the default API host"
    parts = urlsplit(base_url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def _ids(ids: Sequence[int]) -> str:
    shown = ", ".join(str(i) for i in ids[:10])
    return shown + (f" (+{len(ids) - 10})" if len(ids) > 10 else "")


def _seconds(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    if abs(seconds) < 120:
        return f"{round(seconds, 1) or 0.0:+.1f}s"  # never "-0.0s"
    sign = "+" if seconds >= 0 else "-"
    minutes = round(abs(seconds) / 60)
    return f"{sign}{minutes // 60}h{minutes % 60:02d}m"
