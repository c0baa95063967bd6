"""The reconciliation report (``toogo-reconcile report``): per account and per user, what the
exchanges showed and what the daemon did with it in a period, and one order's whole chain.

Read-only, in one snapshot. Every figure is read from a table - one grouped query per family of
figures (by account and user), never a query per row - and each is dated by its own event:

======================  ========================================================  ==============
figure                  source                                                    dated by
======================  ========================================================  ==============
closes_seen, matched,   ``toogo_reconcile_binding`` (rule, kind)                  binding written
closed, inserted,
parts, ambiguous
profit_mismatches       bindings of kind ``order`` whose record                   binding written
                        (``toogo_reconcile_record.profit``) differs from the
                        closed order's ``realized_profit`` - what the sync logs
                        as ``profit mismatch``, derived from the state
charges, charged        ``hg_toogo_power_consume``                                consume row
skipped_duplicates      ``toogo_reconcile_skip`` (one row per ``skip duplicate``) the event
refunds, refunded       ``toogo_reconcile_refund`` not reversed                   the refund
corrections, corrected  ``hg_toogo_wallet_log`` ``power_consume_adjust`` rows     the entry
quarantined             ``toogo_reconcile_quarantine``                            first seen
trades, legs, held      closed orders, each judged by reconcile.trades: a trade,  close_time
                        a closing leg of another row's trade, or held (possibly
                        a leg, or awaiting the exchange sync); a dismissed row
                        counts in none
unseen_closes           closed orders of a stream with no binding of any kind,    close_time
                        closed where the exchange has been read: after the
                        stream's first poll less ``sync.lookback`` (bounded by
                        its oldest kept record's ``created_at``) and before its
                        cursor less the match tolerance
======================  ========================================================  ==============

An account's figures are those of its records, and of the orders of its robots
(``hg_trading_robot.api_config_id``); a user's, those of the user's orders and accounts. An order
whose robot is gone counts under no account (``None``) and under its user.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ColumnElement,
    FromClause,
    Select,
    and_,
    case,
    false,
    func,
    or_,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.charging import ledger
from reconcile.charging.orders import Status
from reconcile.charging.trades import TradeJudge, Verdict
from reconcile.errors import OrderNotFound
from reconcile.storage.db import Database
from reconcile.storage.schema import (
    binding,
    correction,
    exchange_record,
    power_consume,
    quarantine,
    refund,
    skipped_duplicate,
    stream_cursor,
    trading_api_config,
    trading_order,
    trading_robot,
    wallet_log,
)
from reconcile.sync.history import SyncSettings

ZERO = Decimal(0)
CORRECTION = ledger.ADJUST  # the ledger's change type of a correction (reconcile.corrections)
#: binding rules of a record bound to a local order that existed (``backfill``: `migrate up`)
MATCH_RULES = ("order_id", "close_time", "backfill")

#: what each figure means (the command's --help, README "Reports")
COLUMNS: dict[str, str] = {
    "trades": "closed orders that are trades (reconcile.trades: one per exchange close)",
    "legs": "closed orders that are the closing leg of another order's trade (never charged)",
    "held": "closed orders held uncharged: possibly a leg, or awaiting the exchange sync",
    "closes_seen": "exchange records the history sync bound (= matched + closed + inserted"
    " + parts + ambiguous)",
    "matched": "records matched to a local order the engine had closed",
    "closed": "records that closed a local order still open",
    "inserted": "records inserted as a local order (a position the local table never saw)",
    "parts": "records bound as a partial close of a local order (no charge)",
    "ambiguous": "records near an order bound to another record (nothing inserted)",
    "charges": "consume rows written (hg_toogo_power_consume), by anyone",
    "charged": "power charged by those consume rows",
    "skipped_duplicates": "orders found already charged and not charged again",
    "refunds": "over-charges refunded by `migrate dedupe --refund` (not reversed since)",
    "refunded": "power those refunds credited",
    "corrections": "correction entries (wallet log power_consume_adjust)",
    "corrected": "their net change of power (negative: a further debit)",
    "profit_mismatches": "matched records whose profit differs from the local order's",
    "quarantined": "exchange records that could not be normalized (first seen)",
    "unseen_closes": "local closes the exchange does not show: closed orders with no record"
    " bound, where the sync has read their stream over their close time",
}


@dataclass(frozen=True)
class Period:
    """[since, until): aware datetimes."""

    since: datetime
    until: datetime


@dataclass(frozen=True)
class Scope:
    user_id: int | None = None
    account_id: int | None = None


@dataclass
class Figures:
    trades: int = 0
    legs: int = 0
    held: int = 0
    closes_seen: int = 0
    matched: int = 0
    closed: int = 0
    inserted: int = 0
    parts: int = 0
    ambiguous: int = 0
    charges: int = 0
    charged: Decimal = ZERO
    skipped_duplicates: int = 0
    refunds: int = 0
    refunded: Decimal = ZERO
    corrections: int = 0
    corrected: Decimal = ZERO
    profit_mismatches: int = 0
    quarantined: int = 0
    unseen_closes: int = 0

    def add(self, other: Figures) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def values(self) -> dict[str, int | Decimal]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Line:
    """One account (``id`` its hg_trading_api_config.id; platform and owner) or one user."""

    id: int | None
    figures: Figures
    platform: str | None = None
    user_id: int | None = None


@dataclass(frozen=True)
class Report:
    period: Period
    scope: Scope
    accounts: list[Line]
    users: list[Line]
    total: Figures


_MONEY = frozenset(f.name for f in fields(Figures) if f.type in ("Decimal", Decimal))
Cell = tuple[int | None, int | None]  # (account, user)


async def report(db: Database, period: Period, scope: Scope, *, sync: SyncSettings) -> Report:
    """``sync``: the history sync's look-back and match tolerance (for ``unseen_closes``)."""
    reader = _Reader(db, period, scope, sync)
    grid, labels = await db.transaction(reader.read, what="read the report", snapshot=True)
    accounts: dict[int | None, Figures] = defaultdict(Figures)
    users: dict[int | None, Figures] = defaultdict(Figures)
    total = Figures()
    for (account_id, user_id), figures in grid.items():
        accounts[account_id].add(figures)
        users[user_id].add(figures)
        total.add(figures)

    def order(key: int | None) -> tuple[bool, int]:
        return key is None, key or 0

    return Report(
        period=period,
        scope=scope,
        accounts=[
            Line(a, accounts[a], *(labels.get(a, (None, None)) if a is not None else (None, None)))
            for a in sorted(accounts, key=order)
        ],
        users=[Line(u, users[u], user_id=u) for u in sorted(users, key=order)],
        total=total,
    )


