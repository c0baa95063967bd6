"""The ``exchanges:`` section of config.yaml: a platform listed is a platform enabled.

::

    exchanges:
      binance:
        timeout: 10s
        retry: {attempts: 4, initial: 500ms, max: 10s, retry_after_max: 60s}
        max_concurrent_requests: 4
        profit_basis: net          # net (default) | gross
        cooldown: 15m              # after a permanent refusal (bad key, permission, symbol)
        options: {}                # merged into ccxt's exchange options
        # rate_limit: 50ms         # ccxt rateLimit override (per unit of endpoint cost)
        # api_key_env: BINANCE_API_KEY   # names of environment variables; when given they
        # secret_env: BINANCE_SECRET     # replace the credentials stored in hg_trading_api_config
        budget_share: 0.4          # the daemon's part of each budget (the rest: the engine's)
        # budget: {limit: 2400, window: 60s}     # per IP (egress): replaces the platform's own
        # account_budget: {limit: 10, window: 2s}  # per account (UID): replaces the platform's
        # base_url: https://fapi.binance.com   # every account of the platform calls this host
        # use_account_base_url: false          # honour hg_trading_api_config.base_url (the engine
        #                                      # ignores it; so do we unless this is true)
      okx: {passphrase_env: OKX_PASSPHRASE, api_key_env: OKX_KEY, secret_env: OKX_SECRET}
      replay:
        path: demo/closed_positions.jsonl

    proxy:                         # where exchange requests leave through
      source: database             # database: hg_trading_proxy_config's global row, as the engine
                                   # (none there: direct) | config: the fields below | none
      # type: socks5               # socks5 | http
      # address: 127.0.0.1:10808   # host:port
      # username: reconcile
      # password_env: TOOGO_PROXY_PASSWORD   # the name of a variable holding the password

``ExchangesConfig.adapter_options()`` gives ``exchange_adapters`` its plain options.
See docs/configuration.md.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator, model_validator

from daemon.durations import Duration
from exchange_adapters.budgets import DEFAULT_SHARE
from exchange_adapters.options import (
    REPLAY,
    AdapterOptions,
    BudgetOptions,
    CredentialEnv,
    Platform,
    RetryOptions,
)
from reconcile.errors import ConfigError
from reconcile.records import ProfitBasis, Proxy, Secret
from reconcile.sync.accounts import parse_address

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExchangeRetryConfig(_Model):
    """Retries of one exchange request (the first try counts as an attempt)."""

    attempts: int = Field(4, ge=1, le=20)
    initial: Duration = timedelta(milliseconds=500)
    max: Duration = timedelta(seconds=10)
    retry_after_max: Duration = timedelta(seconds=60)

    @model_validator(mode="after")
    def _ordered(self) -> ExchangeRetryConfig:
        if self.initial > self.max:
            raise ValueError("initial must not exceed max")
        return self


class BudgetConfig(_Model):
    """One budget as the exchange states it: ``limit`` per ``window``, the daemon's ``share``."""

    limit: float = Field(gt=0)
    window: Duration
    share: float | None = Field(None, gt=0, le=1)

    @field_validator("window")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("window must be positive")
        return value

    def options(self, default_share: float) -> BudgetOptions:
        share = self.share if self.share is not None else default_share
        return BudgetOptions(limit=self.limit, window=self.window.total_seconds(), share=share)


