"""``toogo-reconcile run``: the long-running daemon.

Five jobs on an APScheduler AsyncIOScheduler, each coalescing and never overlapping itself; a
failing job is logged and tried again at its next run without touching the others:

- the history sync (``schedule.history_sync``, 60 s); on MySQL/PostgreSQL its own loop of
  one-interval runs, each claiming due accounts from the schedule the daemons share
  (reconcile.sync.fleet) every ``sync.tick``;
- a realtime sweep of the last ``schedule.realtime_window`` of closes (``schedule.realtime_sweep``,
  5 s) - it charges what the engine's realtime call missed within seconds;
- the compensation sweep over ``sweep.lookback`` (``schedule.compensation_sweep``, 1 h);
- the ledger audit (``schedule.audit``, 15 min, first one interval after the start; null:
  none), for ``toogo_audit_violations``;
- the retention (``schedule.retention``, 1 h, first one interval after the start; null: none):
  prunes the daemon's own tables by ``retention:`` (reconcile.storage.retention) in small batches,
  then sets ``toogo_table_rows`` and ``toogo_table_oldest_seconds``.

systemd: READY=1 once the database answers and the scheduler runs; WATCHDOG=1 every half
``WATCHDOG_USEC`` only while the event loop turns and the database answers; STATUS= with the last
cycles' summary, led by the reason while the database is unavailable; STOPPING=1 on shutdown.

A database outage is one ``database down`` line, /healthz 503 and no WATCHDOG=1 (daemon.health);
the jobs wait for the database between transactions, each attempt bounded by
``ATTEMPT_TIMEOUT`` (docs/operations.md, "The database goes away").

SIGTERM/SIGINT stop taking new work, let the jobs in flight finish their current transaction
(bounded by ``shutdown_timeout``), then close the scheduler, the exchange clients and the pool;
exit 0. SIGHUP is not supported (logged): restart.

See docs/operations.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from daemon.config import Config
from daemon.health import keep_gauges, watch_database
from daemon.metrics import Metrics
from daemon.notify import Notifier, watchdog_interval
from daemon.runtime import Core, open_core, open_history_sync
from reconcile.charging.outcomes import PowerMode, Source
from reconcile.charging.sweep import SweepSettings, sweep
from reconcile.errors import ReconcileError
from reconcile.storage.pacing import Availability
from reconcile.storage.retention import Pruner, table_sizes
from reconcile.sync.history import HistorySync
from reconcile.views.audit import audit

log = structlog.get_logger("daemon.service")

Job = Callable[[], Awaitable[tuple[bool, str]]]
ATTEMPT_TIMEOUT = 60.0  # at least this long for one transaction attempt (see _attempt_timeout)


class Service:
    def __init__(self, config: Config, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.notifier = Notifier()
        self.stop = asyncio.Event()
        self._running: set[asyncio.Task[object]] = set()
        self._status: dict[str, str] = {}
        self._failed = False
        self._outage: str | None = None  # why the database is unavailable, while it is
        self._down_at = 0.0
        self._scheduler: AsyncIOScheduler | None = None
        compensation = config.sweep.settings()
        self._sweeps: dict[str, SweepSettings] = {
            "realtime_sweep": replace(compensation, lookback=config.schedule.realtime_window),
            "compensation_sweep": compensation,
        }

    # -- the two ways to run --------------------------------------------------------------------

    async def run_once(self) -> int:
        """One history sync of every stream plus one compensation sweep; 1 if anything failed."""
        async with AsyncExitStack() as stack:
            core = await stack.enter_async_context(
                open_core(self.config, attempt_timeout=self._attempt_timeout())
            )
            history = await stack.enter_async_context(open_history_sync(self.config, core))
            await self._job("history_sync", self._history(history))
            await self._job("compensation_sweep", self._sweep(core, "compensation_sweep"))
        return 1 if self._failed else 0

    async def run_forever(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        schedule = self.config.schedule
        # the database's state as the health loop sees it, once it runs (daemon.health)
        availability = Availability(monitored=False)
        async with AsyncExitStack() as stack:
            core = await stack.enter_async_context(
                open_core(
                    self.config,
                    attempt_timeout=self._attempt_timeout(),
                    availability=availability,
                )
            )
            history = await stack.enter_async_context(open_history_sync(self.config, core))
            # several daemons share the accounts through the database's poll schedule: the
            # history sync claims due accounts every tick, in runs of one interval back to back
            fleet = core.db.dialect.concurrent
            if self.metrics is not None:
                self.metrics.expect(platforms=self.config.exchanges)
                # the budgets' series exist at 0 from the start: a first 418 is an increase
                self.metrics.requests_made(history.provider)
                self.metrics.charging.set(int(self.config.power.mode is PowerMode.CHARGE))
            if self.metrics is not None and self.config.metrics.listen:
                runner = await self.metrics.serve(self.config.metrics.listen)
                stack.push_async_callback(runner.cleanup)
            scheduler = AsyncIOScheduler(timezone=UTC)
            jobs: dict[str, tuple[float, Callable[[], Job]]] = {
                "history_sync": (
                    schedule.history_sync.total_seconds(),
                    lambda: self._history(history),
                ),
                "realtime_sweep": (
                    schedule.realtime_sweep.total_seconds(),
                    lambda: self._sweep(core, "realtime_sweep"),
                ),
                "compensation_sweep": (
                    schedule.compensation_sweep.total_seconds(),
                    lambda: self._sweep(core, "compensation_sweep"),
                ),
            }
            if schedule.audit is not None:
                jobs["audit"] = (schedule.audit.total_seconds(), lambda: self._audit(core))
            if schedule.retention is not None:
                pruner = Pruner(
                    core.db, self.config.retention.settings(self.config.robots.running_status)
                )
                jobs["retention"] = (
                    schedule.retention.total_seconds(),
                    lambda: self._retention(pruner),
                )
            started = datetime.now(UTC)
            for name, (every, make) in jobs.items():
                if self.metrics is not None:
                    self.metrics.job_interval.labels(name).set(every)
                # the audit first runs one interval in: not beside the start's first sweep, and
                # not on the backlog of the downtime that sweep is about to charge
                late = name in ("audit", "retention")
                first = started + timedelta(seconds=every) if late else started
                if name == "history_sync" and fleet:
                    continue  # its own loop, below
                scheduler.add_job(
                    self._scheduled,
                    "interval",
                    args=(name, make),
                    id=name,
                    name=name,
                    seconds=every,
                    coalesce=True,
                    max_instances=1,
                    misfire_grace_time=None,
                    next_run_time=first,
                )
            scheduler.start()
            self._scheduler = scheduler
            self.notifier.send(READY="1", STATUS="running")
            log.info(
                "daemon started",
                jobs={k: v[0] for k, v in jobs.items()},
                watchdog=watchdog_interval(),
                metrics=self.config.metrics.listen,
            )
            health = watch_database(
                core.db, availability, self.notifier, self.metrics, self._database_changed
            )
            background = [asyncio.create_task(health)]
            if fleet:
                background.append(
                    asyncio.create_task(self._history_loop(history, schedule.history_sync))
                )
            if self.metrics is not None:
                gauges = keep_gauges(core.db, self.config, self.metrics)
                background.append(asyncio.create_task(gauges))
            await self.stop.wait()

            self.notifier.send(STOPPING="1", STATUS="stopping")
            # pause first: APScheduler's shutdown cancels the jobs running, and a job should
            # rather end its sweep between two pages, as the stop event asks it to
            scheduler.pause()
            await self._drain()
            if self._outage is not None:  # in-flight transactions would wait for no answer
                abandoned = core.db.abandon_in_flight()
                if abandoned:
                    log.warning("transactions abandoned at shutdown", transactions=abandoned)
            scheduler.shutdown(wait=False)
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
        log.info("daemon stopped")
        self.notifier.close()
        return 0

    def _attempt_timeout(self) -> float:
        """How long one transaction attempt may take before its connection is closed: a server
        that hangs must not hold a job forever. Generous: several lock waits fit in it."""
        return max(ATTEMPT_TIMEOUT, 3 * self.config.database.lock_wait_timeout.total_seconds())

    # -- jobs -------------------------------------------------------------------------------------

    async def _scheduled(self, name: str, make: Callable[[], Job]) -> None:
        if self.stop.is_set():
            return
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        try:
            await self._job(name, make())
        finally:
            if task is not None:
                self._running.discard(task)

    async def _job(self, name: str, work: Job) -> None:
        started = time.monotonic()
        with structlog.contextvars.bound_contextvars(job=name):
            try:
                ok, status = await work()
            except ReconcileError as exc:
                ok, status = False, f"failed: {type(exc).__name__}"
                log.error(
                    "job failed",
                    job=name,
                    error=f"{type(exc).__name__}: {exc}",
                    will_retry="next run",
                )
            except Exception as exc:  # a bug must not kill the daemon; it is logged loudly
                ok, status = False, f"failed: {type(exc).__name__}"
                log.exception(
                    "job failed", job=name, error=type(exc).__name__, will_retry="next run"
                )
        self._failed |= not ok
        if self.metrics is not None:
            self.metrics.job_done(name, time.monotonic() - started, ok)
        self._status[name] = status
        self._send_status()

    def _send_status(self) -> None:
        jobs = "; ".join(f"{k}: {v}" for k, v in sorted(self._status.items()))
        self.notifier.send(STATUS=f"{self._outage}; {jobs}" if self._outage else jobs or "running")

    async def _history_loop(self, history: HistorySync, span: timedelta) -> None:
        """The history sync on a shared database: runs of one interval (each claims due accounts
        every tick, see HistorySync.run_for), back to back until the stop; a run that ended
        early (it failed) is followed by the next one at its interval. Drained at shutdown
        like a scheduled job."""
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        try:
            while not self.stop.is_set():
                started = time.monotonic()
                await self._job("history_sync", self._history(history, span))
                rest = span.total_seconds() - (time.monotonic() - started)
                if rest > 0 and not self.stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stop.wait(), rest)
        finally:
            if task is not None:
                self._running.discard(task)

    def _history(self, history: HistorySync, span: timedelta | None = None) -> Job:
        async def work() -> tuple[bool, str]:
            try:
                if span is None:
                    s = await history.run_cycle(self.stop)
                else:
                    s = await history.run_for(span, self.stop)
            finally:
                if self.metrics is not None:
                    self.metrics.requests_made(history.provider)
            return s.ok, (
                f"{s.streams} streams, {s.inserted} inserted, {s.closed} closed, "
                f"{_charges(s.charged, s.would_charge)}, {s.failed_streams} failed"
            )

        return work

    def _sweep(self, core: Core, name: str) -> Job:
        settings = self._sweeps[name]
        quiet = name == "realtime_sweep"  # every few seconds: an idle pass says so at debug

        async def work() -> tuple[bool, str]:
            s = await sweep(
                core.consumer, settings, source=Source.SWEEP, stop=self.stop, log_idle=not quiet
            )
            return s.ok, (
                f"{_charges(s.charged, s.would_charge)}, {s.skipped_duplicate} duplicates, "
                f"{s.failed} failed"
            )

        return work

    def _audit(self, core: Core) -> Job:
        """The ledger invariants (``toogo-reconcile audit``), read in one snapshot; violations
        are a gauge per check and one warning, not a failed job (the audit itself worked)."""
        backlog_after = self.config.schedule.compensation_sweep

        async def work() -> tuple[bool, str]:
            # charged legs: those charged within the look-back (the whole history is the
            # `audit` command's and `migrate check`'s, run once after an upgrade)
            report = await audit(
                core.db, backlog_after=backlog_after, legs_within=self.config.sweep.lookback
            )
            violations = {c.name: c.violations for c in report.checks}
            if self.metrics is not None:
                for check, count in violations.items():
                    self.metrics.audit_violations.labels(check).set(count)
            if report.ok:
                log.info("audit clean", checks=len(violations))
                return True, "clean"
            failing = {k: v for k, v in violations.items() if v}
            log.warning("audit violations", violations=failing, action="run toogo-reconcile audit")
            return True, f"{sum(failing.values())} violations"

        return work

    def _retention(self, pruner: Pruner) -> Job:
        """Prunes the own tables in small batches (charges interleave between them; a stop
        ends it between two), then measures them for the gauges."""

        async def work() -> tuple[bool, str]:
            summary = await pruner.run(self.stop)
            if self.metrics is not None:
                self.metrics.table_sizes(await table_sizes(pruner.db))
            return True, f"{summary.total} rows pruned"

        return work

    # -- outages, shutdown -----------------------------------------------------------------------

    def _database_changed(self, healthy: bool, detail: str) -> None:
        """One line per change. While the database is down the scheduler is paused: a job in
        flight waits between its transactions, and no new run starts only to wait too (nor
        logs "skipped: maximum number of running instances reached" every interval). Runs
        missed meanwhile are coalesced into one when it resumes."""
        scheduler = None if self.stop.is_set() else self._scheduler
        if healthy:
            self._outage = None
            if scheduler is not None:
                scheduler.resume()
            log.info(
                "database back",
                down_for=round(time.monotonic() - self._down_at, 3),
                action="jobs resume where they waited",
            )
        else:
            if scheduler is not None:
                scheduler.pause()
            self._down_at = time.monotonic()
            self._outage = f"{detail} (since {datetime.now(UTC):%H:%M:%S} UTC)"
            log.error(
                "database down",
                detail=detail,
                action="jobs wait for it, scheduler paused; /healthz 503; watchdog withheld",
            )
        self._send_status()

    async def _drain(self) -> None:
        """Let jobs in flight finish their transaction; past the timeout, cancel them (their
        transactions are shielded and still commit or roll back as a whole)."""
        if not self._running:
            return
        timeout = self.config.shutdown_timeout.total_seconds()
        log.info("waiting for jobs in flight", jobs=len(self._running), timeout=timeout)
        _, pending = await asyncio.wait(set(self._running), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("jobs cancelled at shutdown", jobs=len(pending))
            await asyncio.gather(*pending, return_exceptions=True)

    def _on_stop(self, sig: signal.Signals) -> None:
        if not self.stop.is_set():
            log.info("shutdown requested", signal=sig.name)
            self.stop.set()

    def _on_hup(self) -> None:
        log.warning("SIGHUP ignored: configuration reload is not supported; restart the service")


def _charges(charged: int, would_charge: int) -> str:
    """A job's charges for the STATUS line: shadow mode's would-be charges where it has any."""
    return f"{would_charge} would charge" if would_charge else f"{charged} charged"
