"""Trades and legs: which closed, profitable rows of hg_trading_order are trades to charge.

One exchange close is one trade, whatever the engine wrote. Upstream's engine (lilei800/toogo_v2
at d15f0de) writes a second row for every closing order: ``SyncOrderHistoryToDB`` (robot.go
1110-1286) inserts each of the account's last 50 exchange orders whose id is no row's
``exchange_order_id`` - the trade row holds the *opening* id there, the closing id in
``close_order_id`` - as a new row: the closing order's id in ``exchange_order_id``, its average
price and time as ``open_price`` / ``open_time``, ``short`` for a SELL (``long`` for a one-way BUY,
``short`` for a hedge-mode BUY of the SHORT side). The position check (order_status_sync.go
1122-1168) then closes that row as ``手动平仓(同步检测)`` with the PnL of a matching fill (often
the trade's own: its ``close_order_id`` is then the same closing id) or a ticker estimate of either
sign. Such a row is a **leg** of the trade, never a trade of its own.

For every closed, profitable, uncharged row the first of these rules that applies decides
(``Judgement.rule`` names it; docs/charging.md, "One trade, one charge", gives each rule's
evidence and the upstream lines it answers to - the one place they are written down):

1. ``operator`` - toogo_reconcile_verdict says so (a leg found earlier, ``held charge`` /
   ``held dismiss``);
2. ``close_order_id`` - its exchange_order_id is another row's close id, same account: a leg;
3. ``exchange_record`` - an exchange close bound to another row names it: a leg;
4. ``bound`` - an exchange close is bound to it: a trade;
5. ``shape`` - opened inside another closed row's lifetime, in its closing direction: held;
6. ``awaiting_sync`` - its stream is polled (a running robot, an enabled account, a cursor
   advanced within ``sync_fresh``) and not yet read past its close: held;
7. ``local`` - otherwise: a trade.

Legs found by rules 2 and 3 are written to ``toogo_reconcile_verdict`` in the transaction that
found them (reconcile.charging.verdicts), so ``report`` and ``audit`` can show them and the sweep
passes over them. What the rules read is reconcile.charging.trade_rows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.charging.orders import Status
from reconcile.charging.trade_rows import (
    StreamKey,
    TradeRow,
    page_columns,
    read_bound,
    read_cursors,
    read_layout,
    read_neighbours,
    read_recorded_closes,
    read_rows,
)
from reconcile.charging.verdicts import Judgement, Rule, Verdict, record_legs, recorded_verdicts
from reconcile.storage.db import Database
from reconcile.storage.schema import power_consume, trading_order

#: how long after its last advance a stream still counts as synced (rule 6)
SYNC_FRESH = timedelta(days=1)
#: the engine's close time and its closing order's time may differ by this much (rule 5)
TOLERANCE = timedelta(seconds=120)
#: a leg is never larger than its trade (quantities are DECIMAL(15,8))
SIZE_SLACK = Decimal("1.000001")
#: rows judged per statement set by the read-only views (judge_all)
JUDGED_PER_READ = 1000


class TradeJudge:
    """Judges rows inside the charging transaction (the rows are locked by the caller)."""

    def __init__(
        self,
        db: Database,
        *,
        tolerance: timedelta = TOLERANCE,
        sync_fresh: timedelta = SYNC_FRESH,
        running_status: int = 2,
    ) -> None:
        self.db = db
        self.tolerance = tolerance
        self.sync_fresh = sync_fresh
        self.running_status = running_status  # robots.running_status
        self._close_columns: tuple[str, ...] | None = None
        self._own_tables = False

    async def judge(
        self,
        conn: AsyncConnection,
        order_ids: Sequence[int],
        *,
        record: bool = True,
        rows: Mapping[int, TradeRow] | None = None,
    ) -> dict[int, Judgement]:
        """A judgement for each of ``order_ids`` that exists. Writes the legs it finds to
        toogo_reconcile_verdict unless ``record`` is false (the read-only views). ``rows``:
        the rows as the caller's locking read had them already (:meth:`page_columns`), in
        this transaction; without it they are read here."""
        if not order_ids:
            return {}
        close_columns, own = await self._layout(conn)
        subjects = (
            {i: rows[i] for i in order_ids if i in rows}
            if rows is not None
            else await read_rows(conn, trading_order.c.id.in_(list(order_ids)), close_columns)
        )
        if not subjects:
            return {}
        out = await recorded_verdicts(conn, list(subjects)) if own else {}
        todo = [r for r in subjects.values() if r.id not in out]
        if not todo:
            return out
        maybe_legs = [r for r in todo if _may_be_a_leg(r)]
        neighbours = (
            await read_neighbours(
                conn, maybe_legs, close_columns, known=subjects, tolerance=self.tolerance
            )
            if maybe_legs
            else []
        )
        by_close_id = _index_close_ids(neighbours)
        by_stream: dict[tuple[tuple[str, int], str], list[TradeRow]] = defaultdict(list)
        for other in neighbours:  # rule 5 compares a row with its own stream's rows only
            by_stream[(other.account, other.symbol)].append(other)
        recorded = await read_recorded_closes(conn, maybe_legs) if own and maybe_legs else {}
        bound = await read_bound(conn, [r.id for r in todo]) if own else set()
        cursors = (
            await read_cursors(conn, self.db, todo, running_status=self.running_status)
            if own
            else {}
        )
        fresh_since = self.db.now() - self.sync_fresh
        found: list[Judgement] = []
        for row in todo:
            same = by_stream.get((row.account, row.symbol), [])
            judgement = self._one(row, by_close_id, recorded, bound, same, cursors, fresh_since)
            out[row.id] = judgement
            if judgement.verdict is Verdict.LEG:
                judgement = replace(judgement, new=True)
                out[row.id] = judgement
                found.append(judgement)
        if found and own and record:
            await record_legs(conn, self.db, found)
        return out

    async def judge_all(
        self, conn: AsyncConnection, order_ids: Sequence[int]
    ) -> dict[int, Judgement]:
        """:meth:`judge` for the read-only views, however many rows: a thousand per statement
        set (``JUDGED_PER_READ``), nothing written."""
        ids = sorted(set(order_ids))
        out: dict[int, Judgement] = {}
        for start in range(0, len(ids), JUDGED_PER_READ):
            part = ids[start : start + JUDGED_PER_READ]
            out.update(await self.judge(conn, part, record=False))
        return out

    async def page_columns(self, conn: AsyncConnection) -> list[Any]:
        """The columns a locking read of trading_order adds so that :meth:`judge` need not
        read its rows again (reconcile.charging.trade_rows.page_columns)."""
        close_columns, _ = await self._layout(conn)
        return page_columns(close_columns)

    def _one(
        self,
        row: TradeRow,
        by_close_id: dict[tuple[tuple[str, int], str], list[TradeRow]],
        recorded: dict[StreamKey, int],
        bound: set[int],
        neighbours: list[TradeRow],
        cursors: dict[StreamKey, tuple[datetime, datetime | None]],
        fresh_since: datetime,
    ) -> Judgement:
        ref = row.exchange_order_id
        if ref:
            trades = [t for t in by_close_id.get((row.account, ref), ()) if t.id != row.id]
            if trades:
                trade = min(trades, key=lambda t: t.id)
                return Judgement(row.id, Verdict.LEG, Rule.CLOSE_ORDER_ID, trade.id)
            trade_id = recorded.get((row.platform, row.account[1], ref))
            if row.account[0] == "account" and trade_id is not None and trade_id != row.id:
                return Judgement(row.id, Verdict.LEG, Rule.EXCHANGE_RECORD, trade_id)
        if row.id in bound:
            return Judgement(row.id, Verdict.TRADE, Rule.BOUND)
        shaped = [t for t in neighbours if self._leg_shaped(row, t)]
        if shaped:
            trade = min(shaped, key=lambda t: (abs(_gap(t.close_time, row.open_time)), t.id))
            return Judgement(row.id, Verdict.HELD, Rule.SHAPE, trade.id)
        cursor = cursors.get((row.platform, row.account[1], row.symbol))
        if cursor is not None and row.close_time is not None:
            complete_until, updated_at = cursor
            fresh = updated_at is not None and updated_at >= fresh_since
            if fresh and row.close_time > complete_until:
                return Judgement(row.id, Verdict.HELD, Rule.AWAITING_SYNC)
        return Judgement(row.id, Verdict.TRADE, Rule.LOCAL)

    def _leg_shaped(self, row: TradeRow, trade: TradeRow) -> bool:
        """Rule 5: ``row`` opened inside ``trade``'s lifetime, in its closing direction."""
        if trade.id == row.id or trade.account != row.account or trade.symbol != row.symbol:
            return False
        if trade.status != Status.CLOSED or trade.close_time is None:
            return False
        if trade.direction == "long" and row.direction != "short":
            return False
        inside = trade.open_time < row.open_time <= trade.close_time + self.tolerance
        return inside and row.quantity <= trade.quantity * SIZE_SLACK

    async def _layout(self, conn: AsyncConnection) -> tuple[tuple[str, ...], bool]:
        """The close-id columns this install has, and whether the daemon's own tables exist
        (they do wherever a command may run; not yet while `migrate up` creates them, when
        only rules 2 and 5 apply). Read once; missing tables are looked for again."""
        if self._close_columns is None or not self._own_tables:
            close, self._own_tables = await read_layout(conn)
            self._close_columns = close
            return close, self._own_tables
        return self._close_columns, self._own_tables


