"""What ``run`` watches beside its jobs: whether the database answers, and the gauges.

The database is checked every ``PROBE_EVERY`` (sooner when a transaction lost its connection),
with a ping given up after ``PROBE_TIMEOUT``. The checks drive the core's ``Availability``
(``reconcile.storage.pacing``), so jobs wait out an outage between their transactions instead of
failing; WATCHDOG=1 is sent only while the loop turns and the database answers; /healthz and
``toogo_database_up`` follow each check; a change of state is handed to the service (one line,
the scheduler paused or resumed). The gauges - backlog, quarantine, held rows, cursor lag - are
read every ``metrics.refresh`` while the database answers, on a task of their own: the checks
never wait on anything but the ping.

See docs/operations.md (the database goes away; shutdown and systemd notify).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

import structlog

from daemon.config import Config
from daemon.metrics import Metrics
from daemon.notify import Notifier, watchdog_interval
from reconcile.errors import ReconcileError
from reconcile.storage.db import Database
from reconcile.storage.pacing import Availability
from reconcile.views.status import read_gauges

log = structlog.get_logger("daemon.service")

GAUGES_TIMEOUT = 10.0  # a refresh that takes longer is given up (the next one tries again)
PROBE_EVERY = 0.25  # seconds between database checks: an outage shows within PROBE_EVERY + timeout
PROBE_TIMEOUT = 1.0  # a database that does not answer a ping within this is unavailable


async def watch_database(
    db: Database,
    availability: Availability,
    notifier: Notifier,
    metrics: Metrics | None,
    changed: Callable[[bool, str], None],
) -> None:
    """Check the database every PROBE_EVERY (sooner when a transaction lost its connection)
    and drive ``availability``, so jobs wait out an outage instead of failing; WATCHDOG=1 only
    while the loop turns and the database answers; ``changed(healthy, detail)`` once per change
    of state. Runs until cancelled; transactions wait for its verdicts only meanwhile."""
    interval = watchdog_interval()
    every = min(interval or PROBE_EVERY, PROBE_EVERY)
    next_beat = 0.0
    with availability.monitor():
        while True:
            try:
                await db.ping(give_up_after=PROBE_TIMEOUT)
                healthy, detail = True, "ok"
            except (ReconcileError, TimeoutError) as exc:
                reason = str(exc) if isinstance(exc, ReconcileError) else "no answer"
                healthy, detail = False, f"database unavailable: {type(exc).__name__}: {reason}"
            if availability.report(healthy, detail):
                changed(healthy, detail)
            now = time.monotonic()
            if healthy and interval is not None and now >= next_beat:
                notifier.send(WATCHDOG="1")
                next_beat = now + interval
            if metrics is not None:
                metrics.healthy, metrics.health_detail = healthy, detail
                metrics.database_up.set(1 if healthy else 0)
            await availability.woken(every)


async def keep_gauges(db: Database, config: Config, metrics: Metrics) -> None:
    """Every ``metrics.refresh`` (30 s) while the database answers, the backlog (count and
    oldest order), quarantine and cursor-lag gauges; a read that takes longer than
    GAUGES_TIMEOUT is given up until the next time."""
    while True:
        if metrics.healthy:
            await _refresh_gauges(db, config, metrics)
        await asyncio.sleep(config.metrics.refresh.total_seconds())


async def _refresh_gauges(db: Database, config: Config, metrics: Metrics) -> None:
    try:
        async with asyncio.timeout(GAUGES_TIMEOUT):
            gauges = await read_gauges(
                db,
                lookback=config.sweep.lookback,
                running_status=config.robots.running_status,
            )
    except (ReconcileError, TimeoutError) as exc:
        log.warning("metrics refresh failed", error=type(exc).__name__)
        return
    now = datetime.now(UTC)
    metrics.backlog.set(gauges.backlog)
    first = gauges.oldest_eligible
    metrics.backlog_age.set(max(0.0, (now - first).total_seconds()) if first else 0.0)
    metrics.quarantined.set(gauges.quarantined)
    metrics.held.set(gauges.held)
    metrics.cursor_lag.clear()  # a platform no longer polled has no lag, not its last one
    for platform, oldest in gauges.oldest_cursor.items():
        metrics.cursor_lag.labels(platform).set((now - oldest).total_seconds())
