"""Wiring: open the database, check the schema, resolve the power rules, build the consumer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from datetime import timedelta

import structlog

from daemon.config import Config
from exchange_adapters.options import REPLAY
from reconcile.consumer import PowerConsumer, PowerMode, load_power_rules
from reconcile.contract import LiveSchema, ensure_schema, future_order_times
from reconcile.corrections import CorrectionMode
from reconcile.db import Database
from reconcile.errors import ConfigError
from reconcile.history import HistorySync, SyncSettings
from reconcile.trades import TradeJudge

log = structlog.get_logger("daemon")


@dataclass
class Core:
    db: Database
    consumer: PowerConsumer
    schema: LiveSchema


@asynccontextmanager
async def open_core(config: Config, *, require_schema: bool = True) -> AsyncIterator[Core]:
    async with AsyncExitStack() as stack:
        db = await stack.enter_async_context(Database(config.database_settings()))
        schema = await ensure_schema(db, require=require_schema)
        if require_schema and db.dialect.concurrent and config.database.timezone_check:
            wrong = await future_order_times(db)
            if wrong is not None:
                raise ConfigError(wrong + " (or set database.timezone_check: false to override)")
        rules = await load_power_rules(db, config.power.override())
        log.debug(
            "power rules",
            consume_rate=rules.consume_rate,
            min_consume=rules.min_consume,
            vip_discount=rules.vip_discount,
        )
        mode = config.power.mode
        if mode is not PowerMode.CHARGE:
            log.info("power mode", mode=str(mode))
        # a row opened within the sync's match tolerance of another's close may be its leg
        judge = TradeJudge(
            db,
            tolerance=sync_settings(config).match_tolerance,
            running_status=config.robots.running_status,
        )
        yield Core(db=db, consumer=PowerConsumer(db, rules, mode, judge), schema=schema)


def sync_settings(config: Config) -> SyncSettings:
    enabled = frozenset(config.exchanges.enabled())
    charging = config.power.mode is PowerMode.CHARGE
    return SyncSettings(
        running_status=config.robots.running_status,
        lookback=config.sync.lookback,
        overlap=config.sync.overlap,
        match_tolerance=config.sync.match_tolerance,
        concurrency=config.sync.concurrency,
        # a correction is a charge: in shadow and off modes the daemon writes none
        corrections=config.power.corrections if charging else CorrectionMode.LOG,
        # a replay source serves accounts of every platform not enabled on its own
        platforms=None if REPLAY in enabled else enabled,
    )


@asynccontextmanager
async def open_history_sync(
    config: Config, core: Core, *, min_interval: timedelta = timedelta(0)
) -> AsyncIterator[HistorySync]:
    """The history sync with its exchange clients; the clients close on exit."""
    # imported here: ccxt costs ~1.5 s to import, and most commands never need it
    from exchange_adapters.registry import ExchangeRegistry

    settings = replace(sync_settings(config), min_interval=min_interval)
    async with ExchangeRegistry(config.exchanges.adapter_options()) as registry:
        yield HistorySync(core.db, core.consumer, registry, settings, schema=core.schema)
