"""History sync: reconcile every running robot's closed positions into hg_trading_order.

Robots sharing an API account and a symbol form one **stream**: one request sequence however
many robots share it. Each account is polled by one instance at a time (MySQL ``GET_LOCK``, held
while its streams run; correctness never depends on it). Each stream keeps a cursor in
``toogo_reconcile_cursor``: the close time up to which it is known complete and the record keys
seen at that instant. A cycle fetches from the cursor minus ``overlap`` to now (a new stream, or
one whose cursor is older than ``lookback``, from now − lookback); the cursor advances only
after every record of the window is committed.

Each closed position is upserted in its own transaction, by the first rule that applies:

1. a local order of the stream's robots whose ``exchange_order_id`` is the record key: it is
   this position; fill only missing fields;
2. a closed order of those robots, same symbol and direction, closed within ``match_tolerance``
   of the record: the engine already recorded it; fill only missing fields, insert nothing;
3. an open order (status 1) of those robots, same symbol and direction, opened before the
   record closed: close it (status 2, close_price, realized_profit, close_time, hold_duration,
   close_reason ``exchange_sync``, exchange_order_id if empty);
4. otherwise insert a closed order whose ``order_sn`` is derived from (platform, account,
   record key), so two instances or two cycles converge on one row through ``uk_order_sn``.

A charged order's realized_profit is never rewritten: a different figure from the exchange is
logged as ``profit mismatch``. Orders closed (3) or inserted (4) with a profit go straight to the
consumer with source ``history``. A robot owned by another user than its account is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Protocol

import structlog
from sqlalchemy import or_, select, text
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile import quarantine
from reconcile.accounts import ApiAccount, load_account
from reconcile.consumer import STATUS_CLOSED, STATUS_OPEN, Outcome, PowerConsumer, Source
from reconcile.db import Database
from reconcile.errors import DuplicateKey, ReconcileError
from reconcile.records import ClosedPosition, ClosedPositionSource
from reconcile.schema import stream_cursor, trading_api_config, trading_order, trading_robot

log = structlog.get_logger("reconcile.history")

PROFIT_QUANTUM = Decimal("0.0001")  # hg_trading_order.realized_profit is DECIMAL(15,4)
PRICE_QUANTUM = Decimal("0.0001")
CLOSE_REASON = "exchange_sync"


class SourceProvider(Protocol):
    """Where streams get their closed positions (``exchange_adapters.ExchangeRegistry``)."""

    def source_for(self, account: ApiAccount) -> ClosedPositionSource: ...

    def profit_basis(self, account: ApiAccount) -> str: ...

    def requests(self) -> int: ...


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


@dataclass(frozen=True)
class Robot:
    id: int
    tenant_id: int
    user_id: int
    symbol: str
    leverage: int
    margin: Decimal


@dataclass(frozen=True)
class Stream:
    platform: str
    account_id: int
    symbol: str
    robots: tuple[Robot, ...]

    @property
    def robot_ids(self) -> list[int]:
        return [r.id for r in self.robots]


@dataclass
class SyncSummary:
    streams: int = 0
    requests: int = 0
    records: int = 0
    inserted: int = 0
    closed: int = 0
    matched: int = 0
    charged: int = 0
    skipped_duplicate: int = 0
    failed_streams: int = 0
    skipped_streams: int = 0
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failed_streams == 0

    def figures(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class HistorySync:
    def __init__(
        self,
        db: Database,
        consumer: PowerConsumer,
        provider: SourceProvider,
        settings: SyncSettings,
    ) -> None:
        self.db = db
        self.consumer = consumer
        self.provider = provider
        self.settings = settings

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
                r.margin,
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
            robot = Robot(row.id, row.tenant_id, row.user_id, row.symbol, row.leverage, row.margin)
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
        async with self._account_lock(account_id) as held:
            if not held:
                summary.skipped_streams += len(streams)
                log.info("account busy elsewhere", account_id=account_id, streams=len(streams))
                return
            try:
                account = await load_account(self.db, account_id)
                source = self.provider.source_for(account)
                basis = self.provider.profit_basis(account)
            except ReconcileError as exc:
                summary.failed_streams += len(streams)
                log.error(
                    "stream failed", account_id=account_id, error=_err(exc), will_retry="next cycle"
                )
                return
            for stream in streams:
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

    @asynccontextmanager
    async def _account_lock(self, account_id: int) -> AsyncIterator[bool]:
        if not self.db.is_mysql:  # the embedded default runs one instance
            yield True
            return
        # GET_LOCK names are server-wide: qualify with the database, so instances serving two
        # hotgo databases on one server do not lock each other out (names are <= 64 chars)
        schema = hashlib.sha256(str(self.db.engine.url.database).encode()).hexdigest()[:16]
        name = f"toogo-reconcile:{schema}:account:{account_id}"
        async with self.db.session_connection() as conn:
            got = (await conn.execute(text("SELECT GET_LOCK(:n, 0)"), {"n": name})).scalar()
            try:
                yield got == 1
            finally:
                if got == 1:
                    await conn.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": name})

    # -- one stream ---------------------------------------------------------------------------

    async def _sync_stream(
        self, stream: Stream, source: ClosedPositionSource, basis: str, summary: SyncSummary
    ) -> None:
        now = datetime.now(UTC)
        cursor, fresh = await self._read_cursor(stream)
        if fresh:
            summary.skipped_streams += 1
            return
        floor = now - self.settings.lookback
        since = floor if cursor is None or cursor[0] < floor else cursor[0] - self.settings.overlap
        seen_at_cursor = cursor[1] if cursor is not None else frozenset()
        window = await source.fetch_closed(stream.symbol, since, now)
        records = window.records
        await quarantine.store(self.db, window.unusable)  # kept, never blocking the stream
        summary.records += len(records)
        to_charge: list[int] = []
        known = await self._known(stream, [r.record_key for r in records])
        for record in records:
            if (
                cursor is not None
                and record.close_time == cursor[0]
                and record.record_key in seen_at_cursor
            ):
                continue
            row = known.get(record.record_key)
            if row is not None and not _missing_values(
                row, record, self.db.to_db_time(record.close_time)
            ):
                # rule 1 with nothing to fill: no transaction (re-read overlaps, quiet cycles)
                _check_profit(row, record, self._profit(record, basis))
                summary.matched += 1
                continue
            order_id = await self._reconcile(stream, record, basis, summary)
            if order_id is not None:
                to_charge.append(order_id)
        # charged in pages once the window's orders are recorded (the sweep is the backstop)
        for result in await self.consumer.charge_many(to_charge, Source.HISTORY):
            if result.outcome is Outcome.CHARGED:
                summary.charged += 1
            elif result.outcome is Outcome.SKIPPED_DUPLICATE:
                summary.skipped_duplicate += 1
        newest = max((r.close_time for r in records), default=None)
        complete_until = now if newest is None or newest < now else newest
        keys = sorted(r.record_key for r in records if r.close_time == complete_until)
        await self._write_cursor(stream, complete_until, keys)

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

        async def write(conn: AsyncConnection) -> None:
            if self.db.is_mysql:
                ins = mysql.insert(stream_cursor).values(**values)
                await conn.execute(ins.on_duplicate_key_update(**changed))
            else:
                ins_l = sqlite.insert(stream_cursor).values(**values)
                await conn.execute(
                    ins_l.on_conflict_do_update(
                        index_elements=["platform", "account_id", "symbol"], set_=changed
                    )
                )

        await self.db.transaction(write, what="advance stream cursor")

    # -- one record ---------------------------------------------------------------------------

    async def _reconcile(
        self, stream: Stream, record: ClosedPosition, basis: str, summary: SyncSummary
    ) -> int | None:
        """Upsert one record; the order id when it is to be charged (closed or inserted here,
        profitable)."""
        profit = self._profit(record, basis)
        for attempt in (1, 2):
            try:
                outcome, order_id = await self.db.transaction(
                    lambda conn: self._upsert(conn, stream, record, profit),
                    what="upsert closed position",
                    account_id=stream.account_id,
                    record_key=record.record_key,
                )
                break
            except DuplicateKey:  # another instance inserted the same record: rule 1 now
                if attempt == 2:
                    raise
        if outcome == "inserted":
            summary.inserted += 1
        elif outcome == "closed":
            summary.closed += 1
        else:
            summary.matched += 1
        return order_id if outcome in ("inserted", "closed") and profit > 0 else None

    @staticmethod
    def _profit(record: ClosedPosition, basis: str) -> Decimal:
        chosen = record.net_profit if basis == "net" else record.gross_pnl
        return chosen.quantize(PROFIT_QUANTUM, rounding=ROUND_HALF_UP)

    async def _upsert(
        self, conn: AsyncConnection, stream: Stream, record: ClosedPosition, profit: Decimal
    ) -> tuple[str, int]:
        o = trading_order.c
        mine = o.robot_id.in_(stream.robot_ids)
        cols = _ORDER_COLUMNS
        close_time = self.db.to_db_time(record.close_time)
        same = (mine, o.symbol == stream.symbol, o.direction == record.direction)

        # 1. this record's own order
        row = (
            await conn.execute(
                select(*cols)
                .where(mine, o.exchange_order_id == record.record_key)
                .order_by(o.id)
                .limit(1)
                .with_for_update()
            )
        ).first()
        if row is not None:
            await self._fill_missing(conn, row, record, profit, close_time)
            return "matched", row.id
        # 2. the engine recorded it already (within the tolerance): the closest such order
        tolerance = self.settings.match_tolerance
        candidates = await conn.execute(
            select(*cols)
            .where(
                *same,
                o.status == STATUS_CLOSED,
                o.close_time >= close_time - tolerance,
                o.close_time <= close_time + tolerance,
                or_(o.exchange_order_id.is_(None), o.exchange_order_id == ""),
            )
            .order_by(o.id)
            .with_for_update()
        )
        row = min(candidates, key=lambda c: abs(c.close_time - close_time), default=None)
        if row is not None:
            await self._fill_missing(conn, row, record, profit, close_time)
            return "matched", row.id
        # 3. an open order this record closes
        row = (
            await conn.execute(
                select(*cols)
                .where(*same, o.status == STATUS_OPEN, o.open_time <= close_time)
                .order_by(o.open_time, o.id)
                .limit(1)
                .with_for_update()
            )
        ).first()
        if row is not None:
            await conn.execute(
                trading_order.update()
                .where(o.id == row.id, o.status == STATUS_OPEN)
                .values(
                    status=STATUS_CLOSED,
                    close_price=record.close_price.quantize(PRICE_QUANTUM, ROUND_HALF_UP),
                    realized_profit=profit,
                    close_time=close_time,
                    hold_duration=max(0, int((close_time - row.open_time).total_seconds())),
                    close_reason=CLOSE_REASON,
                    exchange_order_id=row.exchange_order_id or record.record_key,
                    updated_at=self.db.now(),
                )
            )
            return "closed", row.id
        # 4. a position the local table never saw
        robot = stream.robots[0]
        open_time = self.db.to_db_time(record.open_time) if record.open_time else close_time
        now = self.db.now()
        result = await conn.execute(
            trading_order.insert().values(
                tenant_id=robot.tenant_id,
                user_id=robot.user_id,
                robot_id=robot.id,
                order_sn=order_sn_for(stream.platform, stream.account_id, record.record_key),
                exchange_order_id=record.record_key,
                symbol=stream.symbol,
                direction=record.direction,
                open_price=(record.open_price or Decimal(0)).quantize(PRICE_QUANTUM, ROUND_HALF_UP),
                close_price=record.close_price.quantize(PRICE_QUANTUM, ROUND_HALF_UP),
                quantity=record.size.quantize(Decimal("0.00000001"), ROUND_HALF_UP),
                leverage=robot.leverage,
                margin=robot.margin,
                realized_profit=profit,
                open_time=open_time,
                close_time=close_time,
                hold_duration=max(0, int((close_time - open_time).total_seconds())),
                status=STATUS_CLOSED,
                close_reason=CLOSE_REASON,
                power_consumed=0,
                power_amount=Decimal(0),
                remark=f"synchronized from {stream.platform} (account {stream.account_id})",
                created_at=now,
                updated_at=now,
            )
        )
        return "inserted", int(result.inserted_primary_key[0])  # type: ignore[index]

    async def _fill_missing(
        self,
        conn: AsyncConnection,
        row: Any,
        record: ClosedPosition,
        profit: Decimal,
        close_time: datetime,
    ) -> None:
        """Rules 1 and 2: fill only what is missing; never rewrite a figure."""
        values = _missing_values(row, record, close_time)
        _check_profit(row, record, profit)
        if values:
            values["updated_at"] = self.db.now()
            await conn.execute(
                trading_order.update().where(trading_order.c.id == row.id).values(**values)
            )

    async def _known(self, stream: Stream, keys: list[str]) -> dict[str, Any]:
        """Orders of the stream's robots already bound to these record keys (a plain read)."""
        if not keys:
            return {}
        o = trading_order.c

        async def read(conn: AsyncConnection) -> dict[str, Any]:
            found: dict[str, Any] = {}
            for start in range(0, len(keys), 1000):
                rows = await conn.execute(
                    select(*_ORDER_COLUMNS).where(
                        o.robot_id.in_(stream.robot_ids),
                        o.exchange_order_id.in_(keys[start : start + 1000]),
                    )
                )
                found.update({r.exchange_order_id: r for r in rows})
            return found

        return await self.db.transaction(read, what="read known records")


