"""The body of every charging transaction: what becomes of each order the caller has read (and,
when charging, locked), and the writes that follow.

For each order, in this order: not eligible (:func:`reconcile.charging.orders.ineligibility`);
already charged - a consume row exists: ``skip duplicate``, the order's flag and power_amount
repaired from it, never a second debit; flagged charged without a consume row: not eligible
(``audit`` reports it); a leg or a held row (reconcile.charging.trades): not charged; otherwise
charged (reconcile.charging.debits). Shadow mode records the would-be charge instead
(reconcile.charging.shadow). The steps are explained in docs/charging.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.charging import shadow
from reconcile.charging.debits import debit, debit_in_sql, existing_consumes, mark_charged
from reconcile.charging.orders import OrderRow
from reconcile.charging.outcomes import ChargeResult, Outcome, PowerMode, Source, UnitOutcome
from reconcile.charging.price_inputs import discounts
from reconcile.charging.pricing import Charge, Discount, PowerRules, compute_charge
from reconcile.charging.trade_rows import TradeRow
from reconcile.charging.trades import TradeJudge
from reconcile.charging.verdicts import Verdict
from reconcile.storage.db import Database
from reconcile.storage.schema import skipped_duplicate


class RowCharger:
    """Charges (or records, in shadow mode) orders read inside the caller's transaction."""

    def __init__(self, db: Database, rules: PowerRules, mode: PowerMode, judge: TradeJudge) -> None:
        self.db = db
        self.rules = rules
        self.mode = mode
        self.judge = judge

    async def charge_rows(
        self,
        conn: AsyncConnection,
        orders: Sequence[OrderRow],
        source: Source,
        *,
        waited: bool,
        trade_rows: Mapping[int, TradeRow] | None = None,
    ) -> UnitOutcome:
        """``orders``: locked rows, with ``charged`` as the locking statement read it. That
        statement's snapshot may predate the lock (PostgreSQL rechecks a row changed under it
        but keeps the snapshot for the subquery): after waiting for locks (``waited``) it is
        read again, fresh; with SKIP LOCKED only where the row says charged and the snapshot
        knew no consume row. A consume row missed otherwise meets ``uk_user_order`` (or
        ``post_consumes``' count) and the unit runs again. ``trade_rows``: the same rows as
        the trade judge reads them, when the locking read carried its columns too."""
        out = UnitOutcome()
        now = self.db.now()
        eligible: list[OrderRow] = []
        for order in orders:
            reason = order.ineligibility()
            if reason is None:
                eligible.append(order)
            else:
                out.results.append(ChargeResult(order.id, Outcome.NOT_ELIGIBLE, reason=reason))
        if not eligible:
            return out
        if self.mode is PowerMode.SHADOW:
            trades = await self._trades_only(conn, eligible, out, trade_rows)
            if trades:
                await self._shadow(conn, trades, source, now, out)
            return out

        stale = (
            eligible if waited else [o for o in eligible if o.power_consumed and o.charged is None]
        )
        if stale:
            fresh = await existing_consumes(conn, stale)
            recheck = {o.id for o in stale}
            eligible = [
                o._replace(charged=fresh.get((o.user_id, o.id))) if o.id in recheck else o
                for o in eligible
            ]
        # the server prices a page itself when it can (see debits.debit_in_sql): discounts are
        # then read here only for orders already charged, to tell a conflicting amount
        in_sql = self.db.returning
        priced = [o for o in eligible if not in_sql or o.charged is not None]
        vip = await discounts(conn, {o.user_id for o in priced}) if priced else {}
        to_charge: list[OrderRow] = []
        flag: set[int] = set()  # orders to mark power_consumed = 1 from their consume row
        for order in eligible:
            found = order.charged
            if found is not None:
                charge = self._price(order, vip)
                out.results.append(self._duplicate(order, found, charge, source, out, flag))
            elif order.power_consumed:
                out.results.append(
                    ChargeResult(
                        order.id,
                        Outcome.NOT_ELIGIBLE,
                        reason="flagged power_consumed=1 but has no consume record (see audit)",
                    )
                )
            else:
                to_charge.append(order)

        to_charge = await self._trades_only(conn, to_charge, out, trade_rows)
        if to_charge:
            if in_sql:
                await debit_in_sql(self.db, self.rules, conn, to_charge, source, now, out)
            else:
                charges = [(o, self._price(o, vip)) for o in to_charge]
                await debit(self.db, self.rules, conn, charges, source, now, out)
            flag.update(o.id for o in to_charge)
        if flag:
            await mark_charged(conn, sorted(flag), now)
        if out.skips:  # in the same transaction as the decision: report's skipped duplicates
            await conn.execute(
                skipped_duplicate.insert(), [{**row, "created_at": now} for row in out.skips]
            )
        return out

    async def _trades_only(
        self,
        conn: AsyncConnection,
        orders: list[OrderRow],
        out: UnitOutcome,
        rows: Mapping[int, TradeRow] | None,
    ) -> list[OrderRow]:
        """Those of ``orders`` that are trades; a leg or a held row gets its result here
        (reconcile.charging.trades decides; a leg found now is recorded in this transaction)."""
        if not orders:
            return orders
        judged = await self.judge.judge(conn, [o.id for o in orders], rows=rows)
        trades: list[OrderRow] = []
        for order in orders:
            judgement = judged.get(order.id)
            if judgement is None or judgement.charge:
                trades.append(order)
                continue
            outcome = {Verdict.LEG: Outcome.LEG, Verdict.HELD: Outcome.HELD}.get(
                judgement.verdict, Outcome.NOT_ELIGIBLE
            )
            out.results.append(ChargeResult(order.id, outcome, reason=judgement.reason))
            if judgement.new:
                out.events.append(
                    (
                        "leg recognized",
                        {
                            "order_id": order.id,
                            "user_id": order.user_id,
                            "order_sn": order.order_sn,
                            "trade_order_id": judgement.trade_order_id,
                            "rule": str(judgement.rule),
                            "profit": order.realized_profit,
                        },
                    )
                )
        return trades

    async def _shadow(
        self,
        conn: AsyncConnection,
        orders: list[OrderRow],
        source: Source,
        now: datetime,
        out: UnitOutcome,
    ) -> None:
        """Shadow mode: the would-be charges recorded once each, priced by the same rule;
        whatever hotgo itself charged or flagged is neither read nor touched."""
        vip = await discounts(conn, {o.user_id for o in orders})
        priced = [(o, self._price(o, vip)) for o in orders]
        for would in await shadow.record(conn, priced, source=str(source), now=now):
            out.events.append(would.event(str(source)))
            duplicate = would.recorded is not None
            out.results.append(
                ChargeResult(
                    would.order.id,
                    Outcome.SKIPPED_DUPLICATE if duplicate else Outcome.WOULD_CHARGE,
                    consume_power=would.recorded if duplicate else would.charge.consume_power,
                    conflict=would.conflict,
                )
            )

    def _price(self, order: OrderRow, vip: dict[int, Discount]) -> Charge:
        return compute_charge(
            order.realized_profit or Decimal(0),
            self.rules,
            vip.get(order.user_id, Discount()),
        )

    def _duplicate(
        self,
        order: OrderRow,
        found: Decimal,
        charge: Charge,
        source: Source,
        out: UnitOutcome,
        flag: set[int],
    ) -> ChargeResult:
        repaired = order.power_consumed != 1 or order.power_amount != found
        if repaired:
            flag.add(order.id)
        conflict = found != charge.consume_power
        fields: dict[str, Any] = {
            "user_id": order.user_id,
            "order_id": order.id,
            "order_sn": order.order_sn,
            "consume_power": found,
            "source": str(source),
            "repaired_flag": repaired,
        }
        if conflict:
            fields.update(conflict=True, would_charge=charge.consume_power)
        out.events.append(("skip duplicate", fields))
        out.skips.append(
            {
                "user_id": order.user_id,
                "order_id": order.id,
                "source": str(source),
                "consume_power": found,
                "would_charge": charge.consume_power if conflict else None,
                "repaired_flag": int(repaired),
            }
        )
        return ChargeResult(
            order.id, Outcome.SKIPPED_DUPLICATE, consume_power=found, conflict=conflict
        )


__all__ = ["RowCharger"]
