"""Audit checks on charges after they were made: corrections (check 9: each an entry in the
ledger, each order's revisions a chain) and charged closing legs (check 11). The checks are listed
in reconcile/views/audit.py; docs/runbook.md says what to do about each."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.charging.ledger import ADJUST
from reconcile.charging.trades import charged_legs
from reconcile.storage.db import Database
from reconcile.storage.schema import correction, power_consume, wallet_log
from reconcile.views.findings import Check


async def charged_leg_check(
    conn: AsyncConnection, db: Database, present: bool, within: timedelta | None
) -> Check:
    """Check 11: the charged rows that are closing legs (reconcile.charging.trades.charged_legs)."""
    check = Check("charged_legs", "no closing leg of another row's trade carries a charge")
    if not present:  # before `migrate up`: the daemon's tables (and its verdicts) are not there
        return check
    since = db.to_db_time(datetime.now(UTC) - within) if within is not None else None
    for leg in await charged_legs(conn, db, charged_since=since):
        check.add(
            {
                "order_id": leg.order_id,
                "user_id": leg.user_id,
                "order_sn": leg.order_sn,
                "consume_power": leg.consume_power,
                "trade_order_id": leg.trade_order_id,
                "rule": leg.rule,
            },
        )
    return check


async def correction_check(conn: AsyncConnection, present: bool) -> Check:
    """Each correction an entry with its own ledger row, each order's revisions a chain from
    its consume row (reconcile.charging.corrections)."""
    check = Check(
        "correction_entries",
        "every correction has its power_consume_adjust ledger row and continues the last",
    )
    if not present:
        return check
    k, w, c = correction.c, wallet_log.c, power_consume.c

    def violation(problem: str, **example: Any) -> None:
        check.add({"problem": problem, **example})

    rows = await conn.execute(
        select(
            k.id,
            k.order_id,
            k.user_id,
            k.revision,
            k.old_profit,
            k.new_profit,
            k.old_charge,
            k.new_charge,
            k.delta,
            k.wallet_log_id,
            w.id.label("log_id"),
            w.user_id.label("log_user"),
            w.related_id,
            w.change_type,
            w.change_amount,
            c.profit_amount,
            c.consume_power,
        )
        .select_from(
            correction.outerjoin(wallet_log, w.id == k.wallet_log_id).outerjoin(
                power_consume, and_(c.user_id == k.user_id, c.order_id == k.order_id)
            )
        )
        .order_by(k.order_id, k.revision)
    )
    previous: dict[int, tuple[int, Decimal, Decimal]] = {}
    for r in rows:
        where = {"correction_id": r.id, "order_id": r.order_id, "revision": r.revision}
        if r.log_id is None:
            violation("no ledger row", wallet_log_id=r.wallet_log_id, **where)
        elif (r.log_user, r.related_id, r.change_type, r.change_amount) != (
            r.user_id,
            r.order_id,
            ADJUST,
            -r.delta,
        ):
            violation("ledger row differs", wallet_log_id=r.log_id, change=r.change_amount, **where)
        if r.new_charge - r.old_charge != r.delta:
            violation("delta != new_charge - old_charge", **where)
        if r.consume_power is None:
            violation("no consume row", **where)
            continue
        rev, profit, charge = previous.get(r.order_id, (0, r.profit_amount, r.consume_power))
        if (r.revision, r.old_profit, r.old_charge) != (rev + 1, profit, charge):
            violation("revision chain broken", old_charge=r.old_charge, expected=charge, **where)
        previous[r.order_id] = (r.revision, r.new_profit, r.new_charge)
    orphans = (
        select(w.id.label("wallet_log_id"), w.user_id, w.related_id, w.change_amount)
        .select_from(wallet_log.outerjoin(correction, k.wallet_log_id == w.id))
        .where(w.change_type == ADJUST, k.id.is_(None))
        .order_by(w.id)
    )
    for row in await conn.execute(orphans):
        violation("ledger row without a correction", **dict(row._mapping))
    return check
