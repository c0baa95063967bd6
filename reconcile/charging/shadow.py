"""Shadow mode (``power.mode: shadow``): what the daemon would charge, beside the live charger.

For a cutover the daemon runs next to hotgo's own engine, which stays the live charger:
everything runs - history sync, matching, pricing, the sweeps, the realtime trigger - but where
a charge would write a consume row, debit a wallet, write a ledger row and set the order's
``power_consumed``/``power_amount``, the consumer records the would-be charge once in
``toogo_reconcile_shadow`` (unique per order: ``uk_shadow_order``) instead. Nothing of hotgo's
is written, and none of its rows is locked (the engine must not wait for a bystander): the unique
key alone decides a race between two instances, whose loser's unit runs again and finds the row.

**Which orders.** Every eligible order - closed, a real close time, profitable - *whether or not
hotgo charged it*. hotgo's engine sets ``power_consumed = 1`` on what it charges, so a sweep by
``power_consumed = 0`` (the charging sweep's rule) would see only what the engine missed, and the
comparison could never say "equal". The shadow sweep reads two ranges of ``idx_reconcile_sweep``
(``power_consumed, status, close_time[, id]``), ``power_consumed = 0`` then ``= 1``, each in the
(close_time, id) keyset order the charging sweep uses, and leaves out the orders already in the
shadow table (an anti-join on ``uk_shadow_order``, one index point per candidate): each order
is recorded once, each candidate read once per sweep.

**The comparison** (:func:`compare`, ``toogo-reconcile report --shadow``): the orders charged by
either side in a period - a shadow row or an ``hg_toogo_power_consume`` row created in it - with
both sides' figures for each (a row of the other side outside the period still counts: an order
is never split by the period's edge), as ``equal``, ``different`` (both amounts), ``hotgo_only``
or ``daemon_only``. hotgo's figure is the sum of its consume rows for the order (before
``uk_user_order`` there may be several: ``hotgo_rows`` says how many). See docs/cutover.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import Select, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.charging.orders import OrderRow
from reconcile.charging.pricing import Charge
from reconcile.storage.bulk import BulkWriter
from reconcile.storage.db import Database
from reconcile.storage.schema import power_consume, shadow_charge, trading_order

_COLUMNS = (
    "order_id",
    "user_id",
    "robot_id",
    "order_sn",
    "profit_amount",
    "consume_rate",
    "discount_rate",
    "consume_power",
)


def unrecorded(scan: Select[Any]) -> Select[Any]:
    """``scan`` (of hg_trading_order) less the orders with a shadow row: a LEFT JOIN ... IS
    NULL, which probes ``uk_shadow_order`` once per candidate on every server (MariaDB turns a
    ``NOT EXISTS`` into a materialization of the whole shadow table, on every page)."""
    s = shadow_charge.c
    joined = trading_order.outerjoin(shadow_charge, s.order_id == trading_order.c.id)
    return scan.select_from(joined).where(s.order_id.is_(None))


@dataclass(frozen=True)
class WouldCharge:
    """One order's shadow decision: its charge as priced today and, when a shadow row exists
    already, the amount that row holds (then nothing is written: a duplicate)."""

    order: OrderRow
    charge: Charge
    recorded: Decimal | None = None

    @property
    def conflict(self) -> bool:
        return self.recorded is not None and self.recorded != self.charge.consume_power

    def event(self, source: str) -> tuple[str, dict[str, Any]]:
        """``would charge`` or ``skip duplicate (shadow)``, as the audit line contract has them."""
        o = self.order
        fields: dict[str, Any] = {
            "user_id": o.user_id,
            "order_id": o.id,
            "order_sn": o.order_sn,
            "source": source,
        }
        if self.recorded is not None:
            fields["consume_power"] = self.recorded
            if self.conflict:
                fields.update(conflict=True, would_charge=self.charge.consume_power)
            return "skip duplicate (shadow)", fields
        c = self.charge
        fields.update(
            robot_id=o.robot_id,
            profit=c.profit,
            discount_rate=c.discount_rate,
            consume_power=c.consume_power,
            hotgo_charged=bool(o.power_consumed),
        )
        return "would charge", fields


async def record(
    conn: AsyncConnection, priced: Sequence[tuple[OrderRow, Charge]], *, source: str, now: datetime
) -> list[WouldCharge]:
    """Record the would-be charges of ``priced`` that have no shadow row yet (one multi-row
    plain INSERT: ``uk_shadow_order`` refuses a row another instance wrote meanwhile, and the
    caller's unit runs again); the others come back with the amount their row holds."""
    if not priced:
        return []
    s = shadow_charge.c
    rows = await conn.execute(
        select(s.order_id, s.consume_power).where(s.order_id.in_([o.id for o, _ in priced]))
    )
    found: dict[int, Decimal] = {r.order_id: r.consume_power for r in rows}
    out = [WouldCharge(o, c, found.get(o.id)) for o, c in priced]
    await BulkWriter(conn).insert(
        shadow_charge,
        _COLUMNS,
        [
            (
                o.id,
                o.user_id,
                o.robot_id,
                o.order_sn,
                c.profit,
                c.consume_rate,
                c.discount_rate,
                c.consume_power,
            )
            for o, c in priced
            if o.id not in found
        ],
        {"source": source, "created_at": now},
    )
    return out


# -- the comparison ------------------------------------------------------------------------------


class Verdict(StrEnum):
    EQUAL = "equal"
    DIFFERENT = "different"
    HOTGO_ONLY = "hotgo_only"
    DAEMON_ONLY = "daemon_only"


@dataclass(frozen=True)
class ShadowComparison:
    """One order charged by hotgo, by the daemon's shadow, or both."""

    order_id: int
    user_id: int
    order_sn: str
    verdict: Verdict
    hotgo: Decimal | None  # Σ consume_power of its hg_toogo_power_consume rows
    daemon: Decimal | None  # the shadow row's consume_power
    hotgo_rows: int  # how many consume rows hotgo wrote for it
    charged_at: datetime  # the earlier of the two sides' created_at (database time)

    @property
    def difference(self) -> Decimal | None:
        """daemon - hotgo, when both charged."""
        if self.hotgo is None or self.daemon is None:
            return None
        return self.daemon - self.hotgo


@dataclass(frozen=True)
class VerdictTotal:
    verdict: Verdict
    orders: int
    hotgo: Decimal
    daemon: Decimal


@dataclass(frozen=True)
class ShadowReport:
    since: datetime  # database time, like the rows' created_at
    until: datetime
    orders: list[ShadowComparison]

    def totals(self) -> list[VerdictTotal]:
        """One line per verdict (every verdict, zero included), in the enum's order."""
        zero = Decimal("0.00000000")  # the columns' scale
        out = []
        for verdict in Verdict:
            rows = [r for r in self.orders if r.verdict is verdict]
            out.append(
                VerdictTotal(
                    verdict,
                    len(rows),
                    sum((r.hotgo or zero for r in rows), zero),
                    sum((r.daemon or zero for r in rows), zero),
                )
            )
        return out


async def compare(db: Database, *, since: datetime, until: datetime) -> ShadowReport:
    """The orders either side charged in [since, until) (aware instants), compared; read in
    one snapshot. hotgo's rows are added up here, in Decimal (SQLite keeps decimals as text)."""
    lo, hi = db.to_db_time(since), db.to_db_time(until)
    s, c = shadow_charge.c, power_consume.c
    shadow_in = (s.created_at >= lo) & (s.created_at < hi)
    hotgo_in = (c.created_at >= lo) & (c.created_at < hi)
    daemon_sql = select(s.order_id, s.user_id, s.order_sn, s.consume_power, s.created_at).where(
        or_(shadow_in, s.order_id.in_(select(c.order_id).where(hotgo_in)))
    )
    hotgo_sql = (
        select(c.order_id, c.user_id, c.order_sn, c.consume_power, c.created_at)
        .where(or_(hotgo_in, c.order_id.in_(select(s.order_id).where(shadow_in))))
        .order_by(c.id)
    )

    async def read(conn: AsyncConnection) -> ShadowReport:
        daemon = {r.order_id: _Side.of(r) for r in await conn.execute(daemon_sql)}
        hotgo: dict[int, _Side] = {}
        for r in await conn.execute(hotgo_sql):
            seen = hotgo.get(r.order_id)
            hotgo[r.order_id] = _Side.of(r) if seen is None else seen.plus(r)
        ids = sorted({*daemon, *hotgo})
        return ShadowReport(lo, hi, [_compared(i, hotgo.get(i), daemon.get(i)) for i in ids])

    return await db.transaction(read, what="compare the shadow charges", snapshot=True)


@dataclass(frozen=True)
class _Side:
    user_id: int
    order_sn: str
    amount: Decimal
    created_at: datetime
    rows: int = 1

    @classmethod
    def of(cls, r: Any) -> _Side:
        return cls(r.user_id, r.order_sn, r.consume_power, r.created_at)

    def plus(self, r: Any) -> _Side:  # one more consume row for the order
        first = min(self.created_at, r.created_at)
        return _Side(
            self.user_id, self.order_sn, self.amount + r.consume_power, first, self.rows + 1
        )


def _compared(order_id: int, hotgo: _Side | None, daemon: _Side | None) -> ShadowComparison:
    if hotgo is None:
        verdict = Verdict.DAEMON_ONLY
    elif daemon is None:
        verdict = Verdict.HOTGO_ONLY
    else:
        verdict = Verdict.EQUAL if hotgo.amount == daemon.amount else Verdict.DIFFERENT
    sides = [x for x in (daemon, hotgo) if x is not None]  # one at least
    return ShadowComparison(
        order_id=order_id,
        user_id=sides[0].user_id,
        order_sn=sides[0].order_sn,
        verdict=verdict,
        hotgo=hotgo.amount if hotgo else None,
        daemon=daemon.amount if daemon else None,
        hotgo_rows=hotgo.rows if hotgo else 0,
        charged_at=min(x.created_at for x in sides),
    )


__all__ = [
    "ShadowComparison",
    "ShadowReport",
    "Verdict",
    "VerdictTotal",
    "WouldCharge",
    "compare",
    "record",
    "unrecorded",
]
