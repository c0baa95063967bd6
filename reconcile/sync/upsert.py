"""One page of exchange records into hg_trading_order: read, decide (reconcile.matching), write.

The read is plain (no locks); the write is one transaction whose guards make a stale read
harmless: an order closed here must still be open (``WHERE status = 1``), and every record's
binding is INSERTed under ``uk_binding_record`` / ``uk_binding_order``. Either guard failing means
another writer got there first - the page is read and decided again (:class:`Conflict`).

What is written, per rule (see reconcile.matching):

- order id / close time / binding: nothing but what is missing on the order (close price, a
  placeholder or missing close time, hold duration, close_order_id where the column exists);
  ``exchange_order_id`` is the engine's opening id and is never written;
- open: the order is closed with the record's figures (close_reason ``exchange_sync``);
- insert: a closed order; ``margin`` (NOT NULL in upstream) is derived from the record as
  open price × size ÷ leverage (the close price where the exchange gives no open price);
- part / ambiguous: only the binding.

Every binding is written with its record, normalized and raw (``toogo_reconcile_record``): the
source end of the order's chain that ``report --order`` shows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import structlog
from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.charging.corrections import Sighting
from reconcile.charging.orders import Status, ineligibility, real_close_time
from reconcile.charging.trades import Judgement, Verdict, record_legs
from reconcile.charging.trades import Rule as TradeRule
from reconcile.errors import DatabaseError
from reconcile.records import ClosedPosition, ProfitBasis, profit_of
from reconcile.storage.contract import LiveSchema
from reconcile.storage.db import Database
from reconcile.storage.schema import binding, exchange_record, record_order_id, trading_order
from reconcile.sync.matching import Candidate, Decision, Kind, Rule, Tolerances, decide

log = structlog.get_logger("reconcile.history")

PROFIT_QUANTUM = Decimal("0.0001")  # hg_trading_order.realized_profit is DECIMAL(15,4)
PRICE_QUANTUM = Decimal("0.0001")
QTY_QUANTUM = Decimal("0.00000001")
CLOSE_REASON = "exchange_sync"
LEG_RULE = TradeRule.EXCHANGE_RECORD


class Conflict(DatabaseError):
    """What the page read changed before its write: read and decide again."""


@dataclass(frozen=True)
class StreamRef:
    """What the writer needs of a stream: its account, symbol and robots."""

    platform: str
    account_id: int
    symbol: str
    robot_ids: tuple[int, ...]
    #: (tenant_id, user_id, robot_id, leverage) of the robot an inserted order is filed under
    owner: tuple[int, int, int, int]


def stored_profit(record: ClosedPosition, basis: ProfitBasis) -> Decimal:
    """The profit the platform charges on (:func:`~reconcile.records.profit_of`), as
    ``hg_trading_order.realized_profit`` holds it."""
    return profit_of(record, basis).quantize(PROFIT_QUANTUM, rounding=ROUND_HALF_UP)


def order_sn_for(platform: str, account_id: int, record_key: str) -> str:
    """A deterministic order_sn (42 chars) for a position synthesized from an exchange record."""
    digest = hashlib.sha256(f"{platform}:{account_id}:{record_key}".encode()).hexdigest()
    return f"SX{digest[:40]}"


def normalized(record: ClosedPosition) -> dict[str, Any]:
    """A record's normalized fields as JSON values: exact decimal strings, ISO times."""
    out: dict[str, Any] = {}
    for f in dataclass_fields(record):
        value = getattr(record, f.name)
        if f.name == "raw":
            continue
        if isinstance(value, Decimal):
            value = format(value, "f")
        elif isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def is_own_order_sn(order_sn: str) -> bool:
    """Whether an order_sn is one :func:`order_sn_for` makes (the engine's start TO, SUB, ...)."""
    return len(order_sn) == 42 and order_sn.startswith("SX")


