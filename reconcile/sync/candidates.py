"""The read before a page of exchange records is decided: which of its records are bound already,
and the local orders any of them may match (:class:`~reconcile.sync.matching.Candidate`).

A plain read, no locks: the write that follows (reconcile.sync.upsert) guards against what
changed since. The matching rules are explained in docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.charging.orders import Status
from reconcile.records import ClosedPosition
from reconcile.storage.schema import binding, trading_order
from reconcile.sync.matching import Candidate, Tolerances
from reconcile.sync.record_rows import RecordRows, is_own_order_sn


async def read_candidates(
    conn: AsyncConnection,
    record_rows: RecordRows,
    tolerances: Tolerances,
    page: Sequence[ClosedPosition],
    close_times: list[datetime],
) -> tuple[dict[str, int], list[Candidate]]:
    """(record key -> bound order id, the candidate orders) for ``page`` of ``record_rows.stream``:
    the bound orders, those any record's order ids or order_sn name, and the stream's open
    orders and closed ones near a record's close time."""
    stream, close_ids = record_rows.stream, record_rows.close_ids
    b, o = binding.c, trading_order.c
    keys = [r.record_key for r in page]
    bound = {
        r.record_key: r.order_id
        for r in await conn.execute(
            select(b.record_key, b.order_id).where(
                b.platform == stream.platform,
                b.account_id == stream.account_id,
                b.record_key.in_(keys),
            )
        )
    }
    refs = sorted({ref for r in page for ref in (*r.exchange_order_ids, r.record_key)})
    tol = tolerances.match
    lo, hi = min(close_times) - tol, max(close_times) + tol
    by_ref = [
        o.exchange_order_id.in_(refs),
        o.order_sn.in_([record_rows.order_sn(r) for r in page]),
    ]
    if close_ids:
        by_ref.append(o.close_order_id.in_(refs))
    columns = [
        o.id,
        o.robot_id,
        o.order_sn,
        o.status,
        o.symbol,
        o.direction,
        o.exchange_order_id,
        o.close_order_id if close_ids else o.exchange_order_id.label("none"),
        o.quantity,
        o.open_time,
        o.close_time,
        o.close_price,
        o.hold_duration,
        o.realized_profit,
        o.power_consumed,
    ]
    stmt = select(*columns).where(
        o.robot_id.in_(stream.robot_ids),
        or_(
            o.id.in_(sorted(set(bound.values()))),
            *by_ref,
            and_(
                o.symbol == stream.symbol,
                or_(
                    o.status == int(Status.OPEN),
                    and_(
                        o.status == int(Status.CLOSED),
                        o.close_time >= lo,
                        or_(o.close_time <= hi, o.open_time <= hi),
                    ),
                ),
            ),
        ),
    )
    found = list(await conn.execute(stmt))
    ids = [r.id for r in found]
    taken: set[int] = set()
    if ids:
        taken = {
            r[0]
            for r in await conn.execute(
                select(b.primary_order_id).where(b.primary_order_id.in_(ids))
            )
        }
    candidates = [
        Candidate(
            id=r[0],
            robot_id=r[1],
            order_sn=r[2],
            status=r[3],
            symbol=r[4],
            direction=r[5],
            exchange_order_id=r[6],
            close_order_id=r[7] if close_ids else None,
            quantity=r[8],
            open_time=r[9],
            close_time=r[10],
            close_price=r[11],
            hold_duration=r[12],
            realized_profit=r[13],
            power_consumed=r[14],
            bound=r[0] in taken,
            own=is_own_order_sn(r[2]),
        )
        for r in found
    ]
    return bound, candidates


__all__ = ["read_candidates"]