class _Reader:
    def __init__(self, db: Database, period: Period, scope: Scope, sync: SyncSettings) -> None:
        self.db = db
        self.scope = scope
        self.sync = sync
        # hotgo's times and the daemon's created_at are naive in database.timezone; the
        # quarantine's and the cursors' are naive UTC
        self.local = (db.to_db_time(period.since), db.to_db_time(period.until))
        self.utc = (_utc_naive(period.since), _utc_naive(period.until))

    async def read(
        self, conn: AsyncConnection
    ) -> tuple[dict[Cell, Figures], dict[int, tuple[str | None, int | None]]]:
        grid: dict[Cell, Figures] = defaultdict(Figures)
        for stmt in (
            self._bindings(),
            self._charges(),
            self._skips(),
            self._refunds(),
            self._corrections(),
            self._quarantined(),
            await self._unseen_closes(conn),
        ):
            for row in await conn.execute(stmt):
                values = dict(row._mapping)
                cell = grid[(values.pop("account_id"), values.pop("user_id"))]
                for name, value in values.items():
                    setattr(cell, name, getattr(cell, name) + _figure(name, value))
        await self._judged(conn, grid)
        a = trading_api_config.c
        ids = sorted(k for k, _ in grid if k is not None)
        labels: dict[int, tuple[str | None, int | None]] = {
            r.id: (str(r.platform).strip().lower(), r.user_id)
            for r in await conn.execute(select(a.id, a.platform, a.user_id).where(a.id.in_(ids)))
        }
        return dict(grid), labels

    # -- the families -------------------------------------------------------------------------

    def _grouped(
        self,
        source: FromClause,
        account: Any,
        user: Any,
        when: Any,
        bounds: tuple[datetime, datetime],
        figures: Sequence[ColumnElement[Any]],
        *where: ColumnElement[bool],
    ) -> Select[Any]:
        """``figures`` per (account, user) of ``source``'s rows dated in the period, in scope."""
        scoped = [
            *((account == self.scope.account_id,) if self.scope.account_id is not None else ()),
            *((user == self.scope.user_id,) if self.scope.user_id is not None else ()),
        ]
        return (
            select(account.label("account_id"), user.label("user_id"), *figures)
            .select_from(source)
            .where(when >= bounds[0], when < bounds[1], *where, *scoped)
            .group_by(account, user)
        )

    def _money(self, column: Any, name: str) -> ColumnElement[Any]:
        # SQLite keeps decimals as text, which SUM would add as floats: their texts are summed
        # in Python instead (see _figure)
        if self.db.dialect.text_decimals:
            return func.group_concat(column, " ").label(name)
        return func.sum(column).label(name)

    def _bindings(self) -> Select[Any]:
        b, r, o, a = binding.c, exchange_record.c, trading_order.c, trading_api_config.c
        source = (
            binding.outerjoin(trading_api_config, a.id == b.account_id)
            .outerjoin(exchange_record, _its_record())
            .outerjoin(trading_order, o.id == b.order_id)
        )
        order = b.kind == "order"
        mismatch = and_(order, o.status == int(Status.CLOSED), o.realized_profit != r.profit)
        figures = [
            func.count().label("closes_seen"),
            _count(and_(order, b.rule.in_(MATCH_RULES)), "matched"),
            _count(and_(order, b.rule == "open"), "closed"),
            _count(and_(order, b.rule == "insert"), "inserted"),
            _count(b.kind == "part", "parts"),
            _count(b.kind == "ambiguous", "ambiguous"),
            _count(mismatch, "profit_mismatches"),
        ]
        return self._grouped(source, b.account_id, a.user_id, b.created_at, self.local, figures)

    def _orders_of(self, table: Any, order_id: Any) -> FromClause:
        """``table`` with its order and that order's robot (outer: either may be gone)."""
        o, rb = trading_order.c, trading_robot.c
        joined: FromClause = table.outerjoin(trading_order, o.id == order_id).outerjoin(
            trading_robot, rb.id == o.robot_id
        )
        return joined

    def _charges(self) -> Select[Any]:
        c, rb = power_consume.c, trading_robot.c
        source = power_consume.outerjoin(trading_robot, rb.id == c.robot_id)
        figures = [func.count().label("charges"), self._money(c.consume_power, "charged")]
        return self._grouped(source, rb.api_config_id, c.user_id, c.created_at, self.local, figures)

    def _skips(self) -> Select[Any]:
        s = skipped_duplicate.c
        source = self._orders_of(skipped_duplicate, s.order_id)
        account = trading_robot.c.api_config_id
        figures = [func.count().label("skipped_duplicates")]
        return self._grouped(source, account, s.user_id, s.created_at, self.local, figures)

    def _refunds(self) -> Select[Any]:
        f = refund.c
        source = self._orders_of(refund, f.order_id)
        account = trading_robot.c.api_config_id
        figures = [func.count().label("refunds"), self._money(f.amount, "refunded")]
        return self._grouped(
            source, account, f.user_id, f.created_at, self.local, figures, f.reversed == 0
        )

    def _corrections(self) -> Select[Any]:
        w = wallet_log.c
        source = self._orders_of(wallet_log, w.related_id)
        account = trading_robot.c.api_config_id
        figures = [func.count().label("corrections"), self._money(w.change_amount, "corrected")]
        return self._grouped(
            source, account, w.user_id, w.created_at, self.local, figures,
            w.account_type == "power", w.change_type == CORRECTION,
        )  # fmt: skip

    def _quarantined(self) -> Select[Any]:
        q, a = quarantine.c, trading_api_config.c
        source = quarantine.outerjoin(trading_api_config, a.id == q.account_id)
        figures = [func.count().label("quarantined")]
        return self._grouped(source, q.account_id, a.user_id, q.first_seen, self.utc, figures)

    async def _judged(self, conn: AsyncConnection, grid: dict[Cell, Figures]) -> None:
        """trades / legs / held: every closed order of the period judged (read-only)."""
        o, rb = trading_order.c, trading_robot.c
        source = trading_order.outerjoin(trading_robot, rb.id == o.robot_id)
        scoped = [
            *((rb.api_config_id == self.scope.account_id,) if self.scope.account_id else ()),
            *((o.user_id == self.scope.user_id,) if self.scope.user_id is not None else ()),
        ]
        stmt = (
            select(o.id, rb.api_config_id, o.user_id)
            .select_from(source)
            .where(
                o.status == int(Status.CLOSED),
                o.close_time >= self.local[0],
                o.close_time < self.local[1],
                *scoped,
            )
            .order_by(o.id)
        )
        rows = list(await conn.execute(stmt))
        judge = TradeJudge(self.db, tolerance=self.sync.match_tolerance)
        judged = await judge.judge_all(conn, [r.id for r in rows])
        figure = {Verdict.TRADE: "trades", Verdict.LEG: "legs", Verdict.HELD: "held"}
        for order_id, account_id, user_id in rows:
            judgement = judged.get(order_id)
            name = figure.get(judgement.verdict) if judgement is not None else None
            if name is not None:
                cell = grid[(account_id, user_id)]
                setattr(cell, name, getattr(cell, name) + 1)

    async def _unseen_closes(self, conn: AsyncConnection) -> Select[Any]:
        """Closed orders with no binding of any kind, of a stream the exchange was read for
        over their close time: from the stream's first poll less ``sync.lookback`` (its first
        record kept was written at that poll or later: a sound lower bound) to its cursor (UTC)
        less the match tolerance. One condition per stream (one per account and symbol)."""
        o, rb, b, c, r = (
            trading_order.c, trading_robot.c, binding.c, stream_cursor.c, exchange_record.c
        )  # fmt: skip
        polled = (
            select(c.account_id, c.symbol, c.complete_until, func.min(r.created_at))
            .join_from(
                stream_cursor,
                exchange_record,
                and_(r.platform == c.platform, r.account_id == c.account_id, r.symbol == c.symbol),
            )
            .where(c.complete_until.is_not(None))
            .group_by(c.account_id, c.symbol, c.complete_until)
        )
        streams = [
            and_(
                rb.api_config_id == account_id,
                rb.symbol == symbol,
                o.close_time >= first_poll - self.sync.lookback,
                o.close_time
                <= self.db.to_db_time(until.replace(tzinfo=UTC)) - self.sync.match_tolerance,
            )
            for account_id, symbol, until, first_poll in await conn.execute(polled)
        ]
        source = trading_order.join(trading_robot, rb.id == o.robot_id)
        bound = select(b.id).where(b.order_id == o.id).exists()
        return self._grouped(
            source, rb.api_config_id, o.user_id, o.close_time, self.local,
            [func.count().label("unseen_closes")],
            o.status == int(Status.CLOSED), ~bound, or_(false(), *streams),
        )  # fmt: skip


