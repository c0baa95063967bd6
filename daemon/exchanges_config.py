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
      okx: {passphrase_env: OKX_PASSPHRASE, api_key_env: OKX_KEY, secret_env: OKX_SECRET}
      replay:
        path: demo/closed_positions.jsonl

``ExchangesConfig.adapter_options()`` gives ``exchange_adapters`` its plain options.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator, model_validator

from daemon.durations import Duration
from exchange_adapters.options import (
    REPLAY,
    AdapterOptions,
    CredentialEnv,
    Platform,
    RetryOptions,
)
from reconcile.records import ProfitBasis

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
