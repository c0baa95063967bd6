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
(``Judgement.rule`` names it; README "One trade, one charge" gives each rule's evidence and the
upstream lines it answers to - the one place they are written down):

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
found them, so ``report`` and ``audit`` can show them and the sweep passes over them.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any, NamedTuple

from sqlalchemy import inspect, select
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.charging.orders import Status
from reconcile.storage.db import Database
from reconcile.storage.schema import (
    binding,
    power_consume,
    record_order_id,
    stream_cursor,
    trading_api_config,
    trading_order,
    trading_robot,
    verdict,
)
from reconcile.storage.streams import polled

#: how long after its last advance a stream still counts as synced (rule 6)
SYNC_FRESH = timedelta(days=1)
#: the engine's close time and its closing order's time may differ by this much (rule 5)
TOLERANCE = timedelta(seconds=120)
#: a leg is never larger than its trade (quantities are DECIMAL(15,8))
SIZE_SLACK = Decimal("1.000001")
#: rows judged per statement set by the read-only views (judge_all)
JUDGED_PER_READ = 1000


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


def symbol_key(symbol: str | None) -> str:
    """A symbol as every format names it: ``BTC_USDT``, ``BTC-USDT-SWAP``, ``BTC/USDT:USDT``."""
    text = (symbol or "").upper().split(":")[0]
    text = re.sub(r"[^A-Z0-9]", "", text)
    return text.removesuffix("SWAP")


