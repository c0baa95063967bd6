"""Wiring: open the database, check the schema, resolve the power rules, build the consumer.

What the daemon adds to the core is passed in here, once, through constructors: the log
back-pressure as the database's pause, the attempt timeout and the availability monitor ``run``
asks for (daemon.service), and the batched audit-line sink the consumer writes through. Nothing
is installed into reconcile's modules, and nothing is changed after it is built.

See docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace

import structlog

from daemon.config import Config
from daemon.logs import BatchedLines, drain_backpressure
from exchange_adapters.options import REPLAY
from reconcile.charging.consumer import PowerConsumer
from reconcile.charging.corrections import CorrectionMode
from reconcile.charging.outcomes import PowerMode
from reconcile.charging.price_inputs import load_power_rules
from reconcile.charging.pricing import PowerRules
from reconcile.charging.trades import TradeJudge
from reconcile.errors import ConfigError
from reconcile.records import Proxy
from reconcile.storage.contract import LiveSchema, ensure_schema, future_order_times
from reconcile.storage.db import Database
from reconcile.storage.pacing import Availability
from reconcile.sync.accounts import load_proxy
from reconcile.sync.history import HistorySync
from reconcile.sync.settings import SyncSettings

log = structlog.get_logger("daemon")


@dataclass
class Core:
    db: Database
    consumer: PowerConsumer
    schema: LiveSchema


def database(
    config: Config,
    *,
    attempt_timeout: float | None = None,
    availability: Availability | None = None,
) -> Database:
    """The database as the daemon builds it: before each transaction it waits out a stalled log
    reader (``daemon.logs.drain_backpressure``). ``attempt_timeout`` and ``availability``: see
    ``reconcile.storage.db.Database``."""
    return Database(
        config.database_settings(),
        pause=drain_backpressure,
        attempt_timeout=attempt_timeout,
        availability=availability,
    )


@asynccontextmanager
async def open_core(
    config: Config,
    *,
    require_schema: bool = True,
    attempt_timeout: float | None = None,
    availability: Availability | None = None,
    schema: LiveSchema | None = None,
    rules: PowerRules | None = None,
) -> AsyncIterator[Core]:
    """The core, wired once. ``attempt_timeout`` bounds each transaction attempt on a server;
    ``availability`` is the monitor's view of the database, for transactions to wait on (both
    for ``run``; None for the one-shot commands). ``schema`` and ``rules``: what another process
    found already (a ``sweep`` worker's command, daemon.parallel), taken as they are instead of
    checking the schema and reading the power rules again."""
    async with AsyncExitStack() as stack:
        db = await stack.enter_async_context(
            database(config, attempt_timeout=attempt_timeout, availability=availability)
        )
        if schema is None:
            schema = await ensure_schema(db, require=require_schema)
            if require_schema and db.dialect.concurrent and config.database.timezone_check:
                wrong = await future_order_times(db)
                if wrong is not None:
                    raise ConfigError(
                        wrong + " (or set database.timezone_check: false to override)"
                    )
        if rules is None:
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
        consumer = PowerConsumer(db, rules, mode, judge, lines=BatchedLines())
        yield Core(db=db, consumer=consumer, schema=schema)


def sync_settings(config: Config) -> SyncSettings:
    enabled = frozenset(config.exchanges.enabled())
    charging = config.power.mode is PowerMode.CHARGE
    return SyncSettings(
        running_status=config.robots.running_status,
        lookback=config.sync.lookback,
        overlap=config.sync.overlap,
        match_tolerance=config.sync.match_tolerance,
        # auto: sized by the exchanges' budgets once the clients open (open_history_sync)
        concurrency=config.sync.concurrency if isinstance(config.sync.concurrency, int) else 8,
        # the poll schedule several daemons share (reconcile.sync.fleet)
        interval=config.schedule.history_sync,
        lease=config.sync.lease_for(config.schedule.history_sync),
        tick=config.sync.tick_for(config.schedule.history_sync),
        # a correction is a charge: in shadow and off modes the daemon writes none
        corrections=config.power.corrections if charging else CorrectionMode.LOG,
        # a replay source serves accounts of every platform not enabled on its own
        platforms=None if REPLAY in enabled else enabled,
    )


async def resolve_proxy(config: Config, db: Database) -> Proxy | None:
    """The proxy exchange requests leave through (``proxy.source``): the engine's global row in
    hg_trading_proxy_config, the configured one, or none. Read once, when the clients open: a
    changed row takes effect at the next start."""
    section = config.proxy
    if section.source == "none":
        return None
    if section.source == "config":
        proxy = section.configured()
    else:
        proxy = await load_proxy(db)
    if proxy is not None:
        log.info("exchange proxy", proxy=proxy.label)
    return proxy


@asynccontextmanager
async def open_history_sync(config: Config, core: Core) -> AsyncIterator[HistorySync]:
    """The history sync with its exchange clients; the clients close on exit."""
    # imported here: ccxt costs ~1.5 s to import, and most commands never need it
    from exchange_adapters.registry import ExchangeRegistry

    settings = sync_settings(config)
    proxy = await resolve_proxy(config, core.db)
    async with ExchangeRegistry(config.exchanges.adapter_options(), proxy=proxy) as registry:
        if config.sync.concurrency == "auto":
            settings = replace(settings, concurrency=registry.concurrency())
            log.info("sync concurrency", accounts_at_once=settings.concurrency, sized_by="budgets")
        yield HistorySync(core.db, core.consumer, registry, settings, schema=core.schema)