@dataclass
class PageResult:
    decisions: list[Decision]
    to_charge: list[int] = field(default_factory=list)

    def sightings(self, basis: ProfitBasis) -> list[Sighting]:
        """What the page's records say of the closed orders they are bound to (the orders
        whose charge a correction may concern, reconcile.corrections)."""
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
        self.close_ids = schema.has(trading_order, "close_order_id")
        self.tolerances = tolerances

    async def run(self, page: Sequence[ClosedPosition]) -> PageResult:
        close_times = [self.db.to_db_time(r.close_time) for r in page]
        bound, candidates = await self.db.transaction(
            lambda conn: self._read(conn, page, close_times),
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
            {r.record_key: self._order_sn(r) for r in page},
        )
        plan = [(d, t) for d, t in zip(decisions, close_times, strict=True) if self._writes(d, t)]
        # bound on an earlier attempt whose charge never ran (a crash between a page's commit
        # and its charge, before the cursor moved): charge them now, whether or not the page
        # writes anything else; the consumer is idempotent
        unpaid = [
            d.order.id
            for d in decisions
            if d.rule is Rule.BINDING and d.order is not None and _awaits_charge(d.order)
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

    # -- read ---------------------------------------------------------------------------------

    async def _read(
        self, conn: AsyncConnection, page: Sequence[ClosedPosition], close_times: list[datetime]
    ) -> tuple[dict[str, int], list[Candidate]]:
        b, o = binding.c, trading_order.c
        keys = [r.record_key for r in page]
        bound = {
            r.record_key: r.order_id
            for r in await conn.execute(
                select(b.record_key, b.order_id).where(
                    b.platform == self.stream.platform,
                    b.account_id == self.stream.account_id,
                    b.record_key.in_(keys),
                )
            )
        }
        refs = sorted({ref for r in page for ref in (*r.exchange_order_ids, r.record_key)})
        tol = self.tolerances.match
        lo, hi = min(close_times) - tol, max(close_times) + tol
        by_ref = [o.exchange_order_id.in_(refs), o.order_sn.in_([self._order_sn(r) for r in page])]
        if self.close_ids:
            by_ref.append(o.close_order_id.in_(refs))
        columns = [
            o.id, o.robot_id, o.order_sn, o.status, o.symbol, o.direction, o.exchange_order_id,
            o.close_order_id if self.close_ids else o.exchange_order_id.label("none"),
            o.quantity, o.open_time, o.close_time, o.close_price, o.hold_duration,
            o.realized_profit, o.power_consumed,
        ]  # fmt: skip
        stmt = select(*columns).where(
            o.robot_id.in_(self.stream.robot_ids),
            or_(
                o.id.in_(sorted(set(bound.values()))),
                *by_ref,
                and_(
                    o.symbol == self.stream.symbol,
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
        rows = list(await conn.execute(stmt))
        ids = [r.id for r in rows]
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
                id=r[0], robot_id=r[1], order_sn=r[2], status=r[3], symbol=r[4], direction=r[5],
                exchange_order_id=r[6], close_order_id=r[7] if self.close_ids else None,
                quantity=r[8], open_time=r[9], close_time=r[10], close_price=r[11],
                hold_duration=r[12], realized_profit=r[13], power_consumed=r[14],
                bound=r[0] in taken, own=is_own_order_sn(r[2]),
            )
            for r in rows
        ]  # fmt: skip
        return bound, candidates

    # -- write --------------------------------------------------------------------------------

    def _writes(self, d: Decision, close_time: datetime) -> bool:
        if d.kind is not None:
            return True  # a binding to write (and maybe an order)
        return d.order is not None and bool(self._missing(d.order, d.record, close_time))

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
            rows = [self._new_order(d.record, t, now) for d, t in inserts]
            await conn.execute(trading_order.insert(), rows)
            sns = {
                row["order_sn"]: d.record.record_key
                for row, (d, _) in zip(rows, inserts, strict=True)
            }
            for oid, sn in await conn.execute(select(o.id, o.order_sn).where(o.order_sn.in_(sns))):
                order_of[sns[sn]] = oid
            for (d, _), row in zip(inserts, rows, strict=True):
                if row["realized_profit"] > 0:
                    to_charge.append(order_of[d.record.record_key])
        for d, close_time in plan:
            order = d.order
            if order is None:
                continue
            order_of[d.record.record_key] = order.id
            profit = stored_profit(d.record, self.basis)
            if d.rule is Rule.OPEN:
                await self._close(conn, order, d.record, close_time, profit, now)
                if profit > 0:
                    to_charge.append(order.id)
                continue
            values = self._missing(order, d.record, close_time)
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
        if legs:  # rows the records' closing orders opened: never charged (reconcile.trades)
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
            records = [self._record_row(d.record, t, now) for d, t in plan if d.kind is not None]
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
            if order_ids:  # the rows these closing orders opened are legs (reconcile.trades)
                await conn.execute(record_order_id.insert(), order_ids)
        return to_charge

    def _record_row(
        self, record: ClosedPosition, close_time: datetime, now: datetime
    ) -> dict[str, Any]:
        """The bound record, kept for its order's chain (``toogo_reconcile_record``)."""
        return {
            "platform": self.stream.platform,
            "account_id": self.stream.account_id,
            "record_key": record.record_key,
            "symbol": self.stream.symbol,
            "close_time": close_time,
            "profit": stored_profit(record, self.basis),
            "profit_basis": str(self.basis),
            "normalized_json": json.dumps(normalized(record), sort_keys=True),
            "raw_json": json.dumps(record.raw, sort_keys=True, default=str),
            "created_at": now,
        }

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
        values: dict[str, Any] = {
            "status": int(Status.CLOSED),
            "close_price": record.close_price.quantize(PRICE_QUANTUM, ROUND_HALF_UP),
            "realized_profit": profit,
            "close_time": close_time,
            "hold_duration": max(0, int((close_time - order.open_time).total_seconds())),
            "close_reason": CLOSE_REASON,
            "updated_at": now,
        }
        own = self._own_close_id(record)
        if own is not None and not order.close_order_id:
            values["close_order_id"] = own
        result = await conn.execute(
            trading_order.update()
            .where(o.id == order.id, o.status == int(Status.OPEN))
            .values(**values)
        )
        if result.rowcount != 1:
            raise Conflict(f"order {order.id} is no longer open")

    def _new_order(
        self, record: ClosedPosition, close_time: datetime, now: datetime
    ) -> dict[str, Any]:
        tenant_id, user_id, robot_id, leverage = self.stream.owner
        open_time = self.db.to_db_time(record.open_time) if record.open_time else close_time
        price = record.open_price if record.open_price is not None else record.close_price
        row: dict[str, Any] = {
            "tenant_id": tenant_id,
            "user_id": user_id,
            "robot_id": robot_id,
            "order_sn": self._order_sn(record),
            # exchange_order_id is left to the column's default: NULL in upstream's MySQL DDL,
            # '' in its PostgreSQL DDL (NOT NULL there)
            "symbol": self.stream.symbol,
            "direction": record.direction,
            "open_price": (record.open_price or Decimal(0)).quantize(PRICE_QUANTUM, ROUND_HALF_UP),
            "close_price": record.close_price.quantize(PRICE_QUANTUM, ROUND_HALF_UP),
            "quantity": record.size.quantize(QTY_QUANTUM, ROUND_HALF_UP),
            "leverage": leverage,
            "margin": (price * record.size / max(leverage, 1)).quantize(
                PRICE_QUANTUM, ROUND_HALF_UP
            ),
            "realized_profit": stored_profit(record, self.basis),
            "open_time": open_time,
            "close_time": close_time,
            "hold_duration": max(0, int((close_time - open_time).total_seconds())),
            "status": int(Status.CLOSED),
            "close_reason": CLOSE_REASON,
            "power_consumed": 0,
            "power_amount": Decimal(0),
            "remark": f"synchronized from {self.stream.platform} account {self.stream.account_id}",
            "created_at": now,
            "updated_at": now,
        }
        if self.close_ids:
            row["close_order_id"] = self._own_close_id(record)
        return row

    def _order_sn(self, record: ClosedPosition) -> str:
        return order_sn_for(self.stream.platform, self.stream.account_id, record.record_key)

    def _own_close_id(self, record: ClosedPosition) -> str | None:
        if not self.close_ids or len(record.exchange_order_ids) != 1:
            return None
        return record.exchange_order_ids[0][:100]

    def _missing(
        self, order: Candidate, record: ClosedPosition, close_time: datetime
    ) -> dict[str, Any]:
        """What a matched order lacks and the record has; never a figure already there."""
        if order.status != Status.CLOSED:
            return {}
        values: dict[str, Any] = {}
        if order.close_price is None:
            values["close_price"] = record.close_price.quantize(PRICE_QUANTUM, ROUND_HALF_UP)
        if not real_close_time(order.close_time):
            values["close_time"] = close_time  # missing, or the engine's 2006 placeholder
        if not order.hold_duration and order.open_time is not None:
            end: datetime = values.get("close_time") or order.close_time or close_time
            hold = int((end - order.open_time).total_seconds())
            if hold > 0:
                values["hold_duration"] = hold
        own = self._own_close_id(record)
        if own is not None and not order.close_order_id:
            values["close_order_id"] = own
        return values

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


__all__ = ["Conflict", "PageResult", "PageWriter", "StreamRef", "order_sn_for", "stored_profit"]


def _awaits_charge(order: Candidate) -> bool:
    return (
        not order.power_consumed
        and ineligibility(order.status, order.realized_profit, order.close_time) is None
    )
