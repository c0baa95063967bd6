"""The compensation sweep: charge closed, profitable, unconsumed orders of the look-back window.

Oldest first, a page at a time (never the whole backlog in memory), each page one transaction of
the consumer. Keyset paging on (close_time, id) over ``idx_reconcile_sweep`` means each candidate
is read once per sweep - losing orders, which stay at ``power_consumed = 0`` forever, are passed
over once instead of being re-scanned on every page. On MariaDB >= 10.6 / MySQL 8 the pages are
locked with ``SKIP LOCKED``, so concurrent sweeps share the backlog instead of queueing.
The consumer's ``power.mode`` says which passes run (``PowerConsumer.sweep_passes``): one over
``power_consumed = 0`` when charging; in shadow mode a second over ``power_consumed = 1``, the
orders hotgo's engine charged (reconcile.shadow); none when charging is off.

A page that fails for a reason other than a temporary database failure is charged again order by
order by the consumer, so one bad order never blocks the rest of its page; the orders that still
fail are counted here and left for the next sweep.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.charging.consumer import PowerConsumer
from reconcile.charging.orders import eligible_sql
from reconcile.charging.outcomes import Batch, ChargeResult, Outcome, Source
from reconcile.errors import ReconcileError
from reconcile.storage.schema import trading_order

log = structlog.get_logger("reconcile.sweep")

PROGRESS_EVERY = 5.0  # seconds between progress events of a long sweep


@dataclass(frozen=True)
class SweepSettings:
    """What a pass covers and how it goes (``sweep.*`` of the configuration)."""

    lookback: timedelta = timedelta(days=7)  # close_time within this of now
    page_size: int = 1000  # orders per transaction (BENCHMARKS.md: 500 drained 10-30 % slower)
    workers: int = 2  # pages in flight (MySQL with SKIP LOCKED; SQLite runs one)


@dataclass
class SweepSummary:  # counts of one pass; ``merge`` adds up the passes of several processes
    charged: int = 0
    skipped_duplicate: int = 0
    not_eligible: int = 0
    would_charge: int = 0  # shadow mode
    legs: int = 0  # closing legs of other rows' trades (reconcile.trades): never charged
    held: int = 0  # possibly legs, or awaiting the exchange sync: not charged yet
    failed: int = 0
    pages: int = 0
    elapsed: float = 0.0
    interrupted: bool = False
    error: str | None = None
    failed_ids: set[int] = field(default_factory=set, repr=False)

    def count(self, result: ChargeResult) -> None:
        if result.outcome is Outcome.CHARGED:
            self.charged += 1
        elif result.outcome is Outcome.SKIPPED_DUPLICATE:
            self.skipped_duplicate += 1
        elif result.outcome is Outcome.WOULD_CHARGE:
            self.would_charge += 1
        elif result.outcome is Outcome.LEG:
            self.legs += 1
        elif result.outcome is Outcome.HELD:
            self.held += 1
        else:
            self.not_eligible += 1

    def add(self, batch: Batch) -> None:
        for result in batch.results:
            self.count(result)
        fresh = set(batch.failed) - self.failed_ids  # a revisit may fail a failed order again
        self.failed_ids |= fresh
        self.failed += len(fresh)

    def merge(self, other: SweepSummary) -> None:
        self.charged += other.charged
        self.skipped_duplicate += other.skipped_duplicate
        self.not_eligible += other.not_eligible
        self.would_charge += other.would_charge
        self.legs += other.legs
        self.held += other.held
        self.failed += other.failed
        self.pages += other.pages
        self.interrupted |= other.interrupted
        self.error = self.error or other.error

    def figures(self) -> dict[str, object]:
        """The summary event's fields."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.repr}
        return {k: v for k, v in values.items() if v is not None}

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.error is None


