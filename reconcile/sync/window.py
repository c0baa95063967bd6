"""One stream's pass: its window of closed positions read from the exchange, upserted into
hg_trading_order a page at a time, then charged, with the figures counted into the run's
:class:`SyncSummary`.

A poll fetches from the stream's cursor minus ``overlap`` to now (a new stream, or one whose
cursor is older than ``lookback``, from now − lookback). A window is upserted a page of records at
a time, in a constant number of statements per page: one plain read of the page's bindings and
candidate orders (no locking reads: on upstream's indexes the locking reads of range conditions
deadlocked concurrent streams), a decision in memory by the matching rules
(:mod:`reconcile.sync.matching`), and one write transaction - inserted orders, closed orders
(``UPDATE … WHERE status = 1``: an order the engine closed meanwhile makes the page start again
from its read), filled-in fields and the bindings, whose unique keys decide races between
instances. A page refused as a whole is retried in halves, down to one record; a temporary
failure fails the stream. The cursor the pass returns moves only past what was committed.

A charged order's realized_profit is never rewritten: a different figure from the exchange is
logged as ``profit mismatch`` and, with ``corrections`` ``adjust``, corrected by an entry
(:mod:`reconcile.charging.corrections`) once the window's charges ran. Orders closed or inserted
here with a profit go to the consumer in pages with source ``history``. See
docs/architecture.md."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any

import structlog

from reconcile.charging.consumer import PowerConsumer
from reconcile.charging.corrections import CorrectionMode, Corrector
from reconcile.charging.outcomes import Outcome, Source
from reconcile.errors import DatabaseError, DuplicateKey, ReconcileError, TemporaryError
from reconcile.records import ClosedPosition, ClosedPositionSource, ProfitBasis
from reconcile.storage.contract import LiveSchema, inspect_live
from reconcile.storage.db import Database
from reconcile.sync import quarantine
from reconcile.sync.matching import Decision, Kind, Rule, Tolerances
from reconcile.sync.roster import Cursor, Stream
from reconcile.sync.settings import SyncSettings
from reconcile.sync.upsert import Conflict, PageResult, PageWriter

log = structlog.get_logger("reconcile.history")

PAGE_ATTEMPTS = 3  # reads and decisions of one page before it is split


@dataclass
class SyncSummary:
    streams: int = 0
    requests: int = 0
    records: int = 0
    inserted: int = 0
    closed: int = 0
    matched: int = 0
    parts: int = 0
    ambiguous: int = 0
    not_closable: int = 0
    charged: int = 0
    skipped_duplicate: int = 0
    corrected: int = 0
    would_charge: int = 0  # shadow mode
    failed_streams: int = 0
    skipped_streams: int = 0
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failed_streams == 0

    def figures(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def count(self, decisions: list[Decision]) -> None:
        for d in decisions:
            if d.rule is Rule.INSERT:
                self.inserted += 1
            elif d.rule is Rule.OPEN:
                self.closed += 1
            elif d.rule is Rule.NOT_CLOSABLE:
                self.not_closable += 1
            elif d.kind is Kind.PART:
                self.parts += 1
            elif d.kind is Kind.AMBIGUOUS:
                self.ambiguous += 1
            else:
                self.matched += 1


class StreamWindow:
    """Runs one stream's window (or a given set of its records) through the matching rules,
    the page writes and the consumer."""

    def __init__(
        self,
        db: Database,
        consumer: PowerConsumer,
        settings: SyncSettings,
        *,
        schema: LiveSchema | None = None,
    ) -> None:
        self.db = db
        self.consumer = consumer
        self.settings = settings
        self.schema = schema
        adjust = settings.corrections is CorrectionMode.ADJUST
        self.corrector = Corrector(db, consumer.rules, consumer.lines) if adjust else None

    async def sync(
        self,
        stream: Stream,
        cursor: Cursor | None,
        source: ClosedPositionSource,
        basis: ProfitBasis,
        summary: SyncSummary,
    ) -> tuple[datetime, list[str]]:
        """The stream's window from ``cursor`` to now, upserted and charged; the cursor to write
        (by the caller, with the account's others, once every stream ran)."""
        now = datetime.now(UTC)
        floor = now - self.settings.lookback
        since = floor if cursor is None or cursor[0] < floor else cursor[0] - self.settings.overlap
        window = await source.fetch_closed(stream.symbol, since, now)
        records = window.records
        # kept under the stream's own symbol, never blocking the stream
        await quarantine.store(self.db, [replace(u, symbol=stream.symbol) for u in window.unusable])
        summary.records += len(records)
        # the records at the cursor's instant that the last cycle committed are done
        done = {(cursor[0], key) for key in cursor[1]} if cursor is not None else set()
        todo = [r for r in records if (r.close_time, r.record_key) not in done]
        pages: list[PageResult] = []
        schema = await self._schema()
        size = self.settings.page_size
        for start in range(0, len(todo), size):
            page = todo[start : start + size]
            pages.extend(await self._upsert_page(stream, page, basis, schema, summary))
        # charged in pages once the window's orders are recorded (the sweep is the backstop)
        await self._charge_and_correct(pages, basis, summary)
        newest = max((r.close_time for r in records), default=None)
        complete_until = now if newest is None or newest < now else newest
        keys = sorted(r.record_key for r in records if r.close_time == complete_until)
        return complete_until, keys

    async def reconcile(
        self,
        stream: Stream,
        records: list[ClosedPosition],
        basis: ProfitBasis,
        summary: SyncSummary,
    ) -> None:
        """``records`` of the stream upserted as one page and charged; no cursor moves."""
        pages = await self._upsert_page(stream, records, basis, await self._schema(), summary)
        await self._charge_and_correct(pages, basis, summary)

    async def _charge_and_correct(
        self, pages: list[PageResult], basis: ProfitBasis, summary: SyncSummary
    ) -> None:
        """Charge what the pages closed or inserted, then (``adjust``) correct the charges whose
        profit the exchange reports differently."""
        order_ids = [i for p in pages for i in p.to_charge]
        batch = await self.consumer.charge_many(order_ids, Source.HISTORY)
        # an order the consumer could not charge is logged there and left for the sweep
        for result in batch.results:
            if result.outcome is Outcome.CHARGED:
                summary.charged += 1
            elif result.outcome is Outcome.SKIPPED_DUPLICATE:
                summary.skipped_duplicate += 1
            elif result.outcome is Outcome.WOULD_CHARGE:
                summary.would_charge += 1
        if self.corrector is not None:
            sightings = [s for p in pages for s in p.sightings(basis)]
            summary.corrected += len(await self.corrector.apply(sightings))

    async def _schema(self) -> LiveSchema:
        if self.schema is None:  # introspected once, at the first cycle
            self.schema = await self.db.transaction(inspect_live, what="inspect the schema")
        return self.schema

    # -- one page of records ------------------------------------------------------------------

    async def _upsert_page(
        self,
        stream: Stream,
        page: list[ClosedPosition],
        basis: ProfitBasis,
        schema: LiveSchema,
        summary: SyncSummary,
    ) -> list[PageResult]:
        """Upsert a page; what it wrote (each half's, if it was split). A page that keeps
        conflicting or that the database refuses (a permanent error) is split in halves down to
        single records. A temporary failure, already retried whole by the database layer,
        fails the stream at once: the cursor holds and the next cycle reads the window again."""
        tolerances = Tolerances(self.settings.match_tolerance)
        writer = PageWriter(self.db, stream.ref(), basis, schema, tolerances)
        for attempt in range(1, PAGE_ATTEMPTS + 1):
            try:
                result = await writer.run(page)
            except (DuplicateKey, Conflict) as exc:
                # another writer (an instance, the engine) changed what the page read: read again
                log.info(
                    "history page conflict",
                    account_id=stream.account_id,
                    symbol=stream.symbol,
                    records=len(page),
                    attempt=attempt,
                    detail=str(exc)[:200],
                )
                continue
            except TemporaryError:
                raise
            except ReconcileError:
                if len(page) == 1:
                    raise
                break
            summary.count(result.decisions)
            return [result]
        if len(page) == 1:
            raise DatabaseError(
                f"record {page[0].record_key} of account {stream.account_id}: still conflicting "
                f"after {PAGE_ATTEMPTS} attempts"
            )
        half = len(page) // 2
        first = await self._upsert_page(stream, page[:half], basis, schema, summary)
        return first + await self._upsert_page(stream, page[half:], basis, schema, summary)


__all__ = ["PAGE_ATTEMPTS", "StreamWindow", "SyncSummary"]