class ExchangeConfig(_Model):
    """Options of one platform, ``exchanges.<platform>``."""

    options: dict[str, Any] = Field(default_factory=dict)
    timeout: Duration = timedelta(seconds=10)
    retry: ExchangeRetryConfig = ExchangeRetryConfig()
    max_concurrent_requests: int = Field(4, ge=1, le=64)
    profit_basis: ProfitBasis = ProfitBasis.NET
    cooldown: Duration = timedelta(minutes=15)
    rate_limit: Duration | None = None
    api_key_env: str | None = None
    secret_env: str | None = None
    passphrase_env: str | None = None
    path: Path | None = None
    base_url: str | None = None
    use_account_base_url: bool = False
    budget_share: float = Field(DEFAULT_SHARE, gt=0, le=1)
    budget: BudgetConfig | None = None
    account_budget: BudgetConfig | None = None

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{value!r} is not an http(s) URL with a host")
        return value

    @field_validator("api_key_env", "secret_env", "passphrase_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.match(value):
            raise ValueError(
                f"{value!r} is not an environment variable name (give the name, not the value)"
            )
        return value

    def adapter_options(self) -> AdapterOptions:
        names = (self.api_key_env, self.secret_env, self.passphrase_env)
        return AdapterOptions(
            ccxt_options=dict(self.options),
            timeout=self.timeout.total_seconds(),
            retry=RetryOptions(
                attempts=self.retry.attempts,
                initial=self.retry.initial.total_seconds(),
                maximum=self.retry.max.total_seconds(),
                retry_after_max=self.retry.retry_after_max.total_seconds(),
            ),
            max_concurrent_requests=self.max_concurrent_requests,
            profit_basis=self.profit_basis,
            cooldown=self.cooldown.total_seconds(),
            credentials_env=CredentialEnv(*names) if any(names) else None,
            rate_limit_ms=(
                max(1, round(self.rate_limit.total_seconds() * 1000))
                if self.rate_limit is not None
                else None
            ),
            path=self.path,
            base_url=self.base_url,
            account_base_url=self.use_account_base_url,
            budget_share=self.budget_share,
            budget=self.budget.options(self.budget_share) if self.budget else None,
            account_budget=(
                self.account_budget.options(self.budget_share) if self.account_budget else None
            ),
        )


class ExchangesConfig(RootModel[dict[Platform, ExchangeConfig]]):
    """``exchanges:``: platform -> options. A listed platform is enabled (``binance: {}`` or a
    bare ``binance:`` enables it with the defaults)."""

    model_config = ConfigDict(frozen=True)

    root: dict[Platform, ExchangeConfig] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _bare_entries(cls, data: Any) -> Any:
        if data is None:
            return {}
        if isinstance(data, dict):
            return {key: ({} if value is None else value) for key, value in data.items()}
        return data

    @model_validator(mode="after")
    def _per_platform_rules(self) -> ExchangesConfig:
        for platform, config in self.root.items():
            if platform == REPLAY:
                if config.path is None:
                    raise ValueError("replay: path is required (a JSON Lines/CSV file or folder)")
                credentials = (config.api_key_env, config.secret_env, config.passphrase_env)
                if config.options or any(credentials):
                    raise ValueError("replay: options and credentials do not apply")
            elif config.path is not None:
                raise ValueError(f"{platform}: path applies to replay only")
        return self

    def __iter__(self) -> Iterator[str]:  # type: ignore[override]
        return iter(self.enabled())

    def __contains__(self, platform: object) -> bool:
        return platform in self.root

    def __getitem__(self, platform: str) -> ExchangeConfig:
        return self.root[platform]  # type: ignore[index]

    def enabled(self) -> tuple[str, ...]:
        return tuple(platform.value for platform in self.root)

    def adapter_options(self) -> dict[str, AdapterOptions]:
        """Plain options per enabled platform, for ``exchange_adapters.ExchangeRegistry``."""
        return {p.value: config.adapter_options() for p, config in self.root.items()}


class ProxyConfig(_Model):
    """``proxy:``: where exchange requests leave through.

    ``source: database`` (default) uses the engine's own global proxy from
    ``hg_trading_proxy_config``, so the daemon leaves through the same egress as the engine;
    ``config`` uses the fields here (overriding the database); ``none`` goes direct.
    """

    source: Literal["database", "config", "none"] = "database"
    type: Literal["socks5", "http"] | None = None
    address: str | None = None
    username: str | None = None
    password_env: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> ProxyConfig:
        given = [n for n in ("type", "address", "username", "password_env") if getattr(self, n)]
        if self.source != "config":
            if given:
                raise ValueError(f"{', '.join(given)}: apply only with source: config")
            return self
        if self.type is None or self.address is None:
            raise ValueError("source: config needs type and address")
        parse_address(self.address, field="proxy.address")
        if self.password_env is not None:
            if not _ENV_NAME.match(self.password_env):
                raise ValueError(f"password_env: {self.password_env!r} is not a variable name")
            if not self.username:
                raise ValueError("password_env needs username")
        return self

    def configured(self, environ: Mapping[str, str] | None = None) -> Proxy | None:
        """The proxy this section names (``source: config``), its password read now."""
        if self.source != "config" or self.type is None or self.address is None:
            return None
        host, port = parse_address(self.address, field="proxy.address")
        password = None
        if self.password_env is not None:
            env = os.environ if environ is None else environ
            value = env.get(self.password_env)
            if value is None:
                raise ConfigError(
                    f"proxy.password_env: environment variable {self.password_env} is not set"
                )
            password = Secret(value)
        return Proxy(self.type, host, port, self.username or None, password, origin="config")
