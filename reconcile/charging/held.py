"""Held rows: the closed, profitable rows reconcile.charging.trades does not charge yet, and the
operator's two decisions on one (``toogo-reconcile held list | charge | dismiss``).

A row is held while it may be another row's closing leg (rule ``shape``) or while the exchange
sync has not yet read up to its close (rule ``awaiting_sync``). The next sync releases it when it
binds the row's close (a trade) or finds it a leg; otherwise an operator decides:

- ``charge`` records the verdict ``trade`` (with the operator's name and note) and charges the
  row through the consumer, exactly once as always;
- ``dismiss`` records the verdict ``dismissed``: the row is never charged.

Each decision is one row of ``toogo_reconcile_verdict`` (one per order): repeating it changes
nothing; contradicting a recorded verdict (charging a dismissed row or a leg the daemon found,
dismissing a charged or a charged-as-trade row) is refused with the recorded verdict named, and
so is charging a row the rules prove a leg (close id, exchange record) before it was recorded.
See docs/charging.md, "One trade, one charge".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.charging.orders import eligible_sql
from reconcile.charging.trades import TradeJudge
from reconcile.charging.verdicts import Verdict, settled_rows
from reconcile.errors import OrderNotFound, PermanentError
from reconcile.storage.db import Database
from reconcile.storage.schema import power_consume, trading_order, verdict

#: candidate rows read (and judged, read-only) per statement set by `held list`
HELD_CANDIDATES_PER_READ = 1000


@dataclass(frozen=True)
class HeldRow:
    order_id: int
    user_id: int
    robot_id: int
    order_sn: str
    close_time: datetime | None
    realized_profit: Decimal | None
    rule: str
    trade_order_id: int | None
    reason: str


async def list_held(db: Database, judge: TradeJudge, *, since: datetime) -> list[HeldRow]:
    """Every held row closed since ``since`` (database time), oldest first. Read-only."""
    o = trading_order.c
    out: list[HeldRow] = []
    position: tuple[datetime, int] = (since, 0)
    while True:

        async def page(conn: AsyncConnection, after: tuple[datetime, int] = position) -> list[Any]:
            stmt = (
                select(o.id, o.user_id, o.robot_id, o.order_sn, o.close_time, o.realized_profit)
                .where(
                    *eligible_sql(db.dialect),
                    db.dialect.after((o.close_time, o.id), after),
                    ~settled_rows(o.id),
                )
                .order_by(o.close_time, o.id)
                .limit(HELD_CANDIDATES_PER_READ)
            )
            rows = list(await conn.execute(stmt))
            judged = await judge.judge(conn, [r.id for r in rows], record=False)
            return [(r, judged.get(r.id)) for r in rows]

        rows = await db.transaction(page, what="list held orders")
        for row, judgement in rows:
            if judgement is not None and judgement.verdict is Verdict.HELD:
                out.append(
                    HeldRow(
                        order_id=row.id,
                        user_id=row.user_id,
                        robot_id=row.robot_id,
                        order_sn=row.order_sn,
                        close_time=row.close_time,
                        realized_profit=row.realized_profit,
                        rule=str(judgement.rule),
                        trade_order_id=judgement.trade_order_id,
                        reason=judgement.reason,
                    )
                )
        if len(rows) < HELD_CANDIDATES_PER_READ:
            return out
        last = rows[-1][0]
        position = (last.close_time, last.id)


@dataclass(frozen=True)
class Decided:
    order_id: int
    verdict: Verdict
    changed: bool  # False: the same decision was recorded before


async def decide(
    db: Database,
    order_id: int,
    kind: Verdict,
    *,
    actor: str,
    note: str | None,
    judge: TradeJudge | None = None,
) -> Decided:
    """Record an operator's ``trade`` or ``dismissed`` for one order (see the module's doc).
    A row the rules prove a leg (close id, exchange record) is never charged: ``trade`` on it
    is refused, as for a leg recorded already."""
    judge = judge or TradeJudge(db)
    if kind not in (Verdict.TRADE, Verdict.DISMISSED):
        raise ValueError(f"an operator decides trade or dismissed, not {kind}")
    actor = actor.strip()
    if not actor:
        raise PermanentError("--by must name who decides")

    async def unit(conn: AsyncConnection) -> Decided:
        o, v = trading_order.c, verdict.c
        found = (
            await conn.execute(select(o.id, o.user_id).where(o.id == order_id).with_for_update())
        ).first()
        if found is None:
            raise OrderNotFound(order_id)
        recorded = (
            await conn.execute(
                select(v.verdict, v.rule, v.trade_order_id, v.actor, v.created_at).where(
                    v.order_id == order_id
                )
            )
        ).first()
        if recorded is not None:
            if recorded.verdict == str(kind):
                return Decided(order_id, kind, changed=False)
            of = f" of order {recorded.trade_order_id}" if recorded.trade_order_id else ""
            raise PermanentError(
                f"order {order_id} is recorded as {recorded.verdict}{of} (rule {recorded.rule},"
                f" by {recorded.actor} at {recorded.created_at}); refused"
            )
        if kind is Verdict.TRADE:
            judged = (await judge.judge(conn, [order_id], record=False)).get(order_id)
            if judged is not None and judged.verdict is Verdict.LEG:
                raise PermanentError(
                    f"order {order_id} is {judged.reason}: a leg is never charged; refused"
                )
        if kind is Verdict.DISMISSED:
            c = power_consume.c
            charged = (
                await conn.execute(
                    select(c.id).where(c.user_id == found.user_id, c.order_id == order_id).limit(1)
                )
            ).first()
            if charged is not None:
                raise PermanentError(
                    f"order {order_id} is charged already (consume row {charged.id}); a refund"
                    " is the runbook's, not a dismissal"
                )
        await conn.execute(
            verdict.insert().values(
                order_id=order_id,
                verdict=str(kind),
                rule="operator",
                trade_order_id=None,
                actor=actor[:64],
                note=(note or None) and note[:255],
                created_at=db.now(),
            )
        )
        return Decided(order_id, kind, changed=True)

    return await db.transaction(
        unit, what=f"record verdict {kind}", retry_duplicate="verdict recorded concurrently"
    )


__all__ = ["Decided", "HeldRow", "decide", "list_held"]
