"""Retention of the daemon's own tables (``retention:`` in the configuration; docs/retention.md).

What goes, and when (defaults; ``None`` keeps forever):

====================  ===========================================================  =========
table                 what goes                                                     after
====================  ===========================================================  =========
record (raw_json)     the exchange's raw payload, replaced by the JSON ``null``     90 days
record (row)          the whole record and its ``record_order`` rows                730 days
skip                  the row                                                       90 days
shadow                the row                                                       90 days
quarantine            a *resolved* row (unresolved rows stay)                       90 days
cursor                a stream's cursor the sync no longer polls                    30 days
====================  ===========================================================  =========

Bindings, verdicts, corrections, refunds, backups and the poll schedule are never pruned: the
charging rules (reconcile.charging.trades) and the ledger's history need them. hotgo's tables are
never touched. The ages count from the row's ``created_at`` (``updated_at`` for a cursor,
``resolved_at`` for quarantine: UTC).

Each batch is one short transaction over at most ``batch_size`` rows picked by primary key
(selected first, then deleted or updated by id list: MariaDB cannot LIMIT inside ``IN``), with
``pause`` between batches so charges interleave; a set ``stop`` event ends the run between two
batches. ``toogo_reconcile_record`` has no index on its age: it is walked in id order (its ids
grow with ``created_at``) and the walk ends at the first row still young enough to keep.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Table, and_, func, not_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.storage.db import Database
from reconcile.storage.schema import (
    OWN_TABLES,
    exchange_record,
    quarantine,
    record_order_id,
    shadow_charge,
    skipped_duplicate,
    stream_cursor,
)
from reconcile.storage.streams import polled

log = structlog.get_logger("reconcile.retention")

#: what a pruned raw payload reads as (valid JSON: ``report --order`` shows ``raw: null``)
PRUNED_RAW = "null"

#: the parts of the retention, in the order a run prunes them (docs/retention.md)
PARTS = ("records", "record_raw", "skips", "shadow", "quarantine", "cursors")


@dataclass(frozen=True)
class RetentionSettings:
    """How long each part is kept (None: forever), and how a run paces itself."""

    record_raw: timedelta | None = timedelta(days=90)
    records: timedelta | None = timedelta(days=730)
    skips: timedelta | None = timedelta(days=90)
    shadow: timedelta | None = timedelta(days=90)
    quarantine: timedelta | None = timedelta(days=90)
    cursors: timedelta | None = timedelta(days=30)
    batch_size: int = 1000
    pause: timedelta = timedelta(milliseconds=50)
    running_status: int = 2  # robots.running_status: a cursor of a running robot's stream stays


@dataclass
class PruneSummary:
    """Rows deleted (or, for ``record_raw``, emptied) per part; ``dry_run``: would be."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PARTS, 0))
    batches: int = 0
    seconds: float = 0.0
    stopped: bool = False
    dry_run: bool = False

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class Pruner:
    """Prunes the daemon's own tables by ``settings``; one instance per daemon (it is cheap)."""

    def __init__(self, db: Database, settings: RetentionSettings) -> None:
        self.db = db
        self.settings = settings

    def cutoffs(self) -> dict[str, datetime | None]:
        """part -> rows older than this go (database time; quarantine: naive UTC)."""
        now = datetime.now(UTC)
        s = self.settings
        ages = {
            "records": s.records,
            "record_raw": s.record_raw,
            "skips": s.skips,
            "shadow": s.shadow,
            "quarantine": s.quarantine,
            "cursors": s.cursors,
        }
        out: dict[str, datetime | None] = {}
        for part, age in ages.items():
            if age is None:
                out[part] = None
            elif part == "quarantine":
                out[part] = (now - age).replace(tzinfo=None)
            else:
                out[part] = self.db.to_db_time(now - age)
        return out

    async def run(
        self, stop: asyncio.Event | None = None, *, dry_run: bool = False
    ) -> PruneSummary:
        """One pass over every part; logs one ``retention summary`` line."""
        started = asyncio.get_running_loop().time()
        summary = PruneSummary(dry_run=dry_run)
        for part, cutoff in self.cutoffs().items():
            if cutoff is None:
                continue
            if dry_run:
                summary.counts[part] = await self._count(part, cutoff)
                continue
            summary.stopped = await self._prune(part, cutoff, summary, stop)
            if summary.stopped:
                break
        summary.seconds = asyncio.get_running_loop().time() - started
        log.info(
            "retention summary",
            dry_run=dry_run,
            batches=summary.batches,
            seconds=round(summary.seconds, 3),
            stopped=summary.stopped,
            **summary.counts,
        )
        return summary

    # -- one part, batch by batch -----------------------------------------------------------------

    async def _prune(
        self, part: str, cutoff: datetime, summary: PruneSummary, stop: asyncio.Event | None
    ) -> bool:
        after = await self._raw_start() if part == "record_raw" else 0
        while True:
            if stop is not None and stop.is_set():
                return True
            done, last, more = await self.db.transaction(
                functools.partial(self._batch, part=part, cutoff=cutoff, after=after),
                what=f"prune {part}",
            )
            summary.counts[part] += done
            summary.batches += 1
            if not more:
                return False
            after = last
            if self.settings.pause > timedelta(0):
                await asyncio.sleep(self.settings.pause.total_seconds())

    async def _batch(
        self, conn: AsyncConnection, part: str, cutoff: datetime, after: int
    ) -> tuple[int, int, bool]:
        """One batch: (rows pruned, the last id looked at, whether to go on)."""
        n = self.settings.batch_size
        if part in ("records", "record_raw"):
            return await self._record_batch(conn, part, cutoff, after, n)
        table, where = self._where(part, cutoff)
        ids = [
            int(i)
            for (i,) in await conn.execute(
                select(table.c.id).where(table.c.id > after, where).order_by(table.c.id).limit(n)
            )
        ]
        if ids:
            await conn.execute(table.delete().where(table.c.id.in_(ids)))
        return len(ids), (ids[-1] if ids else after), len(ids) == n

    async def _record_batch(
        self, conn: AsyncConnection, part: str, cutoff: datetime, after: int, n: int
    ) -> tuple[int, int, bool]:
        r = exchange_record.c
        found = list(
            await conn.execute(
                select(r.id, r.platform, r.account_id, r.record_key, r.created_at)
                .where(r.id > after)
                .order_by(r.id)
                .limit(n)
            )
        )
        old = _old_prefix(found, cutoff)
        young_seen = len(old) < len(found)
        if old:
            ids = [int(row.id) for row in old]
            if part == "records":
                keys = [(row.platform, row.account_id, row.record_key) for row in old]
                ro = record_order_id.c
                await conn.execute(
                    record_order_id.delete().where(
                        tuple_(ro.platform, ro.account_id, ro.record_key).in_(keys)
                    )
                )
                await conn.execute(exchange_record.delete().where(r.id.in_(ids)))
            else:
                await conn.execute(
                    exchange_record.update()
                    .where(r.id.in_(ids), r.raw_json != PRUNED_RAW)
                    .values(raw_json=PRUNED_RAW)
                )
        last = int(found[-1].id) if found else after
        return len(old), last, bool(found) and len(found) == n and not young_seen

    async def _raw_start(self) -> int:
        """The id after which raw payloads are still whole: pruning empties them in id order,
        so the emptied ones are a prefix; found by bisection on the primary key."""
        r = exchange_record.c

        async def find(conn: AsyncConnection) -> int:
            lo_hi = (await conn.execute(select(func.min(r.id), func.max(r.id)))).one()
            if lo_hi[0] is None:
                return 0
            lo, hi = int(lo_hi[0]), int(lo_hi[1]) + 1  # the answer: first whole id, in [lo, hi]
            while lo < hi:
                mid = (lo + hi) // 2
                row = (
                    await conn.execute(
                        select(r.id, r.raw_json == PRUNED_RAW)
                        .where(r.id >= mid)
                        .order_by(r.id)
                        .limit(1)
                    )
                ).one_or_none()
                if row is None:
                    hi = mid
                elif row[1]:
                    lo = int(row[0]) + 1
                else:
                    hi = int(row[0])
            return lo - 1

        return await self.db.transaction(find, what="find the first whole raw payload")

    def _where(self, part: str, cutoff: datetime) -> tuple[Table, Any]:
        if part == "skips":
            return skipped_duplicate, skipped_duplicate.c.created_at < cutoff
        if part == "shadow":
            return shadow_charge, shadow_charge.c.created_at < cutoff
        if part == "quarantine":
            q = quarantine.c
            return quarantine, and_(q.resolved_at.is_not(None), q.resolved_at < cutoff)
        if part == "cursors":
            c = stream_cursor.c
            return stream_cursor, and_(
                c.updated_at.is_not(None),
                c.updated_at < cutoff,
                not_(polled(self.settings.running_status)),
            )
        raise ValueError(f"unknown retention part {part!r}")

    async def _count(self, part: str, cutoff: datetime) -> int:
        """What a run would prune now (``prune --dry-run``): a plain count, read once."""
        if part in ("records", "record_raw"):
            r = exchange_record.c
            where = r.created_at < cutoff
            if part == "record_raw":
                where = and_(where, r.raw_json != PRUNED_RAW)
            table: Table = exchange_record
        else:
            table, where = self._where(part, cutoff)

        async def read(conn: AsyncConnection) -> int:
            stmt = select(func.count()).select_from(table).where(where)
            return int((await conn.execute(stmt)).scalar_one())

        return await self.db.transaction(read, what=f"count {part} to prune")


