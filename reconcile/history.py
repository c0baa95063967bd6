"""History sync: reconcile every running robot's closed positions into hg_trading_order.

Robots sharing an API account and a symbol form one **stream**: one request sequence however
many robots share it. Each account is polled by one instance at a time (MySQL ``GET_LOCK``, held
while its streams run; correctness never depends on it). Each stream keeps a cursor in
``toogo_reconcile_cursor``: the close time up to which it is known complete and the record keys
seen at that instant. A cycle fetches from the cursor minus ``overlap`` to now (a new stream, or
one whose cursor is older than ``lookback``, from now − lookback); the cursor advances only
after every record of the window is committed.

A window is upserted a page of records at a time, in a constant number of statements per page:
one plain read of the page's bindings and candidate orders (no locking reads: on upstream's
indexes the locking reads of range conditions deadlocked concurrent streams), a decision in
memory by the matching rules (:mod:`reconcile.matching`), and one write transaction - inserted
orders, closed orders (``UPDATE … WHERE status = 1``: an order the engine closed meanwhile makes
the page start again from its read), filled-in fields and the bindings, whose unique keys decide
races between instances. A page refused as a whole is retried in halves, down to one record; a
temporary failure fails the stream. The cursor moves only after the whole window is committed.

A charged order's realized_profit is never rewritten: a different figure from the exchange is
logged as ``profit mismatch`` and, with ``corrections`` ``adjust``, corrected by an entry
(reconcile.corrections) once the window's charges ran. Orders closed or inserted here with a
profit go to the consumer in pages with source ``history``. A robot owned by another user than
its account is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile import quarantine
from reconcile.accounts import load_account
from reconcile.consumer import Outcome, PowerConsumer, Source
from reconcile.contract import LiveSchema, inspect_live
from reconcile.corrections import CorrectionMode, Corrector
from reconcile.credentials import AesKey, aes_key_from_environment
from reconcile.db import Database, map_db_errors
from reconcile.errors import (
    ConnectionLost,
    DatabaseError,
    DuplicateKey,
    PermanentError,
    ReconcileError,
    TemporaryError,
)
from reconcile.matching import Decision, Kind, Rule, Tolerances
from reconcile.records import ClosedPosition, ClosedPositionSource, ProfitBasis, SourceProvider
from reconcile.schema import stream_cursor, trading_api_config, trading_robot
from reconcile.upsert import Conflict, PageResult, PageWriter, StreamRef, order_sn_for

log = structlog.get_logger("reconcile.history")

PAGE_ATTEMPTS = 3  # reads and decisions of one page before it is split


@dataclass(frozen=True)
class SyncSettings:
    running_status: int = 2
    lookback: timedelta = timedelta(days=7)
    overlap: timedelta = timedelta(minutes=10)
    match_tolerance: timedelta = timedelta(seconds=120)
    concurrency: int = 8
    #: skip a stream whose cursor another instance advanced less than this long ago, so that
    #: several daemons poll each account once per interval between them (0: always poll)
    min_interval: timedelta = timedelta(0)
    #: platforms with a source; None: every platform (a replay source serves them all)
    platforms: frozenset[str] | None = None
    #: records upserted per transaction
    page_size: int = 200
    #: what a charged order's different exchange profit does (``power.corrections``)
    corrections: CorrectionMode = CorrectionMode.LOG


@dataclass(frozen=True)
class Robot:
    id: int
    tenant_id: int
    user_id: int
    symbol: str
    leverage: int


@dataclass(frozen=True)
class Stream:
    platform: str
    account_id: int
    symbol: str
    robots: tuple[Robot, ...]

    @property
    def robot_ids(self) -> list[int]:
        return [r.id for r in self.robots]

    def ref(self) -> StreamRef:
        robot = self.robots[0]  # an inserted order is filed under the stream's first robot
        return StreamRef(
            self.platform,
            self.account_id,
            self.symbol,
            tuple(self.robot_ids),
            (robot.tenant_id, robot.user_id, robot.id, robot.leverage),
        )


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


class HistorySync:
    def __init__(
        self,
        db: Database,
        consumer: PowerConsumer,
        provider: SourceProvider,
        settings: SyncSettings,
        *,
        schema: LiveSchema | None = None,
        aes_key: AesKey | None = None,
    ) -> None:
        self.db = db
        self.consumer = consumer
        self.provider = provider
        self.settings = settings
        self.schema = schema
        self.corrector = (
            Corrector(db, consumer.rules) if settings.corrections is CorrectionMode.ADJUST else None
        )
        # read once, here, not from the environment at every account load
        self.aes_key = aes_key if aes_key is not None else aes_key_from_environment()

    async def run_cycle(self, stop: asyncio.Event | None = None) -> SyncSummary:
        """One pass over every stream. A failing stream never stops the others; ``stop`` ends
        the pass after the streams in flight."""
        started = time.monotonic()
        requests_before = self.provider.requests()
        summary = SyncSummary()
        by_account = await self._streams(summary)
        gate = asyncio.Semaphore(self.settings.concurrency)

        async def account(account_id: int, streams: list[Stream]) -> None:
            async with gate:
                if stop is not None and stop.is_set():
                    summary.skipped_streams += len(streams)
                    return
                await self._sync_account(account_id, streams, summary)

        await asyncio.gather(*(account(a, s) for a, s in sorted(by_account.items())))
        summary.requests = self.provider.requests() - requests_before
        summary.elapsed = round(time.monotonic() - started, 3)
        log.info("history sync summary", **summary.figures())
        return summary

    # -- which streams ------------------------------------------------------------------------

    async def _streams(self, summary: SyncSummary) -> dict[int, list[Stream]]:
        r, a = trading_robot.c, trading_api_config.c
        stmt = (
            select(
                r.id,
                r.tenant_id,
                r.user_id,
                r.symbol,
                r.leverage,
                a.id.label("account_id"),
                a.user_id.label("account_user_id"),
                a.platform,
            )
            .join_from(trading_robot, trading_api_config, a.id == r.api_config_id)
            .where(
                r.status == self.settings.running_status,
                r.deleted_at.is_(None),
                a.status == 1,
                a.deleted_at.is_(None),
            )
            .order_by(r.id)
        )

        async def read(conn: AsyncConnection) -> list[Any]:
            return list(await conn.execute(stmt))

        rows = await self.db.transaction(read, what="read running robots")
        grouped: dict[tuple[str, int, str], list[Robot]] = defaultdict(list)
        unconfigured: set[str] = set()
        for row in rows:
            platform = str(row.platform).strip().lower()
            if row.user_id != row.account_user_id:
                log.error(
                    "robot account mismatch",
                    robot_id=row.id,
                    robot_user_id=row.user_id,
                    account_id=row.account_id,
                    account_user_id=row.account_user_id,
                    action="skipped: never charge the wrong wallet",
                )
                continue
            if self.settings.platforms is not None and platform not in self.settings.platforms:
                unconfigured.add(platform)
                continue
            robot = Robot(row.id, row.tenant_id, row.user_id, row.symbol, row.leverage)
            grouped[(platform, row.account_id, row.symbol)].append(robot)
        if unconfigured:
            log.warning("robots on unconfigured platforms skipped", platforms=sorted(unconfigured))
        by_account: dict[int, list[Stream]] = defaultdict(list)
        for (platform, account_id, symbol), robots in sorted(grouped.items()):
            by_account[account_id].append(Stream(platform, account_id, symbol, tuple(robots)))
        summary.streams = sum(len(s) for s in by_account.values())
        return by_account

    # -- one account: its lock, its client, its streams ---------------------------------------

    async def _sync_account(
        self, account_id: int, streams: list[Stream], summary: SyncSummary
    ) -> None:
        """One account's streams; any failure (the lock, the account, a stream) is counted and
        logged here, never raised: one account never stops the others."""
        pending = list(streams)
        try:
            async with self._account_lock(account_id) as held:
                if not held:
                    summary.skipped_streams += len(streams)
                    pending.clear()
                    log.info("account busy elsewhere", account_id=account_id, streams=len(streams))
                    return
                account = await load_account(self.db, account_id, aes_key=self.aes_key)
                source = self.provider.source_for(account)
                basis = self.provider.profit_basis(account)
                while pending:
                    stream = pending[0]
                    try:
                        await self._sync_stream(stream, source, basis, summary)
                    except ReconcileError as exc:
                        summary.failed_streams += 1
                        log.error(
                            "stream failed",
                            platform=stream.platform,
                            account_id=account_id,
                            symbol=stream.symbol,
                            robots=stream.robot_ids,
                            error=_err(exc),
                            will_retry="next cycle",
                        )
                    pending.pop(0)
        except ReconcileError as exc:  # the lock, the account, or releasing the lock
            summary.failed_streams += len(pending)
            log.error(
                "account failed",
                account_id=account_id,
                streams=len(pending),
                error=_err(exc),
                will_retry="next cycle",
            )

    @asynccontextmanager
    async def _account_lock(self, account_id: int) -> AsyncIterator[bool]:
        # GET_LOCK names are server-wide: qualify with the database, so instances serving two
        # hotgo databases on one server do not lock each other out (names are <= 64 chars)
        schema = hashlib.sha256(str(self.db.engine.url.database).encode()).hexdigest()[:16]
        name = f"toogo-reconcile:{schema}:account:{account_id}"
        dialect = self.db.dialect
        if not dialect.concurrent:  # the embedded default runs one instance
            yield True
            return
        async with self.db.session_connection() as conn:
            got = await dialect.try_lock(conn, name)
            try:
                yield got
            finally:
                if got:
                    try:
                        with map_db_errors("release the account lock"):
                            await dialect.unlock(conn, name)
                    except ConnectionLost:
                        # the server ends a lost session's locks itself: nothing is held
                        log.info("account lock gone with its connection", account_id=account_id)

    # -- one stream ---------------------------------------------------------------------------

    async def _sync_stream(
        self, stream: Stream, source: ClosedPositionSource, basis: ProfitBasis, summary: SyncSummary
    ) -> None:
        now = datetime.now(UTC)
        cursor, fresh = await self._read_cursor(stream)
        if fresh:
            summary.skipped_streams += 1
            return
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
        await self._settle(pages, basis, summary)
        newest = max((r.close_time for r in records), default=None)
        complete_until = now if newest is None or newest < now else newest
        keys = sorted(r.record_key for r in records if r.close_time == complete_until)
        await self._write_cursor(stream, complete_until, keys)

    async def reconcile_records(
        self, key: tuple[str, int, str], records: Sequence[ClosedPosition]
    ) -> SyncSummary:
        """Upsert and charge records of one stream (platform, account, symbol) outside a cycle:
        ``exchange quarantine --retry`` hands records it could normalize at last to the same
        rules and writes as the cycle. The stream must be running; its cursor is not moved."""
        platform, account_id, symbol = key
        summary = SyncSummary()
        streams = (await self._streams(summary)).get(account_id, [])
        stream = next((s for s in streams if s.platform == platform and s.symbol == symbol), None)
        if stream is None:
            raise PermanentError(
                f"no running robot on {platform} account {account_id} trades {symbol}"
            )
        async with self._account_lock(account_id) as held:
            if not held:
                raise TemporaryError(f"account {account_id} is being synced elsewhere")
            account = await load_account(self.db, account_id, aes_key=self.aes_key)
            basis = self.provider.profit_basis(account)
            pages = await self._upsert_page(
                stream, list(records), basis, await self._schema(), summary
            )
            await self._settle(pages, basis, summary)
        return summary

    async def _settle(
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

    async def _read_cursor(
        self, stream: Stream
    ) -> tuple[tuple[datetime, frozenset[str]] | None, bool]:
        """(complete_until and the keys at it, or None for a new stream; whether another
        instance advanced it within ``min_interval``)."""
        c = stream_cursor.c

        async def read(conn: AsyncConnection) -> Any:
            stmt = select(c.complete_until, c.keys_at_cursor, c.updated_at).where(
                c.platform == stream.platform,
                c.account_id == stream.account_id,
                c.symbol == stream.symbol,
            )
            return (await conn.execute(stmt)).one_or_none()

        row = await self.db.transaction(read, what="read stream cursor")
        if row is None or row.complete_until is None:
            return None, False
        keys = frozenset(json.loads(row.keys_at_cursor or "[]"))
        interval = self.settings.min_interval
        fresh = (
            bool(interval)
            and row.updated_at is not None
            and (self.db.now() - row.updated_at < interval)
        )
        return (row.complete_until.replace(tzinfo=UTC), keys), fresh

    async def _write_cursor(self, stream: Stream, until: datetime, keys: list[str]) -> None:
        values = {
            "platform": stream.platform,
            "account_id": stream.account_id,
            "symbol": stream.symbol,
            # cursors are kept in UTC whatever database.timezone says: they never meet hotgo
            "complete_until": until.astimezone(UTC).replace(tzinfo=None),
            "keys_at_cursor": json.dumps(keys),
            "updated_at": self.db.now(),
        }
        changed = {k: values[k] for k in ("complete_until", "keys_at_cursor", "updated_at")}

        upsert = self.db.dialect.upsert(
            stream_cursor, key=("platform", "account_id", "symbol"), update=changed
        )

        async def write(conn: AsyncConnection) -> None:
            await conn.execute(upsert, values)

        await self.db.transaction(write, what="advance stream cursor")


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


__all__ = ["HistorySync", "SourceProvider", "Stream", "SyncSettings", "SyncSummary", "order_sn_for"]