def _may_be_a_leg(row: TradeRow) -> bool:
    """A leg always carries its closing order's id (SyncOrderHistoryToDB skips an order without
    one, robot.go 1152-1160); a POS-... placeholder is a position back-filled, never a leg."""
    ref = row.exchange_order_id
    return bool(ref) and not ref.startswith("POS-")


def _index_close_ids(rows: Iterable[TradeRow]) -> dict[tuple[tuple[str, int], str], list[TradeRow]]:
    index: dict[tuple[tuple[str, int], str], list[TradeRow]] = defaultdict(list)
    for row in rows:
        for ref in row.close_ids:
            index[(row.account, ref)].append(row)
    return index


def _gap(a: datetime | None, b: datetime) -> float:
    return (a - b).total_seconds() if a is not None else float("inf")


@dataclass(frozen=True)
class ChargedLeg:
    """A closing leg that carries a charge (an earlier release's, or hotgo's own)."""

    consume_id: int
    order_id: int
    user_id: int
    order_sn: str
    consume_power: Decimal
    trade_order_id: int | None
    rule: str


async def charged_legs(
    conn: AsyncConnection, db: Database, *, charged_since: datetime | None = None
) -> list[ChargedLeg]:
    """Every charged row that is a closing leg (rules 1-3: read-only), by order id; with
    ``charged_since`` (database time) only those whose consume row is that recent. Only a row
    with an exchange order id can be one (a ``POS-…`` placeholder is a position the engine
    back-filled, never a leg)."""
    o, c = trading_order.c, power_consume.c
    stmt = (
        select(c.id, c.order_id, c.user_id, o.order_sn, c.consume_power)
        .join(trading_order, o.id == c.order_id)
        .where(
            o.exchange_order_id.is_not(None),
            o.exchange_order_id != "",
            ~o.exchange_order_id.like("POS-%"),
            *((c.created_at >= charged_since,) if charged_since is not None else ()),
        )
        .order_by(c.order_id, c.id)
    )
    rows = list(await conn.execute(stmt))
    judged = await TradeJudge(db).judge_all(conn, [r.order_id for r in rows])
    out: list[ChargedLeg] = []
    for consume_id, order_id, user_id, order_sn, power in rows:
        j = judged.get(order_id)
        if j is not None and j.verdict is Verdict.LEG:
            leg = ChargedLeg(
                consume_id, order_id, user_id, order_sn, power, j.trade_order_id, str(j.rule)
            )
            out.append(leg)
    return out


__all__ = ["JUDGED_PER_READ", "ChargedLeg", "TradeJudge", "charged_legs"]