def _old_prefix(rows: Sequence[Any], cutoff: datetime) -> list[Any]:
    out = []
    for row in rows:
        if row.created_at >= cutoff:
            break
        out.append(row)
    return out


# -- the size of the daemon's own tables (metrics, doctor) ----------------------------------------

#: table -> the column its age is read from (the oldest row: the lowest id's)
AGE_COLUMNS: dict[str, str] = {
    "toogo_reconcile_cursor": "updated_at",
    "toogo_reconcile_poll": "polled_at",
    "toogo_reconcile_binding": "created_at",
    "toogo_reconcile_record": "created_at",
    "toogo_reconcile_verdict": "created_at",
    "toogo_reconcile_quarantine": "first_seen",
    "toogo_reconcile_refund": "created_at",
    "toogo_reconcile_skip": "created_at",
    "toogo_reconcile_correction": "created_at",
    "toogo_reconcile_shadow": "created_at",
}
#: tables whose times are kept in UTC (the others: database.timezone)
_UTC_TABLES = frozenset({"toogo_reconcile_quarantine", "toogo_reconcile_poll"})


@dataclass(frozen=True)
class TableSize:
    table: str
    rows: int
    oldest_seconds: float | None  # age of the oldest row; None: empty, or no time column


async def table_sizes(db: Database) -> list[TableSize]:
    """Row count and oldest row of each of the daemon's own tables (an exact COUNT each)."""
    now = datetime.now(UTC)

    async def read(conn: AsyncConnection) -> list[TableSize]:
        out = []
        for table in OWN_TABLES:
            rows = int((await conn.execute(select(func.count()).select_from(table))).scalar_one())
            age: float | None = None
            column = AGE_COLUMNS.get(table.name)
            if column is not None and rows:
                col = table.c[column]
                stmt = (
                    select(func.min(col))
                    if "id" not in table.c
                    else select(col).where(col.is_not(None)).order_by(table.c.id).limit(1)
                )
                value = (await conn.execute(stmt)).scalar()
                if value is not None:
                    moment = (
                        value.replace(tzinfo=UTC)
                        if table.name in _UTC_TABLES
                        else db.from_db_time(value)
                    )
                    age = max(0.0, (now - moment).total_seconds())
            out.append(TableSize(table.name, rows, age))
        return out

    return await db.transaction(read, what="read the own tables' sizes")


def describe(sizes: Sequence[TableSize]) -> str:
    """doctor's line: ``record 1234 (oldest 91d), skip 0, ...``."""
    parts = []
    for s in sizes:
        short = s.table.removeprefix("toogo_reconcile_")
        age = f" (oldest {_age(s.oldest_seconds)})" if s.oldest_seconds is not None else ""
        parts.append(f"{short} {s.rows}{age}")
    return ", ".join(parts)


def _age(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.0f}d"
    if seconds >= 3600:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 60:.0f}m"


__all__ = [
    "PARTS",
    "PRUNED_RAW",
    "PruneSummary",
    "Pruner",
    "RetentionSettings",
    "TableSize",
    "describe",
    "table_sizes",
]
