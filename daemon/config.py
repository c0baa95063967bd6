"""The YAML configuration, validated by pydantic; unknown keys are errors.

Sources, strongest first: environment (``TOOGO_DATABASE_URL``, ``TOOGO_DATABASE_PASSWORD``),
the systemd credential ``$CREDENTIALS_DIRECTORY/db_password``, the YAML file
(``--config PATH``, env ``TOOGO_CONFIG``, default ``./config.yaml``), the defaults below.
See docs/configuration.md.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from daemon.durations import Duration
from daemon.durations import parse_duration as parse_duration  # re-exported
from daemon.exchanges_config import ExchangesConfig, ProxyConfig
from reconcile.charging.corrections import CorrectionMode
from reconcile.charging.outcomes import PowerMode
from reconcile.charging.pricing import PowerOverride
from reconcile.charging.sweep import SweepSettings
from reconcile.errors import ConfigError
from reconcile.records import Secret
from reconcile.storage.db import DatabaseSettings
from reconcile.storage.retention import RetentionSettings
from reconcile.storage.retries import RetryPolicy

DEFAULT_CONFIG = "config.yaml"


def _money(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(repr(value))  # 0.1 -> Decimal('0.1'), not the binary float's expansion
    return value


Money = Annotated[Decimal, BeforeValidator(_money)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetryConfig(_Model):
    attempts: int = Field(6, ge=1, le=50)
    initial: Duration = timedelta(milliseconds=50)
    max: Duration = timedelta(seconds=2)


class DatabaseConfig(_Model):
    url: str = "sqlite+aiosqlite:///toogo-reconcile.db"
    password: SecretStr | None = None
    timezone: str = "UTC"
    #: refuse to charge or sync when hotgo's newest order times lie in the future read in
    #: ``timezone`` (the zone is then wrong); false overrides the refusal
    timezone_check: bool = True
    lock_wait_timeout: Duration = timedelta(seconds=10)
    pool_size: int = Field(10, ge=1, le=100)
    retry: RetryConfig = RetryConfig()

    @field_validator("url")
    @classmethod
    def _known_backend(cls, url: str) -> str:
        if not re.match(
            r"^(mysql|mariadb)\+aiomysql://|^postgresql\+asyncpg://|^sqlite\+aiosqlite://", url
        ):
            raise ValueError(
                "must start with mysql+aiomysql://, postgresql+asyncpg:// or sqlite+aiosqlite://"
            )
        return url

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        from zoneinfo import ZoneInfo

        try:
            ZoneInfo(name)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"unknown time zone {name!r}") from exc
        return name

    def settings(self, *, drain_timeout: timedelta) -> DatabaseSettings:
        """``drain_timeout``: how long closing the pool waits for transactions in flight."""
        password = self.password.get_secret_value() if self.password is not None else None
        return DatabaseSettings(
            url=self.url,
            password=Secret(password) if password is not None else None,
            timezone=self.timezone,
            lock_wait_timeout=max(1, round(self.lock_wait_timeout.total_seconds())),
            pool_size=self.pool_size,
            drain_timeout=drain_timeout.total_seconds(),
            retry=RetryPolicy(
                attempts=self.retry.attempts,
                initial=self.retry.initial.total_seconds(),
                maximum=self.retry.max.total_seconds(),
            ),
        )


def _yaml_off(value: Any) -> Any:
    """``mode: off`` unquoted is YAML's boolean false: the operator meant ``off``."""
    return "off" if value is False else value


class PowerConfig(_Model):
    consume_rate: Money | None = Field(None, ge=0, le=Decimal("9.9999"))
    min_consume: Money | None = Field(None, ge=0)
    vip_discount: bool = True
    #: a charged order's profit revised by the exchange: ``log`` it, or ``adjust`` the charge
    corrections: CorrectionMode = CorrectionMode.LOG
    # charge: the daemon charges; shadow: records what it would charge while hotgo's engine
    # charges (reconcile.charging.shadow); off: reconciles orders only
    mode: Annotated[PowerMode, BeforeValidator(_yaml_off)] = PowerMode.CHARGE

    def override(self) -> PowerOverride:
        return PowerOverride(
            consume_rate=self.consume_rate,
            min_consume=self.min_consume,
            vip_discount=self.vip_discount,
        )