class _Row(NamedTuple):  # a named tuple: a page builds thousands (rows and neighbours)
    id: int
    robot_id: int
    account: tuple[str, int]  # ("account", api_config_id), or ("robot", id) without one
    platform: str
    symbol: str  # symbol_key
    direction: str
    quantity: Decimal
    open_time: datetime
    close_time: datetime | None
    status: int | None
    exchange_order_id: str
    close_ids: tuple[str, ...]


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
        self, conn: AsyncConnection, order_ids: Sequence[int], *, record: bool = True
    ) -> dict[int, Judgement]:
        """A judgement for each of ``order_ids`` that exists. Writes the legs it finds to
        toogo_reconcile_verdict unless ``record`` is false (the read-only views)."""
        if not order_ids:
            return {}
        close_columns, own = await self._layout(conn)
        subjects = await self._rows(conn, trading_order.c.id.in_(list(order_ids)), close_columns)
        if not subjects:
            return {}
        out = await self._decided(conn, list(subjects)) if own else {}
        todo = [r for r in subjects.values() if r.id not in out]
        if not todo:
            return out
        # a leg always carries its closing order's id (SyncOrderHistoryToDB skips an order
        # without one, robot.go 1152-1160); a POS-... placeholder is a position back-filled
        maybe_legs = [
            r for r in todo if r.exchange_order_id and not r.exchange_order_id.startswith("POS-")
        ]
        neighbours = (
            await self._neighbours(conn, maybe_legs, close_columns, known=subjects)
            if maybe_legs
            else []
        )
        by_close_id = _index_close_ids(neighbours)
        by_stream: dict[tuple[tuple[str, int], str], list[_Row]] = defaultdict(list)
        for other in neighbours:  # rule 5 compares a row with its own stream's rows only
            by_stream[(other.account, other.symbol)].append(other)
        recorded = await self._recorded_closes(conn, maybe_legs) if own and maybe_legs else {}
        bound = await self._bound(conn, [r.id for r in todo]) if own else set()
        cursors = await self._cursors(conn, todo) if own else {}
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

    async def _decided(self, conn: AsyncConnection, ids: list[int]) -> dict[int, Judgement]:
        """Rule 1: what toogo_reconcile_verdict says of ``ids``."""
        v = verdict.c
        stmt = select(v.order_id, v.verdict, v.rule, v.trade_order_id).where(v.order_id.in_(ids))
        out: dict[int, Judgement] = {}
        for order_id, kind, rule, trade_id in await conn.execute(stmt):
            known = Rule(rule) if rule in set(Rule) else Rule.OPERATOR
            out[order_id] = Judgement(order_id, Verdict(kind), known, trade_id)
        return out

    def _one(
        self,
        row: _Row,
        by_close_id: dict[tuple[tuple[str, int], str], list[_Row]],
        recorded: dict[tuple[str, int, str], int],
        bound: set[int],
        neighbours: list[_Row],
        cursors: dict[tuple[str, int, str], tuple[datetime, datetime | None]],
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

    def _leg_shaped(self, row: _Row, trade: _Row) -> bool:
        """Rule 5: ``row`` opened inside ``trade``'s lifetime, in its closing direction."""
        if trade.id == row.id or trade.account != row.account or trade.symbol != row.symbol:
            return False
        if trade.status != Status.CLOSED or trade.close_time is None:
            return False
        if trade.direction == "long" and row.direction != "short":
            return False
        inside = trade.open_time < row.open_time <= trade.close_time + self.tolerance
        return inside and row.quantity <= trade.quantity * SIZE_SLACK

    # -- reads ----------------------------------------------------------------------------------

    async def _layout(self, conn: AsyncConnection) -> tuple[tuple[str, ...], bool]:
        """The close-id columns this install has, and whether the daemon's own tables exist
        (they do wherever a command may run; not yet while `migrate up` creates them, when
        only rules 2 and 5 apply). Read once; missing tables are looked for again."""
        if self._close_columns is None or not self._own_tables:

            def read(sync_conn: Any) -> tuple[tuple[str, ...], bool]:
                live = inspect(sync_conn)
                names = {c["name"] for c in live.get_columns(trading_order.name)}
                close = tuple(n for n in ("close_order_id", "close_client_order_id") if n in names)
                own = (verdict, binding, record_order_id, stream_cursor)
                return close, all(live.has_table(t.name) for t in own)

            close, self._own_tables = await conn.run_sync(read)
            self._close_columns = close
            return close, self._own_tables
        return self._close_columns, self._own_tables

    async def _rows(
        self, conn: AsyncConnection, where: Any, close_columns: tuple[str, ...]
    ) -> dict[int, _Row]:
        o, r, a = trading_order.c, trading_robot.c, trading_api_config.c
        columns = [
            o.id, o.robot_id, o.symbol, o.direction, o.quantity, o.open_time, o.close_time,
            o.status, o.exchange_order_id, r.api_config_id, a.platform,
            *(o[name] for name in close_columns),
        ]  # fmt: skip
        joined = trading_order.outerjoin(trading_robot, r.id == o.robot_id).outerjoin(
            trading_api_config, a.id == r.api_config_id
        )
        out: dict[int, _Row] = {}
        for row in await conn.execute(select(*columns).select_from(joined).where(where)):
            account = (
                ("account", int(row.api_config_id))
                if row.api_config_id is not None
                else ("robot", int(row.robot_id))
            )
            ids = tuple(str(getattr(row, n) or "").strip() for n in close_columns)
            out[row.id] = _Row(
                id=row.id,
                robot_id=row.robot_id,
                account=account,
                platform=(row.platform or "").lower(),
                symbol=symbol_key(row.symbol),
                direction=(row.direction or "").lower(),
                quantity=row.quantity,
                open_time=row.open_time,
                close_time=row.close_time,
                status=row.status,
                exchange_order_id=(row.exchange_order_id or "").strip(),
                close_ids=tuple(i for i in ids if i),
            )
        return out

    async def _neighbours(
        self,
        conn: AsyncConnection,
        rows: list[_Row],
        close_columns: tuple[str, ...],
        *,
        known: dict[int, _Row],
    ) -> list[_Row]:
        """The rows of the same accounts (every robot of each) that may be the trade of one of
        ``rows``: opened no later, closed no earlier than its open minus the tolerance; and the
        rows ``known`` already (the page's own: not read twice)."""
        accounts = {r.account[1] for r in rows if r.account[0] == "account"}
        robots = {r.robot_id for r in rows}
        if accounts:
            found = await conn.execute(
                select(trading_robot.c.id).where(trading_robot.c.api_config_id.in_(accounts))
            )
            robots |= {int(i) for (i,) in found}
        o = trading_order.c
        lowest = min(r.open_time for r in rows) - self.tolerance
        highest = max(r.open_time for r in rows)
        where = (
            o.robot_id.in_(sorted(robots))
            & (o.close_time >= lowest)
            & (o.open_time <= highest)
            & o.id.not_in(sorted(known))
        )
        return [*known.values(), *(await self._rows(conn, where, close_columns)).values()]

    async def _recorded_closes(
        self, conn: AsyncConnection, rows: list[_Row]
    ) -> dict[tuple[str, int, str], int]:
        """(platform, account, exchange order id) -> the row the sync bound that close to."""
        refs = sorted({r.exchange_order_id for r in rows if r.exchange_order_id})
        if not refs:
            return {}
        ro, b = record_order_id.c, binding.c
        stmt = (
            select(ro.platform, ro.account_id, ro.exchange_order_id, b.order_id)
            .select_from(
                record_order_id.join(
                    binding,
                    (b.platform == ro.platform)
                    & (b.account_id == ro.account_id)
                    & (b.record_key == ro.record_key),
                )
            )
            .where(ro.exchange_order_id.in_(refs), b.kind == "order")
        )
        return {
            (p.lower(), int(acc), ref): int(order_id)
            for p, acc, ref, order_id in await conn.execute(stmt)
        }

    async def _bound(self, conn: AsyncConnection, ids: list[int]) -> set[int]:
        stmt = select(binding.c.order_id).where(
            binding.c.order_id.in_(ids), binding.c.kind == "order"
        )
        return {int(i) for (i,) in await conn.execute(stmt)}

    async def _cursors(
        self, conn: AsyncConnection, rows: list[_Row]
    ) -> dict[tuple[str, int, str], tuple[datetime, datetime | None]]:
        """(platform, account, symbol) -> (complete_until in database time, updated_at)."""
        accounts = sorted({r.account[1] for r in rows if r.account[0] == "account"})
        if not accounts:
            return {}
        c = stream_cursor.c
        # a stream the sync no longer polls (a stopped robot): its last close is not waited for
        stmt = select(c.platform, c.account_id, c.symbol, c.complete_until, c.updated_at).where(
            c.account_id.in_(accounts), c.complete_until.is_not(None), polled(self.running_status)
        )
        out: dict[tuple[str, int, str], tuple[datetime, datetime | None]] = {}
        for platform, account_id, symbol, until, updated in await conn.execute(stmt):
            # cursors are kept in UTC; orders in database.timezone
            local = self.db.to_db_time(until.replace(tzinfo=UTC))
            out[(platform.lower(), int(account_id), symbol_key(symbol))] = (local, updated)
        return out


def _may_be_a_leg(row: _Row) -> bool:
    ref = row.exchange_order_id
    return bool(ref) and not ref.startswith("POS-")


def _index_close_ids(rows: Iterable[_Row]) -> dict[tuple[tuple[str, int], str], list[_Row]]:
    index: dict[tuple[tuple[str, int], str], list[_Row]] = defaultdict(list)
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
            leg = ChargedLeg(consume_id, order_id, user_id, order_sn, power,
                             j.trade_order_id, str(j.rule))  # fmt: skip
            out.append(leg)
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


__all__ = [
    "ChargedLeg",
    "Judgement",
    "Rule",
    "TradeJudge",
    "Verdict",
    "charged_legs",
    "record_legs",
    "settled_rows",
    "symbol_key",
]
