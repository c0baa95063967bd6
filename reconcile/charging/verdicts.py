"""What a closed, profitable row is - a trade, a leg, held or dismissed - and the table that
remembers it (``toogo_reconcile_verdict``, one row per order).

reconcile.charging.trades decides (:class:`Judgement`, naming the :class:`Rule` that applied);
the legs it finds and the operator's decisions (``held charge`` / ``held dismiss``) are written
here, and read back as rule 1 by the next judgement and as :func:`settled_rows` by the sweep.
The rules are explained in docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.storage.db import Database
from reconcile.storage.schema import verdict


class Verdict(StrEnum):
    TRADE = "trade"
    LEG = "leg"
    HELD = "held"
    DISMISSED = "dismissed"


class Rule(StrEnum):
    OPERATOR = "operator"
    CLOSE_ORDER_ID = "close_order_id"
    EXCHANGE_RECORD = "exchange_record"
    BOUND = "bound"
    SHAPE = "shape"
    AWAITING_SYNC = "awaiting_sync"
    LOCAL = "local"


@dataclass(frozen=True)
class Judgement:
    order_id: int
    verdict: Verdict
    rule: Rule
    trade_order_id: int | None = None  # for a leg or a possible leg: the trade's row
    new: bool = False  # a leg found by this judgement (recorded in its transaction)

    @property
    def charge(self) -> bool:
        return self.verdict is Verdict.TRADE

    @property
    def reason(self) -> str:
        """Why the row is not charged (for a leg, a held or a dismissed row)."""
        of = f" of order {self.trade_order_id}" if self.trade_order_id is not None else ""
        return {
            Verdict.LEG: f"a closing leg{of} (rule {self.rule})",
            Verdict.HELD: (
                f"held: possibly the closing leg{of}"
                if self.rule is Rule.SHAPE
                else "held: awaiting the exchange sync of its stream"
            ),
            Verdict.DISMISSED: "dismissed by an operator",
            Verdict.TRADE: "a trade",
        }[self.verdict]


async def recorded_verdicts(conn: AsyncConnection, ids: list[int]) -> dict[int, Judgement]:
    """Rule 1: what toogo_reconcile_verdict says of ``ids``."""
    v = verdict.c
    stmt = select(v.order_id, v.verdict, v.rule, v.trade_order_id).where(v.order_id.in_(ids))
    out: dict[int, Judgement] = {}
    for order_id, kind, rule, trade_id in await conn.execute(stmt):
        known = Rule(rule) if rule in set(Rule) else Rule.OPERATOR
        out[order_id] = Judgement(order_id, Verdict(kind), known, trade_id)
    return out


def settled_rows(order_id: Any) -> Any:
    """EXISTS: the order is a leg or dismissed (the sweep's scan passes over those)."""
    v = verdict.c
    return (
        select(v.order_id)
        .where(v.order_id == order_id, v.verdict.in_([str(Verdict.LEG), str(Verdict.DISMISSED)]))
        .exists()
    )


async def record_legs(conn: AsyncConnection, db: Database, legs: Sequence[Judgement]) -> None:
    """Write legs to toogo_reconcile_verdict (a leg found already stays as it was found)."""
    now = db.now()
    rows = [
        {
            "order_id": j.order_id,
            "verdict": str(Verdict.LEG),
            "rule": str(j.rule),
            "trade_order_id": j.trade_order_id,
            "actor": "daemon",
            "note": None,
            "created_at": now,
        }
        for j in legs
    ]
    await conn.execute(db.dialect.upsert(verdict, key=("order_id",)), rows)


__all__ = ["Judgement", "Rule", "Verdict", "record_legs", "recorded_verdicts", "settled_rows"]
