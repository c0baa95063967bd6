"""The reconciliation report's reads: one grouped query per family of figures (bindings,
charges, skips, refunds, corrections, quarantine, unseen closes), per (account, user), dated by
each figure's own event, plus the trades, legs and held orders judged by
:mod:`reconcile.charging.trades`. Read-only, in the caller's snapshot transaction; which table
and date each figure comes from is tabled in :mod:`reconcile.views.report`. See docs/reports.md.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
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
)
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.charging import ledger
from reconcile.charging.orders import Status
from reconcile.charging.trades import TradeJudge
from reconcile.charging.verdicts import Verdict
from reconcile.storage.db import Database
from reconcile.storage.schema import (
    binding,
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
from reconcile.sync.settings import SyncSettings
from reconcile.views.report_figures import Cell, Figures, Period, Scope, figure

#: the ledger's change type of a correction (reconcile.charging.corrections)
CORRECTION = ledger.ADJUST
#: binding rules of a record bound to a local order that existed (``backfill``: `migrate up`)
MATCH_RULES = ("order_id", "close_time", "backfill")


class FigureReader:
    """The figures of a period, in a scope, per (account, user) cell."""

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
                    setattr(cell, name, getattr(cell, name) + figure(name, value))
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
            .outerjoin(exchange_record, its_record())
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
            source,
            account,
            w.user_id,
            w.created_at,
            self.local,
            figures,
            w.account_type == "power",
            w.change_type == CORRECTION,
        )

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
            trading_order.c,
            trading_robot.c,
            binding.c,
            stream_cursor.c,
            exchange_record.c,
        )
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
            source,
            rb.api_config_id,
            o.user_id,
            o.close_time,
            self.local,
            [func.count().label("unseen_closes")],
            o.status == int(Status.CLOSED),
            ~bound,
            or_(false(), *streams),
        )


def its_record() -> ColumnElement[bool]:
    """A binding's record: the same platform, account and record key."""
    b, r = binding.c, exchange_record.c
    return and_(
        r.platform == b.platform, r.account_id == b.account_id, r.record_key == b.record_key
    )


def _utc_naive(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


def _count(condition: ColumnElement[bool], name: str) -> ColumnElement[Any]:
    return func.count(case((condition, 1))).label(name)


__all__ = ["CORRECTION", "MATCH_RULES", "FigureReader", "its_record"]