class SweepConfig(_Model):
    lookback: Duration = timedelta(days=7)
    page_size: int = Field(1000, ge=1, le=5000)
    workers: int = Field(2, ge=1, le=16)
    # "auto": one per core (at most 4) when the backlog is large; see process_count
    processes: Literal["auto"] | Annotated[int, Field(ge=1, le=16)] = "auto"

    def process_count(self) -> int | None:
        """The configured process count; None for ``auto`` (decided per pass)."""
        return None if self.processes == "auto" else self.processes

    def settings(self) -> SweepSettings:
        return SweepSettings(lookback=self.lookback, page_size=self.page_size, workers=self.workers)


class RobotsConfig(_Model):
    running_status: int = Field(2, ge=1, le=4)  # hg_trading_robot.status meaning "running"


class SyncConfig(_Model):
    lookback: Duration = timedelta(days=7)
    overlap: Duration = timedelta(minutes=10)
    match_tolerance: Duration = timedelta(seconds=120)
    #: accounts polled at once by one daemon; auto: sized by the exchanges' budgets
    concurrency: int | Literal["auto"] = Field("auto", union_mode="left_to_right")

    @field_validator("concurrency")
    @classmethod
    def _concurrency(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 256:
            raise ValueError("concurrency must be auto or 1-256")
        return value

    #: how long a daemon holds an account it claimed, renewed while its poll runs; a dead
    #: daemon's poll in flight is free again after it. Null: half of schedule.history_sync
    lease: Duration | None = None
    #: how often a daemon looks for due accounts. Null: 1 s, or a tenth of the interval if less
    tick: Duration | None = None

    def lease_for(self, interval: timedelta) -> timedelta:
        return self.lease if self.lease is not None else interval / 2

    def tick_for(self, interval: timedelta) -> timedelta:
        return self.tick if self.tick is not None else min(timedelta(seconds=1), interval / 10)


class ScheduleConfig(_Model):
    history_sync: Duration = timedelta(seconds=60)
    realtime_sweep: Duration = timedelta(seconds=5)
    realtime_window: Duration = timedelta(minutes=15)
    compensation_sweep: Duration = timedelta(hours=1)
    audit: Duration | None = timedelta(minutes=15)  # the ledger audit for the metrics; null: off
    retention: Duration | None = timedelta(hours=1)  # pruning of the own tables; null: off


class RetentionConfig(_Model):
    """How long the daemon's own tables keep what (docs/retention.md); null: forever."""

    record_raw: Duration | None = timedelta(days=90)  # an exchange record's raw payload
    records: Duration | None = timedelta(days=730)  # the record itself (and its order ids)
    skips: Duration | None = timedelta(days=90)  # toogo_reconcile_skip
    shadow: Duration | None = timedelta(days=90)  # toogo_reconcile_shadow
    quarantine: Duration | None = timedelta(days=90)  # resolved quarantine rows
    cursors: Duration | None = timedelta(days=30)  # cursors of streams no longer polled
    batch_size: int = Field(1000, ge=1, le=10000)
    pause: Duration = timedelta(milliseconds=50)  # between two batches

    def settings(self, running_status: int) -> RetentionSettings:
        return RetentionSettings(
            record_raw=self.record_raw,
            records=self.records,
            skips=self.skips,
            shadow=self.shadow,
            quarantine=self.quarantine,
            cursors=self.cursors,
            batch_size=self.batch_size,
            pause=self.pause,
            running_status=running_status,
        )


class MetricsConfig(_Model):
    listen: str | None = None  # e.g. "127.0.0.1:9108"; unset: no HTTP server
    refresh: Duration = timedelta(seconds=30)  # the gauges read from the database

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        _host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be host:port, e.g. 127.0.0.1:9108")
        return value


class LoggingConfig(_Model):
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class Config(_Model):
    database: DatabaseConfig = DatabaseConfig()
    power: PowerConfig = PowerConfig()
    sweep: SweepConfig = SweepConfig()
    robots: RobotsConfig = RobotsConfig()
    sync: SyncConfig = SyncConfig()
    exchanges: ExchangesConfig = ExchangesConfig()
    proxy: ProxyConfig = ProxyConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    retention: RetentionConfig = RetentionConfig()
    metrics: MetricsConfig = MetricsConfig()
    shutdown_timeout: Duration = timedelta(seconds=30)
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="after")
    def _sync_fits_the_interval(self) -> Self:
        """A lease outlasting the interval would let a dead daemon's accounts wait longer than
        one interval; a tick as long as the lease would claim too rarely to renew in time."""
        interval = self.schedule.history_sync
        lease, tick = self.sync.lease_for(interval), self.sync.tick_for(interval)
        if lease >= interval:
            raise ValueError(f"sync.lease ({lease}) must be shorter than schedule.history_sync")
        if tick >= lease:
            raise ValueError(f"sync.tick ({tick}) must be shorter than sync.lease ({lease})")
        return self

    @model_validator(mode="after")
    def _records_outlive_the_lookbacks(self) -> Self:
        """The charging rules read exchange records (their order ids) of every order the
        sweep or the sync may still look at: a record must outlive both look-backs."""
        keep = self.retention.records
        for name, lookback in (("sweep", self.sweep.lookback), ("sync", self.sync.lookback)):
            if keep is not None and keep <= lookback:
                raise ValueError(
                    f"retention.records ({keep}) must be longer than {name}.lookback ({lookback})"
                )
        return self

    def database_settings(self) -> DatabaseSettings:
        """The database's settings; closing the pool waits up to ``shutdown_timeout``."""
        return self.database.settings(drain_timeout=self.shutdown_timeout)


