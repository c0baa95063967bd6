"""Which local order an exchange record is: the matching rules, in the order the evidence is strong.

Upstream's engine records a close under ids that almost never equal an exchange history record's,
so the link between a record and an order is the daemon's own (``toogo_reconcile_binding``). For
each record of a stream, in close-time order, the first rule that applies: a. binding, b. order
id (and the engine's closing legs, left out of every other rule), c. close time, d. part, e. open,
f. insert; a record that would bind an order another record holds is ambiguous. Each rule, with
what it writes, is explained once in docs/architecture.md ("How an exchange record finds its
local order").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from reconcile.charging.orders import Status, real_close_time
from reconcile.records import ClosedPosition


class Rule(StrEnum):
    BINDING = "binding"
    ORDER_ID = "order_id"
    CLOSE_TIME = "close_time"
    PART = "part"
    OPEN = "open"
    INSERT = "insert"
    AMBIGUOUS = "ambiguous"
    NOT_CLOSABLE = "not_closable"


class Kind(StrEnum):
    """What a binding says of its record."""

    ORDER = "order"  # the record is this order's close
    PART = "part"  # the record is a partial close of this order
    AMBIGUOUS = "ambiguous"  # the record would have matched an order bound to another record


@dataclass
class Candidate:
    """A local order of the stream's robots, as read (a plain read) before deciding."""

    id: int
    robot_id: int
    order_sn: str
    status: int | None
    symbol: str
    direction: str
    exchange_order_id: str | None
    close_order_id: str | None
    quantity: Decimal
    open_time: datetime
    close_time: datetime | None
    close_price: Decimal | None
    hold_duration: int | None
    realized_profit: Decimal | None
    power_consumed: int
    bound: bool  # has a kind-'order' binding
    #: inserted by the daemon for another exchange record (rule f): a record of its own, so
    #: never the engine's evidence for rules c and d
    own: bool = False


@dataclass(frozen=True)
class Decision:
    record: ClosedPosition
    rule: Rule
    order: Candidate | None = None  # None: insert
    kind: Kind | None = None  # the binding to write (None: none, e.g. rule a or not closable)
    #: engine rows opened by the record's closing order: legs of the trade the record closes
    legs: tuple[Candidate, ...] = ()

    @property
    def closes(self) -> bool:
        return self.rule is Rule.OPEN


@dataclass(frozen=True)
class Tolerances:
    match: timedelta
    #: a record smaller than this fraction of an order's quantity is a part of it
    part_below: Decimal = Decimal("0.999999")


def decide(
    records: Sequence[ClosedPosition],
    close_times: Sequence[datetime],
    candidates: Iterable[Candidate],
    bound: dict[str, int],
    symbol: str,
    tolerances: Tolerances,
    own_sns: dict[str, str],
) -> list[Decision]:
    """Decide every record of a page in memory (the candidates are updated as records bind).

    ``close_times[i]`` is ``records[i].close_time`` as the database holds it (naive, in
    ``database.timezone``); ``bound`` maps record keys already bound to their order ids;
    ``own_sns`` maps record keys to the order_sn an order inserted for them has (rule f): such
    an order found unbound (a crash of the first release between its order and anything else)
    is that record's, by rule b.
    """
    orders = {c.id: c for c in candidates}
    by_id: dict[str, list[Candidate]] = {}
    for c in orders.values():
        for ref in (c.close_order_id, c.exchange_order_id, c.order_sn):
            if ref:
                by_id.setdefault(ref, []).append(c)
    decisions: list[Decision] = []
    for record, close_time in zip(records, close_times, strict=True):
        sn = own_sns.get(record.record_key)
        decision = _decide_one(record, close_time, orders, by_id, bound, symbol, tolerances, sn)
        decisions.append(decision)
        if decision.order is not None and decision.kind is Kind.ORDER:
            decision.order.bound = True
            if decision.closes:
                decision.order.status = int(Status.CLOSED)
                decision.order.close_time = close_time
    return decisions


