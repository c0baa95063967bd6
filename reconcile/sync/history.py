"""History sync: reconcile every running robot's closed positions into hg_trading_order.

Robots sharing an API account and a symbol form one **stream**: one request sequence however
many robots share it. Daemons sharing a database share the accounts through the poll schedule
(:mod:`reconcile.fleet`): each claims due accounts under a short lease, so an account is polled
by one instance at a time and once per interval between them (correctness never depends on it).
Each stream keeps a cursor in ``toogo_reconcile_cursor``: the close time up to which it is known
complete and the record keys seen at that instant. A poll fetches from the cursor minus
``overlap`` to now (a new stream, or one whose cursor is older than ``lookback``, from now −
lookback); the cursor advances only after every record of the window is committed. An account's
cursors are read in the transaction that claims it and written, with the release of its lease,
in one transaction once its streams ran.

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
from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.charging.consumer import Outcome, PowerConsumer, Source
from reconcile.charging.corrections import CorrectionMode, Corrector
from reconcile.errors import (
    DatabaseError,
    DuplicateKey,
    PermanentError,
    ReconcileError,
    TemporaryError,
)
from reconcile.records import (
    ApiAccount,
    ClosedPosition,
    ClosedPositionSource,
    ProfitBasis,
    SourceProvider,
)
from reconcile.storage.contract import LiveSchema, inspect_live
from reconcile.storage.db import Database
from reconcile.storage.dialect import PROPOSED
from reconcile.storage.schema import stream_cursor, trading_api_config, trading_robot
from reconcile.sync import quarantine
from reconcile.sync.accounts import load_account
from reconcile.sync.credentials import AesKey, aes_key_from_environment
from reconcile.sync.fleet import PollLeases, chunks
from reconcile.sync.matching import Decision, Kind, Rule, Tolerances
from reconcile.sync.upsert import Conflict, PageResult, PageWriter, StreamRef, order_sn_for

log = structlog.get_logger("reconcile.history")

PAGE_ATTEMPTS = 3  # reads and decisions of one page before it is split

#: a stream's cursor: complete until, and the record keys at that instant
Cursor = tuple[datetime, frozenset[str]]
#: an account's cursors by (platform, symbol)
Cursors = dict[tuple[str, str], Cursor]


@dataclass(frozen=True)
class SyncSettings:
    running_status: int = 2
    lookback: timedelta = timedelta(days=7)
    overlap: timedelta = timedelta(minutes=10)
    match_tolerance: timedelta = timedelta(seconds=120)
    concurrency: int = 8
    #: an account is polled once per interval (``schedule.history_sync``), whatever the daemons
    interval: timedelta = timedelta(seconds=60)
    #: a claimed account is held this long, renewed while its poll runs (``sync.lease``)
    lease: timedelta = timedelta(seconds=30)
    #: how often a daemon looks for due accounts (``sync.tick``)
    tick: timedelta = timedelta(seconds=1)
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
        # the shared poll schedule (MySQL/MariaDB, PostgreSQL); SQLite runs one instance
        self.leases = (
            PollLeases(db, interval=settings.interval, lease=settings.lease)
            if db.dialect.concurrent
            else None
        )
        # accounts as last loaded, by a digest of their row: reloaded (and decrypted) on change
        self._accounts: dict[int, tuple[str, ApiAccount]] = {}

    async def run_cycle(self, stop: asyncio.Event | None = None) -> SyncSummary:
        """One pass over every stream, due or not (``sync``, ``run --once``): each account whose
        lease no other instance holds is claimed (its next poll due one interval on), polled and
        released. A failing stream never stops the others; ``stop`` ends the pass after the
        streams in flight."""
        started = time.monotonic()
        requests_before = self.provider.requests()
        summary = SyncSummary()
        async with self._renewing():
            by_account, prints = await self._streams(summary)
            cursors = await self._claim(by_account)
            busy = sorted(a for a in by_account if a not in cursors)
            for account_id in busy:
                summary.skipped_streams += len(by_account[account_id])
                log.info(
                    "account busy elsewhere",
                    account_id=account_id,
                    streams=len(by_account[account_id]),
                )
            gate = asyncio.Semaphore(self.settings.concurrency)

            async def account(account_id: int) -> None:
                streams = by_account[account_id]
                async with gate:
                    if stop is not None and stop.is_set():
                        summary.skipped_streams += len(streams)
                        await self._finish(account_id, [])
                        return
                    await self._sync_account(
                        account_id, streams, summary, cursors[account_id], prints.get(account_id)
                    )

            await asyncio.gather(*(account(a) for a in sorted(cursors)))
        return self._summarize(summary, started, requests_before)

    async def run_for(self, span: timedelta, stop: asyncio.Event | None = None) -> SyncSummary:
        """The daemon's history sync for ``span`` (one interval): put the running accounts on
        the shared schedule, then every ``tick`` claim due accounts, up to the free places of
        ``concurrency`` (when at least a quarter are free: a claim is one transaction for many),
        poll them and release them; then let the polls in flight finish. SQLite: one
        :meth:`run_cycle`."""
        leases = self.leases
        if leases is None:
            return await self.run_cycle(stop)
        started = time.monotonic()
        requests_before = self.provider.requests()
        summary = SyncSummary()
        deadline = started + span.total_seconds()
        tick = self.settings.tick.total_seconds()
        places = self.settings.concurrency
        running: set[asyncio.Task[None]] = set()
        stopped = asyncio.ensure_future((stop or asyncio.Event()).wait())
        failure: ReconcileError | None = None
        try:
            async with self._renewing():
                by_account, _ = await self._streams(SyncSummary())
                await leases.refresh(list(by_account))
                while True:
                    running = {t for t in running if not t.done()}
                    now = time.monotonic()
                    claiming = now < deadline and not stopped.done() and failure is None
                    if not claiming and not running:
                        break
                    free = places - len(running)
                    if claiming and free >= max(1, places // 4):
                        try:
                            batch = await self._claim_due(leases, free, summary)
                        except ReconcileError as exc:  # raised once the polls in flight end
                            failure, batch = exc, {}
                        for account_id, (streams, cursors, fingerprint) in batch.items():
                            running.add(asyncio.create_task(self._sync_account(
                                account_id, streams, summary, cursors, fingerprint, stop
                            )))  # fmt: skip
                        if len(batch) == free:
                            continue  # more may be due: claim again once places are free
                    wake = min(tick, max(0.0, deadline - now)) if claiming else None
                    await asyncio.wait(
                        {*running, stopped}, timeout=wake, return_when=asyncio.FIRST_COMPLETED
                    )
        finally:
            stopped.cancel()
            if running:  # cancelled (shutdown timeout): the accounts' transactions are shielded
                await asyncio.gather(*running, return_exceptions=True)
        if failure is not None:
            raise failure
        return self._summarize(summary, started, requests_before)

    def _summarize(self, summary: SyncSummary, started: float, requests_before: int) -> SyncSummary:
        summary.requests = self.provider.requests() - requests_before
        summary.elapsed = round(time.monotonic() - started, 3)
        log.info("history sync summary", **summary.figures())
        return summary

    @asynccontextmanager
    async def _renewing(self) -> AsyncIterator[None]:
        """The leases held are renewed while the block runs."""
        if self.leases is None:
            yield
            return
        renewer = asyncio.create_task(self.leases.keep_renewed())
        try:
            yield
        finally:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)

    # -- which streams, which accounts are ours -----------------------------------------------

    def _robots(self, account_ids: Sequence[int] | None = None) -> Select[Any]:
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
                a.base_url,
                a.api_key,
                a.secret_key,
                a.passphrase,
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
        return stmt if account_ids is None else stmt.where(a.id.in_(account_ids))

    async def _streams(
        self, summary: SyncSummary
    ) -> tuple[dict[int, list[Stream]], dict[int, str]]:
        """Every running stream by account, and each account row's digest."""

        async def read(conn: AsyncConnection) -> list[Any]:
            return list(await conn.execute(self._robots()))

        rows = await self.db.transaction(read, what="read running robots")
        by_account, prints = self._group(rows, loud=True)
        summary.streams = sum(len(s) for s in by_account.values())
        return by_account, prints

    def _group(
        self, rows: Sequence[Any], *, loud: bool
    ) -> tuple[dict[int, list[Stream]], dict[int, str]]:
        grouped: dict[tuple[str, int, str], list[Robot]] = defaultdict(list)
        prints: dict[int, str] = {}
        unconfigured: set[str] = set()
        for row in rows:
            platform = str(row.platform).strip().lower()
            if row.user_id != row.account_user_id:
                if loud:
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
            prints[row.account_id] = _digest(row)
        if unconfigured and loud:
            log.warning("robots on unconfigured platforms skipped", platforms=sorted(unconfigured))
        by_account: dict[int, list[Stream]] = defaultdict(list)
        for (platform, account_id, symbol), robots in sorted(grouped.items()):
            by_account[account_id].append(Stream(platform, account_id, symbol, tuple(robots)))
        return dict(by_account), prints

    async def _claim(self, by_account: dict[int, list[Stream]]) -> dict[int, Cursors]:
        """Claim every account of ``by_account`` no other instance holds (all of them without
        a schedule); their cursors, read in the claiming transaction."""
        leases, ids = self.leases, sorted(by_account)
        since = time.monotonic()

        async def claim(conn: AsyncConnection) -> dict[int, Cursors]:
            got = ids if leases is None else await leases.claim(conn, ids, schedule=True)
            return await _read_cursors(conn, got)

        cursors = await self.db.transaction(claim, what="claim accounts")
        if leases is not None:
            leases.hold(cursors, since)
        return cursors

    async def _claim_due(
        self, leases: PollLeases, limit: int, summary: SyncSummary
    ) -> dict[int, tuple[list[Stream], Cursors, str | None]]:
        """Claim up to ``limit`` due accounts; with their streams and cursors, read in the same
        transaction (4 statements for the lot)."""
        since = time.monotonic()

        async def claim(conn: AsyncConnection) -> tuple[list[int], list[Any], dict[int, Cursors]]:
            ids = await leases.claim_due(conn, limit)
            if not ids:
                return [], [], {}
            rows = list(await conn.execute(self._robots(ids)))
            return ids, rows, await _read_cursors(conn, ids)

        ids, rows, cursors = await self.db.transaction(claim, what="claim due accounts")
        leases.hold(ids, since)
        by_account, prints = self._group(rows, loud=False)
        idle = [a for a in ids if a not in by_account]  # no running robot since the refresh
        if idle:
            await self.db.transaction(
                lambda conn: leases.release(conn, idle), what="release idle accounts"
            )
            leases.forget(idle)
        summary.streams += sum(len(s) for s in by_account.values())
        return {a: (s, cursors.get(a, {}), prints.get(a)) for a, s in by_account.items()}

    # -- one account: its lease, its client, its streams --------------------------------------

    async def _sync_account(
        self,
        account_id: int,
        streams: list[Stream],
        summary: SyncSummary,
        cursors: Cursors,
        fingerprint: str | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        """One account's streams, then its cursors and its lease in one transaction; any
        failure (the lease, the account, a stream) is counted and logged here, never raised:
        one account never stops the others."""
        pending = list(streams)
        advanced: list[tuple[Stream, datetime, list[str]]] = []
        try:
            async with self._account_lock(account_id) as held:
                if not held:
                    summary.skipped_streams += len(streams)
                    pending.clear()
                    log.info("account busy elsewhere", account_id=account_id, streams=len(streams))
                    return
                account = await self._account(account_id, fingerprint)
                source = self.provider.source_for(account)
                basis = self.provider.profit_basis(account)
                while pending:
                    stream = pending[0]
                    if (stop is not None and stop.is_set()) or not self._holding(account_id):
                        break  # shutting down, or the lease lapsed (a stall): the rest waits
                    try:
                        key = (stream.platform, stream.symbol)
                        cursor = await self._sync_stream(stream, cursors.get(key), source, basis,
                                                         summary)  # fmt: skip
                        advanced.append((stream, *cursor))
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
                summary.skipped_streams += len(pending)
                pending.clear()
                await self._finish(account_id, advanced)
        except ReconcileError as exc:  # the lease, the account, or the cursors' transaction
            summary.failed_streams += len(pending) + len(advanced)
            log.error(
                "account failed",
                account_id=account_id,
                streams=len(pending) + len(advanced),
                error=_err(exc),
                will_retry="next cycle",
            )
        finally:
            if self.leases is not None:
                self.leases.forget([account_id])

    def _holding(self, account_id: int) -> bool:
        return self.leases is None or self.leases.valid(account_id)

    async def _account(self, account_id: int, fingerprint: str | None) -> ApiAccount:
        """The account, decrypted once per version of its row (``fingerprint``)."""
        known = self._accounts.get(account_id)
        if fingerprint is not None and known is not None and known[0] == fingerprint:
            return known[1]
        account = await load_account(self.db, account_id, aes_key=self.aes_key)
        if fingerprint is not None:
            self._accounts[account_id] = (fingerprint, account)
        return account

    @asynccontextmanager
    async def _account_lock(self, account_id: int) -> AsyncIterator[bool]:
        """Whether this instance may poll the account now. In a cycle its lease was claimed
        with the others; outside one (a quarantine retry) the lease is claimed here, its due
        time untouched, and released on exit. SQLite runs one instance: always."""
        leases = self.leases
        if leases is None:
            yield True
            return
        if account_id in leases.held:
            yield leases.valid(account_id)
            return
        since = time.monotonic()
        got = await self.db.transaction(
            lambda conn: leases.claim(conn, [account_id], schedule=False),
            what="claim an account's lease",
        )
        if not got:
            yield False
            return
        leases.hold(got, since)
        try:
            yield True
        finally:
            leases.forget(got)
            await self.db.transaction(
                lambda conn: leases.release(conn, got), what="release an account's lease"
            )

    async def _finish(
        self, account_id: int, advanced: list[tuple[Stream, datetime, list[str]]]
    ) -> None:
        """The account's advanced cursors and the release of its lease: one transaction."""
        now = self.db.now()
        rows = [
            {
                "platform": stream.platform,
                "account_id": stream.account_id,
                "symbol": stream.symbol,
                # cursors are kept in UTC whatever database.timezone says: they never meet hotgo
                "complete_until": until.astimezone(UTC).replace(tzinfo=None),
                "keys_at_cursor": json.dumps(keys),
                "updated_at": now,
            }
            for stream, until, keys in advanced
        ]
        leases = self.leases
        if not rows and leases is None:
            return
        upsert = self.db.dialect.upsert(
            stream_cursor,
            key=("platform", "account_id", "symbol"),
            update=dict.fromkeys(("complete_until", "keys_at_cursor", "updated_at"), PROPOSED),
        )

        async def write(conn: AsyncConnection) -> None:
            if rows:
                await conn.execute(upsert, rows)
            if leases is not None:
                await leases.release(conn, [account_id])

        await self.db.transaction(write, what="advance stream cursors", account_id=account_id)

    # -- one stream ---------------------------------------------------------------------------

    async def _sync_stream(
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
        await self._settle(pages, basis, summary)
        newest = max((r.close_time for r in records), default=None)
        complete_until = now if newest is None or newest < now else newest
        keys = sorted(r.record_key for r in records if r.close_time == complete_until)
        return complete_until, keys

    async def reconcile_records(
        self, key: tuple[str, int, str], records: Sequence[ClosedPosition]
    ) -> SyncSummary:
        """Upsert and charge records of one stream (platform, account, symbol) outside a cycle:
        ``exchange quarantine --retry`` hands records it could normalize at last to the same
        rules and writes as the cycle. The stream must be running; its cursor is not moved."""
        platform, account_id, symbol = key
        summary = SyncSummary()
        streams = (await self._streams(summary))[0].get(account_id, [])
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


async def _read_cursors(conn: AsyncConnection, account_ids: Sequence[int]) -> dict[int, Cursors]:
    """The cursors of ``account_ids``' streams (every account given has an entry)."""
    c = stream_cursor.c
    found: dict[int, Cursors] = {a: {} for a in account_ids}
    for ids in chunks(sorted(found)):
        stmt = select(c.platform, c.account_id, c.symbol, c.complete_until, c.keys_at_cursor)
        for row in await conn.execute(stmt.where(c.account_id.in_(ids))):
            if row.complete_until is not None:
                keys = frozenset(json.loads(row.keys_at_cursor or "[]"))
                cursor = (row.complete_until.replace(tzinfo=UTC), keys)
                found[int(row.account_id)][(row.platform, row.symbol)] = cursor
    return found


def _digest(row: Any) -> str:
    """A digest of an account row's fields (credentials included, as stored): the account is
    loaded again when it changes. Never logged."""
    fields = (row.account_user_id, row.platform, row.base_url, row.api_key, row.secret_key,
              row.passphrase)  # fmt: skip
    return hashlib.sha256(repr(fields).encode()).hexdigest()


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


__all__ = ["HistorySync", "SourceProvider", "Stream", "SyncSettings", "SyncSummary", "order_sn_for"]
