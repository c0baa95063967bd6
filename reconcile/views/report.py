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
trades, legs, held      closed orders, each judged by charging.trades: a trade,   close_time
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

The figures' shapes are in :mod:`reconcile.views.report_figures`, their queries in
:mod:`reconcile.views.report_queries`; this module assembles them into lines, and reads one
order's chain. See docs/reports.md.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field, fields
from typing import Any

from sqlalchemy import Select, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.errors import OrderNotFound
from reconcile.storage.db import Database
from reconcile.storage.schema import (
    binding,
    correction,
    exchange_record,
    power_consume,
    refund,
    skipped_duplicate,
    trading_order,
    wallet_log,
)
from reconcile.sync.settings import SyncSettings
from reconcile.views.report_figures import Figures, Line, Period, Report, Scope
from reconcile.views.report_queries import FigureReader, its_record


async def report(db: Database, period: Period, scope: Scope, *, sync: SyncSettings) -> Report:
    """``sync``: the history sync's look-back and match tolerance (for ``unseen_closes``)."""
    reader = FigureReader(db, period, scope, sync)
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
        binding.c,
        exchange_record.c,
        power_consume.c,
        skipped_duplicate.c,
        wallet_log.c,
        refund.c,
        correction.c,
    )

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
            .join(binding, its_record())
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


__all__ = ["Chain", "order_chain", "report"]