_ORDER_COLUMNS = (
    trading_order.c.id,
    trading_order.c.robot_id,
    trading_order.c.status,
    trading_order.c.exchange_order_id,
    trading_order.c.close_price,
    trading_order.c.close_time,
    trading_order.c.open_time,
    trading_order.c.hold_duration,
    trading_order.c.realized_profit,
    trading_order.c.power_consumed,
)


def _missing_values(row: Any, record: ClosedPosition, close_time: datetime) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if not row.exchange_order_id:
        values["exchange_order_id"] = record.record_key
    if row.close_price is None:
        values["close_price"] = record.close_price.quantize(PRICE_QUANTUM, ROUND_HALF_UP)
    if row.close_time is None:
        values["close_time"] = close_time
    if not row.hold_duration and row.open_time is not None:
        hold = int(((row.close_time or close_time) - row.open_time).total_seconds())
        if hold > 0:
            values["hold_duration"] = hold
    return values


def _check_profit(row: Any, record: ClosedPosition, profit: Decimal) -> None:
    if row.status == STATUS_CLOSED and row.realized_profit != profit:
        log.warning(
            "profit mismatch",
            order_id=row.id,
            robot_id=row.robot_id,
            record_key=record.record_key,
            local=row.realized_profit,
            exchange=profit,
            charged=bool(row.power_consumed),
        )


def order_sn_for(platform: str, account_id: int, record_key: str) -> str:
    """A deterministic order_sn (42 chars) for a position synthesized from an exchange record."""
    digest = hashlib.sha256(f"{platform}:{account_id}:{record_key}".encode()).hexdigest()
    return f"SX{digest[:40]}"


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


__all__ = ["HistorySync", "SourceProvider", "Stream", "SyncSettings", "SyncSummary", "order_sn_for"]
