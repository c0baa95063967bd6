"""The quarantine: exchange records that could not be normalized, kept with their raw payload.

An unusable record (an empty, non-numeric or non-positive field where a size, price or fee is
required, an unknown side, ...) never blocks its stream and is never lost: the history sync
stores it here (:func:`store`, an idempotent upsert keyed on platform, account and record key)
and moves the stream's cursor on. It stays *unresolved* until ``toogo-reconcile exchange
quarantine --retry`` re-processes it (after an upgrade of the adapters, or after the exchange
corrected it) and :func:`mark_resolved` records how. ``audit`` fails while any is unresolved
(:func:`unresolved_count`); ``doctor`` and the metrics show the same count.

The table ``toogo_reconcile_quarantine`` is one of the daemon's own tables
(reconcile/storage/schema.py, ``OWN_TABLES``): ``create_own_schema`` / ``migrate up`` create it and
the schema check asks for it.
See docs/exchanges.md.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    func,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.records import UnusableRecord
from reconcile.storage.db import Database
from reconcile.storage.dialect import PROPOSED
from reconcile.storage.schema import quarantine


@dataclass(frozen=True)
class QuarantinedRecord:
    """One row of the quarantine."""

    id: int
    platform: str
    account_id: int
    symbol: str
    record_key: str
    reason: str
    raw: dict[str, Any]
    context: dict[str, str]
    close_time: datetime | None
    first_seen: datetime
    last_seen: datetime
    attempts: int
    resolved_at: datetime | None
    resolution: str | None


def _utc_naive(moment: datetime | None) -> datetime | None:
    return None if moment is None else moment.astimezone(UTC).replace(tzinfo=None)


def _aware(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=UTC)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None, microsecond=0)


async def store(db: Database, records: Sequence[UnusableRecord]) -> int:
    """Upsert ``records`` (idempotent: a record seen again bumps ``attempts`` and ``last_seen``,
    refreshes reason and payload, and is unresolved again). Returns how many were given."""
    if not records:
        return 0
    now = _now()
    rows = [
        {
            "platform": r.platform,
            "account_id": r.account_id,
            "symbol": r.symbol,
            "record_key": r.record_key[:128],
            "reason": r.reason[:4000],
            "raw_json": json.dumps(r.raw, sort_keys=True, default=str),
            "context_json": json.dumps(r.context, sort_keys=True),
            "close_time": _utc_naive(r.close_time),
            "first_seen": now,
            "last_seen": now,
            "attempts": 1,
        }
        for r in records
    ]

    upsert = db.dialect.upsert(
        quarantine,
        key=("platform", "account_id", "record_key"),
        update={
            "reason": PROPOSED,
            "raw_json": PROPOSED,
            "context_json": PROPOSED,
            "close_time": PROPOSED,
            "last_seen": PROPOSED,
            "attempts": quarantine.c.attempts + 1,
            "resolved_at": None,
            "resolution": None,
        },
    )

    async def write(conn: AsyncConnection) -> None:
        for row in rows:
            await conn.execute(upsert, row)

    await db.transaction(write, what="store quarantined records", records=len(rows))
    return len(rows)


def _row(row: Any) -> QuarantinedRecord:
    raw = json.loads(row.raw_json)
    context = json.loads(row.context_json)
    return QuarantinedRecord(
        id=int(row.id),
        platform=str(row.platform),
        account_id=int(row.account_id),
        symbol=str(row.symbol),
        record_key=str(row.record_key),
        reason=str(row.reason),
        raw=raw if isinstance(raw, dict) else {"value": raw},
        context={str(k): str(v) for k, v in context.items()} if isinstance(context, dict) else {},
        close_time=_aware(row.close_time),
        first_seen=row.first_seen.replace(tzinfo=UTC),
        last_seen=row.last_seen.replace(tzinfo=UTC),
        attempts=int(row.attempts),
        resolved_at=_aware(row.resolved_at),
        resolution=row.resolution,
    )


async def list_unresolved(
    db: Database, *, platform: str | None = None, account_id: int | None = None
) -> list[QuarantinedRecord]:
    """Unresolved records, oldest first."""
    query = select(quarantine).where(quarantine.c.resolved_at.is_(None))
    if platform is not None:
        query = query.where(quarantine.c.platform == platform)
    if account_id is not None:
        query = query.where(quarantine.c.account_id == account_id)
    query = query.order_by(quarantine.c.first_seen, quarantine.c.id)

    async def read(conn: AsyncConnection) -> list[QuarantinedRecord]:
        return [_row(row) for row in (await conn.execute(query)).all()]

    return await db.transaction(read, what="list quarantined records")


async def mark_resolved(db: Database, ids: Sequence[int], resolution: str) -> int:
    """Mark rows resolved (``resolution`` says how, e.g. ``renormalized``); returns how many
    were unresolved and now are resolved."""
    if not ids:
        return 0
    stmt = (
        update(quarantine)
        .where(quarantine.c.id.in_(list(ids)), quarantine.c.resolved_at.is_(None))
        .values(resolved_at=_now(), resolution=resolution[:64])
    )

    async def write(conn: AsyncConnection) -> int:
        return int((await conn.execute(stmt)).rowcount or 0)

    return await db.transaction(write, what="resolve quarantined records")


async def unresolved_count(db: Database) -> int:
    """How many quarantined records are unresolved (audit fails while this is above 0)."""
    query = select(func.count()).select_from(quarantine).where(quarantine.c.resolved_at.is_(None))

    async def read(conn: AsyncConnection) -> int:
        return int((await conn.execute(query)).scalar_one())

    return await db.transaction(read, what="count quarantined records")