def _decide_one(
    record: ClosedPosition,
    close_time: datetime,
    orders: dict[int, Candidate],
    by_id: dict[str, list[Candidate]],
    bound: dict[str, int],
    symbol: str,
    tol: Tolerances,
    own_sn: str | None,
) -> Decision:
    # a. the daemon bound this record before
    if record.record_key in bound:
        return Decision(record, Rule.BINDING, orders.get(bound[record.record_key]))
    # b. the exchange's own order ids (and the order_sn of an order inserted for this record)
    refs = [*record.exchange_order_ids, record.record_key, *((own_sn,) if own_sn else ())]
    matched = {c.id: c for ref in refs for c in by_id.get(ref, ())}
    legs = tuple(c for c in matched.values() if _opened_by_close(c, record, close_time, tol))
    by_ref = sorted(
        (c for c in matched.values() if c not in legs),
        key=lambda c: (c.close_order_id not in refs, c.id),
    )
    if by_ref:
        order = by_ref[0]
        if order.bound:
            return replace(_part_or_ambiguous(record, order, tol), legs=legs)
        if order.status == Status.CLOSED:
            return Decision(record, Rule.ORDER_ID, order, Kind.ORDER, legs)
        if order.status == Status.OPEN:
            return Decision(record, Rule.OPEN, order, Kind.ORDER, legs)
        return Decision(record, Rule.NOT_CLOSABLE, order, legs=legs)  # pending, cancelled, failed
    return replace(_by_time(record, close_time, orders, symbol, tol, legs), legs=legs)


def _by_time(
    record: ClosedPosition,
    close_time: datetime,
    orders: dict[int, Candidate],
    symbol: str,
    tol: Tolerances,
    legs: tuple[Candidate, ...],
) -> Decision:
    """Rules c-f: the record's evidence is its time, symbol, direction and size."""
    # the engine's orders: an order the daemon inserted for another record is that record's
    same = [
        c
        for c in orders.values()
        if c.symbol == symbol and c.direction == record.direction and not c.own and c not in legs
    ]
    # c. the engine recorded this close: nearest close time, then nearest quantity, lowest id
    window = [
        c
        for c in same
        if c.status == Status.CLOSED
        and real_close_time(c.close_time)
        and abs(c.close_time - close_time) <= tol.match  # type: ignore[operator]
    ]
    free = [c for c in window if not c.bound]
    if free:
        # a row shaped like another's closing leg (reconcile.charging.trades, rule shape) comes last
        best = min(
            free, key=lambda c: (_leg_shaped(c, same, tol), *_nearness(c, record, close_time))
        )
        return Decision(record, Rule.CLOSE_TIME, best, Kind.ORDER)
    # d. a part of a position the engine recorded as one order
    spanning = [
        c
        for c in same
        if c.status == Status.CLOSED
        and real_close_time(c.close_time)
        and c.open_time - tol.match <= close_time <= c.close_time + tol.match  # type: ignore[operator]
        and record.size < c.quantity * tol.part_below
    ]
    if spanning:
        best = min(spanning, key=lambda c: _nearness(c, record, close_time))
        return Decision(record, Rule.PART, best, Kind.PART)
    if window:  # only orders bound to other records, and not a part of any: say so
        best = min(window, key=lambda c: _nearness(c, record, close_time))
        return Decision(record, Rule.AMBIGUOUS, best, Kind.AMBIGUOUS)
    # e. an open order this record closes
    opened = [
        c for c in same if c.status == Status.OPEN and not c.bound and c.open_time <= close_time
    ]
    if opened:
        best = min(opened, key=lambda c: (c.open_time, c.id))
        return Decision(record, Rule.OPEN, best, Kind.ORDER)
    # f. a position the local table never saw
    return Decision(record, Rule.INSERT, None, Kind.ORDER)


def _opened_by_close(
    c: Candidate, record: ClosedPosition, close_time: datetime, tol: Tolerances
) -> bool:
    """An engine row opened by the record's own closing order: its leg, not its order."""
    return (
        not c.own
        and bool(c.exchange_order_id)
        and c.exchange_order_id in record.exchange_order_ids
        and abs(c.open_time - close_time) <= tol.match
    )


def _leg_shaped(c: Candidate, others: Sequence[Candidate], tol: Tolerances) -> bool:
    """``c`` opened inside another closed row's lifetime, no larger than it (see trades)."""
    return any(
        t.id != c.id
        and t.status == Status.CLOSED
        and real_close_time(t.close_time)
        and t.open_time < c.open_time <= t.close_time + tol.match  # type: ignore[operator]
        and c.quantity <= t.quantity
        for t in others
    )


def _part_or_ambiguous(record: ClosedPosition, order: Candidate, tol: Tolerances) -> Decision:
    if record.size < order.quantity * tol.part_below:
        return Decision(record, Rule.PART, order, Kind.PART)
    return Decision(record, Rule.AMBIGUOUS, order, Kind.AMBIGUOUS)


def _nearness(
    c: Candidate, record: ClosedPosition, close_time: datetime
) -> tuple[float, Decimal, int]:
    gap = abs((c.close_time or close_time) - close_time).total_seconds()
    return gap, abs(c.quantity - record.size), c.id


__all__ = ["Candidate", "Decision", "Kind", "Rule", "Tolerances", "decide"]