def config_path(given: str | None) -> Path:
    return Path(given or os.environ.get("TOOGO_CONFIG") or DEFAULT_CONFIG)


def load_config(path: Path, *, required: bool = True) -> Config:
    """Read, overlay the environment, validate.

    Raises ConfigError with one line naming the bad field.
    """
    data: Any = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        if required:
            raise ConfigError(
                f"config file {path} not found (use --config or TOOGO_CONFIG)"
            ) from exc
        text = ""
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{at}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    _overlay_environment(data)
    _anchor_paths(data, path.absolute().parent)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_first_error(exc, path)) from None


def _overlay_environment(data: dict[str, Any]) -> None:
    db = data.setdefault("database", {})
    if not isinstance(db, dict):
        return
    if url := os.environ.get("TOOGO_DATABASE_URL"):
        db["url"] = url
    password = os.environ.get("TOOGO_DATABASE_PASSWORD")
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if password is None and creds:
        file = Path(creds) / "db_password"
        if file.is_file():
            password = file.read_text(encoding="utf-8").rstrip("\n")
    if password is not None:
        db["password"] = password


def _anchor_paths(data: dict[str, Any], base: Path) -> None:
    """A relative replay path is relative to the config file's folder (not to the working
    directory, which systemd sets to the state directory)."""
    replay = (
        (data.get("exchanges") or {}).get("replay")
        if isinstance(data.get("exchanges"), dict)
        else None
    )
    if isinstance(replay, dict) and isinstance(replay.get("path"), str):
        given = Path(replay["path"])
        if not given.is_absolute():
            replay["path"] = str(base / given)


def _first_error(exc: ValidationError, path: Path) -> str:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{path}: {field}: {msg}{more}"
