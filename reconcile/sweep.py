"""The compensation sweep: charge closed, profitable, unconsumed orders of the look-back window.

Oldest first, a page at a time (never the whole backlog in memory), each page one transaction of
the consumer. Keyset paging on (close_time, id) over ``idx_reconcile_sweep`` means each candidate
is read once per sweep - losing orders, which stay at ``power_consumed = 0`` forever, are passed
over once instead of being re-scanned on every page. On MariaDB >= 10.6 / MySQL 8 the pages are
locked with ``SKIP LOCKED``, so concurrent sweeps share the backlog instead of queueing.

A page that fails for a reason other than a temporary database failure is charged again order by
order, so one bad order never blocks the rest of its page.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

import structlog

from reconcile.consumer import ChargeResult, Outcome, PowerConsumer, Source
from reconcile.errors import ReconcileError, TemporaryError

log = structlog.get_logger("reconcile.sweep")

PROGRESS_EVERY = 5.0  # seconds between progress events of a long sweep


@dataclass
class SweepSummary:
    charged: int = 0
    skipped_duplicate: int = 0
    not_eligible: int = 0
    failed: int = 0
    pages: int = 0
    elapsed: float = 0.0
    interrupted: bool = False
    error: str | None = None

    def count(self, result: ChargeResult) -> None:
        if result.outcome is Outcome.CHARGED:
            self.charged += 1
        elif result.outcome is Outcome.SKIPPED_DUPLICATE:
            self.skipped_duplicate += 1
        else:
            self.not_eligible += 1

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.error is None


async def sweep(
    consumer: PowerConsumer,
    *,
    lookback: timedelta,
    page_size: int = 500,
    source: Source = Source.SWEEP,
    stop: asyncio.Event | None = None,
) -> SweepSummary:
    """One compensation pass over orders closed within ``lookback``. Logs one summary event."""
    started = time.monotonic()
    summary = SweepSummary()
    since = consumer.db.to_db_time(datetime.now(UTC) - lookback)
    after: tuple[datetime, int] = (since, 0)
    next_progress = started + PROGRESS_EVERY
    try:
        while not (stop is not None and stop.is_set()):
            seen: list[tuple[datetime, int]] = []
            try:
                results = await consumer.charge_page(
                    since=since, after=after, limit=page_size, source=source, seen=seen
                )
            except TemporaryError:
                raise
            except ReconcileError as exc:
                if not seen:
                    raise
                log.warning(
                    "sweep page failed; charging its orders one by one",
                    orders=len(seen),
                    error=str(exc),
                )
                results = await _one_by_one(consumer, [oid for _, oid in seen], source, summary)
            if not seen:
                break
            summary.pages += 1
            after = seen[-1]
            for result in results:
                summary.count(result)
            if time.monotonic() >= next_progress:
                next_progress = time.monotonic() + PROGRESS_EVERY
                log.info(
                    "sweep progress",
                    source=str(source),
                    position=str(after[0]),
                    **_figures(summary, started),
                )
        else:
            summary.interrupted = True
    except ReconcileError as exc:
        summary.error = f"{type(exc).__name__}: {exc}"
        log.error("sweep aborted", source=str(source), error=summary.error, will_retry="next run")
    summary.elapsed = round(time.monotonic() - started, 3)
    log.info("sweep summary", source=str(source), **_figures(summary, started))
    return summary


async def _one_by_one(
    consumer: PowerConsumer, order_ids: list[int], source: Source, summary: SweepSummary
) -> list[ChargeResult]:
    results: list[ChargeResult] = []
    for order_id in order_ids:
        try:
            results.append(await consumer.charge(order_id, source))
        except ReconcileError as exc:
            summary.failed += 1
            log.error(
                "charge failed",
                order_id=order_id,
                source=str(source),
                error=f"{type(exc).__name__}: {exc}",
                will_retry="next sweep",
            )
    return results


def _figures(summary: SweepSummary, started: float) -> dict[str, object]:
    figures = asdict(summary)
    figures["elapsed"] = round(time.monotonic() - started, 3)
    return {k: v for k, v in figures.items() if v is not None}