async def sweep(
    consumer: PowerConsumer,
    settings: SweepSettings,
    *,
    partition: tuple[int, int] = (0, 1),
    source: Source = Source.SWEEP,
    stop: asyncio.Event | None = None,
    summary_event: str = "sweep summary",
    log_idle: bool = True,
) -> SweepSummary:
    """One compensation pass over orders closed within ``settings.lookback``. Logs one summary
    event.

    ``settings.workers`` pages are charged concurrently on separate connections (MySQL with SKIP
    LOCKED only; SQLite has one writer), so the database works on one page while the client
    prepares the next. Worker k takes the users with ``user_id % workers == k``, so the workers
    never queue behind each other's wallet locks; each keeps its own keyset position.
    ``partition=(k, n)`` restricts the whole pass to ``user_id % n == k`` (one of n processes,
    see ``daemon.parallel``); its workers subdivide it further.
    """
    started = time.monotonic()
    summary = SweepSummary()
    since = consumer.db.to_db_time(datetime.now(UTC) - settings.lookback)
    progress = _Progress(started)
    workers = max(1, settings.workers) if consumer.db.skip_locked else 1

    async def worker(part: tuple[int, int]) -> None:
        for consumed in consumer.sweep_passes:
            await one_pass(part, consumed)

    async def one_pass(part: tuple[int, int], consumed: int) -> None:
        position = (since, 0)
        while summary.error is None:
            if stop is not None and stop.is_set():
                summary.interrupted = True
                return
            try:
                page = await consumer.charge_page(
                    after=position,
                    limit=settings.page_size,
                    source=source,
                    partition=part,
                    power_consumed=consumed,
                )
            except ReconcileError as exc:  # temporary (retried whole already) or unreadable
                summary.error = f"{type(exc).__name__}: {exc}"
                return
            if not page.keys:
                return
            summary.pages += 1
            position = page.keys[-1]
            summary.add(page)
            # rows another transaction held (SKIP LOCKED) are passed over; see _leftovers
            done = {r.order_id for r in page.results} | set(page.failed)
            skipped.update({oid for _, oid in page.keys} - done)
            progress.maybe_log(summary, source, position)

    skipped: set[int] = set()
    k, n = partition
    await asyncio.gather(*(worker((k + n * i, n * workers)) for i in range(workers)))
    if skipped and summary.error is None and not summary.interrupted:
        await _leftovers(consumer, skipped, source, summary, stop)
    if summary.error is not None:
        log.error("sweep aborted", source=str(source), error=summary.error, will_retry="next run")
    summary.elapsed = round(time.monotonic() - started, 3)
    idle = summary.pages == 0 and summary.error is None
    # a frequent sweep that found nothing says so at debug level only
    emit = log.info if log_idle or not idle else log.debug
    emit(summary_event, source=str(source), **_figures(summary, started))
    return summary


async def backlog_at_least(consumer: PowerConsumer, settings: SweepSettings, orders: int) -> bool:
    """Whether at least ``orders`` eligible orders wait in the look-back (a bounded index range
    read: it stops at ``orders``)."""
    db = consumer.db
    since = db.to_db_time(datetime.now(UTC) - settings.lookback)
    o = trading_order.c
    found = (
        select(o.id)
        .where(*eligible_sql(db.dialect), o.close_time >= since)
        .limit(orders)
        .subquery()
    )

    async def count(conn: AsyncConnection) -> int:
        return int((await conn.execute(select(func.count()).select_from(found))).scalar_one())

    return await db.transaction(count, what="count the sweep backlog") >= orders


@dataclass
class _Progress:
    started: float
    next_at: float = 0.0

    def maybe_log(
        self, summary: SweepSummary, source: Source, position: tuple[datetime, int]
    ) -> None:
        now = time.monotonic()
        if now < (self.next_at or self.started + PROGRESS_EVERY):
            return
        self.next_at = now + PROGRESS_EVERY
        log.info(
            "sweep progress",
            source=str(source),
            position=str(position[0]),
            **_figures(summary, self.started),
        )


async def _leftovers(
    consumer: PowerConsumer,
    skipped: set[int],
    source: Source,
    summary: SweepSummary,
    stop: asyncio.Event | None,
) -> None:
    """Orders passed over because another transaction held them: most were that transaction's
    own charge; the rest (a rolled-back charge, a connection that died holding the lock, hotgo
    updating the row) are charged now, one by one, waiting for their locks."""
    pending = await consumer.unconsumed(sorted(skipped))
    if not pending or (stop is not None and stop.is_set()):
        return
    log.info("sweep revisits orders that were locked", orders=len(pending))
    try:
        # a page per transaction, waiting for the locks (most holders have committed by now)
        summary.add(await consumer.charge_many(pending, source))
    except ReconcileError as exc:
        error = f"{type(exc).__name__}: {exc}"
        summary.add(Batch(failed=dict.fromkeys(pending, error)))
        log.error(
            "charge failed",
            orders=len(pending),
            source=str(source),
            error=error,
            will_retry="next sweep",
        )


def _figures(summary: SweepSummary, started: float) -> dict[str, object]:
    return {**summary.figures(), "elapsed": round(time.monotonic() - started, 3)}
