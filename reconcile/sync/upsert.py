"""One page of exchange records into hg_trading_order: read, decide (sync.matching), write.

The read is plain (no locks); the write is one transaction whose guards make a stale read
harmless: an order closed here must still be open (``WHERE status = 1``), and every record's
binding is INSERTed under ``uk_binding_record`` / ``uk_binding_order``. Either guard failing means
another writer got there first - the page is read and decided again (:class:`Conflict`).

What is written, per rule (see reconcile.sync.matching):

- order id / close time / binding: nothing but what is missing on the order (close price, a
  placeholder or missing close time, hold duration, close_order_id where the column exists);
  ``exchange_order_id`` is the engine's opening id and is never written;
- open: the order is closed with the record's figures (close_reason ``exchange_sync``);
- insert: a closed order (its row: reconcile.sync.record_rows);
- part / ambiguous: only the binding.

Every binding is written with its record, normalized and raw (``toogo_reconcile_record``): the
source end of the order's chain that ``report --order`` shows. Which of the orders written are
then charged is asked of the one rule, ``reconcile.charging.orders.ineligibility``. The read is
reconcile.sync.candidates; the rows' contents reconcile.sync.record_rows. See
docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.charging.corrections import Sighting
from reconcile.charging.orders import Status, awaits_charge, ineligibility
from reconcile.charging.verdicts import Judgement, Verdict, record_legs
from reconcile.charging.verdicts import Rule as TradeRule
from reconcile.errors import DatabaseError
from reconcile.records import ClosedPosition, ProfitBasis
from reconcile.storage.contract import LiveSchema
from reconcile.storage.db import Database
from reconcile.storage.schema import binding, exchange_record, record_order_id, trading_order
from reconcile.sync.candidates import read_candidates
from reconcile.sync.matching import Candidate, Decision, Kind, Rule, Tolerances, decide
from reconcile.sync.record_rows import RecordRows, StreamRef, stored_profit

log = structlog.get_logger("reconcile.history")

LEG_RULE = TradeRule.EXCHANGE_RECORD


class Conflict(DatabaseError):
    """What the page read changed before its write: read and decide again."""


@dataclass
class PageResult:
    decisions: list[Decision]
    to_charge: list[int] = field(default_factory=list)

    def sightings(self, basis: ProfitBasis) -> list[Sighting]:
        """What the page's records say of the closed orders they are bound to (the orders
        whose charge a correction may concern, reconcile.charging.corrections)."""
        return [
            Sighting(d.order.id, stored_profit(d.record, basis), d.record.record_key)
            for d in self.decisions
            if d.order is not None
            and d.order.status == Status.CLOSED
            and (d.kind is Kind.ORDER or d.rule is Rule.BINDING)
        ]


class PageWriter:
    def __init__(
        self,
        db: Database,
        stream: StreamRef,
        basis: ProfitBasis,
        schema: LiveSchema,
        tolerances: Tolerances,
    ) -> None:
        self.db = db
        self.stream = stream
        self.basis = basis
        self.tolerances = tolerances
        self.record_rows = RecordRows(
            db, stream, basis, close_ids=schema.has(trading_order, "close_order_id")
        )

    async def run(self, page: Sequence[ClosedPosition]) -> PageResult:
        close_times = [self.db.to_db_time(r.close_time) for r in page]
        bound, candidates = await self.db.transaction(
            lambda conn: read_candidates(
                conn, self.record_rows, self.tolerances, page, close_times
            ),
            what="read page candidates",
            account_id=self.stream.account_id,
            symbol=self.stream.symbol,
        )
        decisions = decide(
            page,
            close_times,
            candidates,
            bound,
            self.stream.symbol,
            self.tolerances,
            {r.record_key: self.record_rows.order_sn(r) for r in page},
        )
        plan = [(d, t) for d, t in zip(decisions, close_times, strict=True) if self._writes(d, t)]
        # bound on an earlier attempt whose charge never ran (a crash between a page's commit
        # and its charge, before the cursor moved): charge them now, whether or not the page
        # writes anything else; the consumer is idempotent
        unpaid = [
            d.order.id
            for d in decisions
            if d.rule is Rule.BINDING
            and d.order is not None
            and awaits_charge(
                d.order.status, d.order.realized_profit, d.order.close_time, d.order.power_consumed
            )
        ]
        if not plan:
            return PageResult(decisions, unpaid)
        events: list[tuple[str, dict[str, Any]]] = []

        async def write(conn: AsyncConnection) -> list[int]:
            events.clear()
            return await self._write(conn, plan, events)

        to_charge = await self.db.transaction(
            write,
            what="upsert closed positions",
            account_id=self.stream.account_id,
            symbol=self.stream.symbol,
            records=len(plan),
        )
        for event, fields in events:  # after COMMIT
            (log.warning if event != "ambiguous match" else log.error)(event, **fields)
        return PageResult(decisions, to_charge + unpaid)

    # -- write --------------------------------------------------------------------------------

    def _writes(self, d: Decision, close_time: datetime) -> bool:
        if d.kind is not None:
            return True  # a binding to write (and maybe an order)
        return d.order is not None and bool(self.record_rows.missing(d.order, d.record, close_time))

    async def _write(
        self,
        conn: AsyncConnection,
        plan: list[tuple[Decision, datetime]],
        events: list[tuple[str, dict[str, Any]]],
    ) -> list[int]:
        o = trading_order.c
        now = self.db.now()
        order_of: dict[str, int] = {}
        to_charge: list[int] = []
        inserts = [(d, t) for d, t in plan if d.rule is Rule.INSERT]
        if inserts:
            rows = [self.record_rows.new_order(d.record, t, now) for d, t in inserts]
            await conn.execute(trading_order.insert(), rows)
            sns = {
                row["order_sn"]: d.record.record_key
                for row, (d, _) in zip(rows, inserts, strict=True)
            }
            for oid, sn in await conn.execute(select(o.id, o.order_sn).where(o.order_sn.in_(sns))):
                order_of[sns[sn]] = oid
            for (d, _), row in zip(inserts, rows, strict=True):
                if ineligibility(row["status"], row["realized_profit"], row["close_time"]) is None:
                    to_charge.append(order_of[d.record.record_key])
        for d, close_time in plan:
            order = d.order
            if order is None:
                continue
            order_of[d.record.record_key] = order.id
            profit = stored_profit(d.record, self.basis)
            if d.rule is Rule.OPEN:
                await self._close(conn, order, d.record, close_time, profit, now)
                if ineligibility(Status.CLOSED, profit, close_time) is None:
                    to_charge.append(order.id)
                continue
            values = self.record_rows.missing(order, d.record, close_time)
            if values:
                values["updated_at"] = now
                await conn.execute(trading_order.update().where(o.id == order.id).values(**values))
            if d.kind is Kind.ORDER or d.rule is Rule.BINDING:
                self._check_profit(order, d.record, profit, events)
            if d.kind is Kind.AMBIGUOUS:
                events.append(
                    (
                        "ambiguous match",
                        self._fields(d, action="bound as ambiguous; nothing inserted"),
                    )
                )
        legs = [
            Judgement(leg.id, Verdict.LEG, LEG_RULE, order_of.get(d.record.record_key))
            for d, _ in plan
            for leg in d.legs
        ]
        if (
            legs
        ):  # rows the records' closing orders opened: never charged (reconcile.charging.trades)
            await record_legs(conn, self.db, legs)
        bindings = [
            {
                "platform": self.stream.platform,
                "account_id": self.stream.account_id,
                "record_key": d.record.record_key,
                "order_id": order_of[d.record.record_key],
                "primary_order_id": order_of[d.record.record_key] if d.kind is Kind.ORDER else None,
                "kind": str(d.kind),
                "rule": str(d.rule),
                "created_at": now,
            }
            for d, _ in plan
            if d.kind is not None
        ]
        if bindings:
            await conn.execute(binding.insert(), bindings)
            records = [
                self.record_rows.record_row(d.record, t, now) for d, t in plan if d.kind is not None
            ]
            await conn.execute(exchange_record.insert(), records)
            order_ids = [
                {
                    "platform": self.stream.platform,
                    "account_id": self.stream.account_id,
                    "record_key": d.record.record_key,
                    "exchange_order_id": ref,
                }
                for d, _ in plan
                if d.kind is not None
                for ref in sorted(set(d.record.exchange_order_ids))
                if ref
            ]
            if (
                order_ids
            ):  # the rows these closing orders opened are legs (reconcile.charging.trades)
                await conn.execute(record_order_id.insert(), order_ids)
        return to_charge

    async def _close(
        self,
        conn: AsyncConnection,
        order: Candidate,
        record: ClosedPosition,
        close_time: datetime,
        profit: Decimal,
        now: datetime,
    ) -> None:
        o = trading_order.c
        values = self.record_rows.closing(order, record, close_time, profit, now)
        result = await conn.execute(
            trading_order.update()
            .where(o.id == order.id, o.status == int(Status.OPEN))
            .values(**values)
        )
        if result.rowcount != 1:
            raise Conflict(f"order {order.id} is no longer open")

    def _check_profit(
        self,
        order: Candidate,
        record: ClosedPosition,
        profit: Decimal,
        events: list[tuple[str, dict[str, Any]]],
    ) -> None:
        if order.status == Status.CLOSED and order.realized_profit != profit:
            events.append(
                (
                    "profit mismatch",
                    {
                        "order_id": order.id,
                        "robot_id": order.robot_id,
                        "record_key": record.record_key,
                        "local": order.realized_profit,
                        "exchange": profit,
                        "charged": bool(order.power_consumed),
                    },
                )
            )

    def _fields(self, d: Decision, **extra: Any) -> dict[str, Any]:
        return {
            "platform": self.stream.platform,
            "account_id": self.stream.account_id,
            "symbol": self.stream.symbol,
            "record_key": d.record.record_key,
            "order_id": d.order.id if d.order else None,
            "rule": str(d.rule),
            **extra,
        }


__all__ = ["Conflict", "PageResult", "PageWriter"]