def _its_record() -> ColumnElement[bool]:
    """A binding's record: the same platform, account and record key."""
    b, r = binding.c, exchange_record.c
    return and_(
        r.platform == b.platform, r.account_id == b.account_id, r.record_key == b.record_key
    )


def _utc_naive(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


def _count(condition: ColumnElement[bool], name: str) -> ColumnElement[Any]:
    return func.count(case((condition, 1))).label(name)


def _figure(name: str, value: Any) -> int | Decimal:
    if name not in _MONEY:
        return int(value or 0)
    if isinstance(value, str):  # SQLite: the group's exact decimal texts
        return sum((Decimal(v) for v in value.split()), ZERO)
    return ZERO if value is None else Decimal(value)


# -- one order's chain ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Chain:
    """Everything the database holds about one order, from the exchange to the ledger."""

    order: dict[str, Any]
    bindings: list[dict[str, Any]] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)  # with raw and normalized
    consumes: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    ledger: list[dict[str, Any]] = field(default_factory=list)
    refunds: list[dict[str, Any]] = field(default_factory=list)
    corrections: list[dict[str, Any]] = field(default_factory=list)  # toogo_reconcile_correction

    def parts(self) -> dict[str, list[dict[str, Any]]]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "order"}


async def order_chain(db: Database, order_id: int) -> Chain:
    """Raises ``OrderNotFound``."""
    b, r, c, s, w, f, k = (
        binding.c, exchange_record.c, power_consume.c, skipped_duplicate.c, wallet_log.c,
        refund.c, correction.c,
    )  # fmt: skip

    async def read(conn: AsyncConnection) -> Chain:
        # every column the install has (the optional ones of upstream's DDL included)
        found = await conn.execute(
            text(f"SELECT * FROM {trading_order.name} WHERE id = :id"),  # noqa: S608
            {"id": order_id},
        )
        order = found.mappings().one_or_none()
        if order is None:
            raise OrderNotFound(order_id)

        async def rows(stmt: Select[Any]) -> list[dict[str, Any]]:
            return [dict(m) for m in (await conn.execute(stmt)).mappings()]

        records = await rows(
            select(exchange_record)
            .join(binding, _its_record())
            .where(b.order_id == order_id)
            .order_by(r.id)
        )
        for record in records:
            record["normalized"] = json.loads(record.pop("normalized_json"))
            record["raw"] = json.loads(record.pop("raw_json"))
        ledger = await rows(
            select(wallet_log)
            .where(
                w.related_id == order_id,
                w.related_type == "trading_order",
                w.user_id == order["user_id"],
            )
            .order_by(w.id)
        )
        return Chain(
            order=dict(order),
            bindings=await rows(select(binding).where(b.order_id == order_id).order_by(b.id)),
            records=records,
            consumes=await rows(select(power_consume).where(c.order_id == order_id).order_by(c.id)),
            skipped=await rows(
                select(skipped_duplicate).where(s.order_id == order_id).order_by(s.id)
            ),
            ledger=ledger,
            refunds=await rows(select(refund).where(f.order_id == order_id).order_by(f.id)),
            # each with its revision, both profits and charges, and its ledger row's id
            corrections=await rows(
                select(correction).where(k.order_id == order_id).order_by(k.revision)
            ),
        )

    return await db.transaction(read, what="read an order's chain", snapshot=True)


__all__ = ["COLUMNS", "Chain", "Figures", "Line", "Period", "Report", "Scope", "order_chain"]
