"""The ledger invariants, checked against the database (``toogo-reconcile audit``).

1. no (user_id, order_id) has more than one consume row;
2. a consume row exists  <=>  its order has power_consumed = 1, with power_amount equal to it;
3. per user, the consume rows and the corrections add up to what the ledger took:
   Σ consume_power + Σ correction delta = −Σ change_amount over power_consume, refund,
   refund-reversal and power_consume_adjust rows;
4. each user's power ledger is a chain: change = after − before on every row, every row starts
   where the previous one ended;
5. every wallet's power is its ledger's last after_amount (hotgo's Go wallet writer reads without
   a lock and writes an absolute balance: a daemon debit between its read and write is lost, and
   this is where it shows) - every such wallet is listed with both figures;
6. no eligible order (closed, profitable, unconsumed) waits longer than one compensation
   interval - the backlog; a closing leg (reconcile.charging.trades) or a dismissed row is not
   eligible, and a held one is listed by check 10 instead;
7. no closed profitable unconsumed order has the engine's placeholder close time (2006): those
   are never charged, so they are listed;
8. no unusable exchange record waits in quarantine (its close is neither recorded nor charged);
9. every correction is an entry: its own power_consume_adjust ledger row (same user and order,
   change = −delta), every such ledger row has its correction, and each order's revisions run
   1, 2, ... each starting where the previous ended (revision 1 at the consume row's profit and
   charge), delta = new_charge − old_charge;
10. no row is held (possibly another row's closing leg, or awaiting the exchange sync) for
    longer than one compensation interval - each waits for the sync or an operator
    (``held charge`` / ``held dismiss``), so each is listed with its reason;
11. no closing leg carries a charge (reconcile.charging.trades): each leg an earlier release or
    hotgo charged is listed with its user, amount and trade - an over-charge to refund.

Each check reports a count and a few examples. Sums run in SQL on MySQL (exact DECIMAL); on
SQLite, which holds decimals as text, they are added up in Python. See docs/runbook.md.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.charging.ledger import ADJUST, CONSUME, REFUND, REFUND_REVERSAL
from reconcile.charging.orders import REAL_CLOSE_TIMES_FROM, eligible_sql, unconsumed_profit_sql
from reconcile.charging.trades import TradeJudge
from reconcile.charging.verdicts import Verdict, settled_rows
from reconcile.storage.db import Database
from reconcile.storage.schema import (
    correction,
    power_consume,
    quarantine,
    table_names,
    trading_order,
    verdict,
    wallet,
    wallet_log,
)
from reconcile.views.audit_charges import charged_leg_check, correction_check
from reconcile.views.findings import EXAMPLES, AuditReport, Check

LEDGER_TYPES = (CONSUME, REFUND, REFUND_REVERSAL, ADJUST)


async def audit(
    db: Database, *, backlog_after: timedelta, legs_within: timedelta | None = None
) -> AuditReport:
    """``legs_within``: check 11 judges only the consume rows written that recently (the
    daemon's periodic audit: the whole history is `toogo-reconcile audit`'s and `migrate
    check`'s, once, as it grows with every charge ever made)."""

    async def run(conn: AsyncConnection) -> AuditReport:
        chains, balances, last = await _chains(conn)
        corrections = correction.name in await table_names(conn)  # before `migrate up`: none
        return AuditReport(
            [
                await _duplicates(conn),
                await _flags(conn),
                await _sums(conn, not db.dialect.text_decimals, corrections),
                chains,
                await _wallets(balances, last),
                *await _backlog(conn, db, backlog_after),
                await _placeholder_close_times(conn, db),
                await _quarantined(conn),
                await correction_check(conn, corrections),
                await charged_leg_check(conn, db, corrections, legs_within),
            ]
        )

    # one snapshot: a charge committing between two checks' reads would otherwise look like a
    # wallet or a sum that disagrees with its ledger (the daemon audits while it charges)
    return await db.transaction(run, what="audit the ledger", snapshot=True)


async def _duplicates(conn: AsyncConnection) -> Check:
    check = Check("duplicate_consume", "no order has more than one consume row")
    c = power_consume.c
    groups = (
        select(c.user_id, c.order_id, func.count().label("rows"))
        .group_by(c.user_id, c.order_id)
        .having(func.count() > 1)
        .subquery()
    )
    check.violations = (await conn.execute(select(func.count()).select_from(groups))).scalar_one()
    rows = await conn.execute(select(groups).order_by(groups.c.user_id).limit(EXAMPLES))
    check.examples = [dict(r._mapping) for r in rows]
    return check


async def _flags(conn: AsyncConnection) -> Check:
    check = Check("consume_flag", "consume row <=> power_consumed = 1 with equal power_amount")
    c, o = power_consume.c, trading_order.c
    joined = power_consume.outerjoin(
        trading_order, and_(o.id == c.order_id, o.user_id == c.user_id)
    )
    charged_wrong = (
        select(c.order_id, c.user_id, o.power_consumed, o.power_amount, c.consume_power)
        .select_from(joined)
        .where(or_(o.id.is_(None), o.power_consumed != 1, o.power_amount != c.consume_power))
    )
    flagged_alone = (
        select(o.id.label("order_id"), o.user_id, o.power_consumed, o.power_amount)
        .select_from(
            trading_order.outerjoin(power_consume, and_(c.order_id == o.id, c.user_id == o.user_id))
        )
        .where(o.power_consumed == 1, c.id.is_(None))
    )
    for stmt, problem in (
        (charged_wrong, "consume row without matching flag/amount (or without order)"),
        (flagged_alone, "power_consumed = 1 without a consume row"),
    ):
        count = (await conn.execute(select(func.count()).select_from(stmt.subquery()))).scalar_one()
        check.violations += count
        if count:
            for row in await conn.execute(stmt.limit(EXAMPLES)):
                check.examples.append({"problem": problem, **dict(row._mapping)})
    return check


async def _sums(conn: AsyncConnection, exact_sql: bool, corrections: bool) -> Check:
    check = Check(
        "consume_vs_ledger",
        "per user, Σ consume_power + Σ correction delta = −Σ ledger change_amount",
    )
    c, w, k = power_consume.c, wallet_log.c, correction.c
    ledger_filter = (w.account_type == "power", w.change_type.in_(LEDGER_TYPES))
    consumed: dict[int, Decimal] = defaultdict(Decimal)
    for uid, amount in await _per_user(conn, exact_sql, c.user_id, c.consume_power):
        consumed[uid] += amount
    if corrections:
        for uid, amount in await _per_user(conn, exact_sql, k.user_id, k.delta):
            consumed[uid] += amount
    logged: dict[int, Decimal] = defaultdict(Decimal)
    for uid, amount in await _per_user(conn, exact_sql, w.user_id, w.change_amount, ledger_filter):
        logged[uid] += amount
    for uid in sorted(set(consumed) | set(logged)):
        total = consumed.get(uid, Decimal(0))
        ledger = -logged.get(uid, Decimal(0))
        if total != ledger:
            check.add({"user_id": uid, "consumed": total, "ledger": ledger})
    return check


async def _per_user(
    conn: AsyncConnection, exact_sql: bool, user: Any, amount: Any, where: Sequence[Any] = ()
) -> list[Any]:
    """(user_id, amount) rows: one sum per user where SQL sums exactly, else every row (added
    up by the caller in Python)."""
    if exact_sql:
        return list(await conn.execute(select(user, func.sum(amount)).where(*where).group_by(user)))
    return list(await conn.execute(select(user, amount).where(*where)))


async def _chains(
    conn: AsyncConnection,
) -> tuple[Check, dict[int, Decimal], dict[int, tuple[int, Decimal, Any]]]:
    check = Check("ledger_chain", "each user's power ledger is an unbroken before/after chain")
    w = wallet_log.c
    balances = dict((await conn.execute(select(wallet.c.user_id, wallet.c.power))).all())
    rows = await conn.execute(
        select(w.id, w.user_id, w.change_amount, w.before_amount, w.after_amount, w.created_at)
        .where(w.account_type == "power")
        .order_by(w.user_id, w.id)
    )
    last: dict[int, tuple[int, Decimal, Any]] = {}

    def violation(**example: Any) -> None:
        check.add(example)

    for row in rows:
        if row.after_amount - row.before_amount != row.change_amount:
            violation(user_id=row.user_id, wallet_log_id=row.id, problem="after - before != change")
        previous = last.get(row.user_id)
        if previous is not None and previous[1] != row.before_amount:
            violation(
                user_id=row.user_id,
                wallet_log_id=row.id,
                problem="chain broken",
                previous_after=previous[1],
                before=row.before_amount,
            )
        last[row.user_id] = (row.id, row.after_amount, row.created_at)
    return check, balances, last


async def _wallets(
    balances: dict[int, Decimal], last: dict[int, tuple[int, Decimal, Any]]
) -> Check:
    """A wallet whose balance is not its ledger's last after_amount: what a lost update by a
    read-then-write writer (hotgo's Go ChangeBalance) looks like. Every such wallet is listed."""
    check = Check("wallet_vs_ledger", "each wallet's power equals its ledger's last after_amount")
    for uid, (log_id, after, at) in sorted(last.items()):
        if uid in balances and balances[uid] != after:
            check.violations += 1
            check.examples.append(
                {
                    "user_id": uid,
                    "wallet_power": balances[uid],
                    "last_after": after,
                    "last_wallet_log_id": log_id,
                    "last_ledger_at": at,
                }
            )
    return check


async def _quarantined(conn: AsyncConnection) -> Check:
    """Exchange records that could not be normalized wait in quarantine: until they are
    re-processed (``exchange quarantine --retry``), what they closed is neither recorded nor
    charged."""
    check = Check("quarantine", "no unusable exchange record waits in quarantine")
    if quarantine.name not in await table_names(conn):  # before `migrate up`
        return check
    q = quarantine.c
    waiting = (
        select(q.platform, q.account_id, q.symbol, q.record_key, q.reason, q.first_seen)
        .where(q.resolved_at.is_(None))
        .order_by(q.first_seen, q.id)
    )
    check.violations = (
        await conn.execute(select(func.count()).select_from(waiting.subquery()))
    ).scalar_one()
    check.examples = [dict(r._mapping) for r in await conn.execute(waiting.limit(EXAMPLES))]
    return check


async def _placeholder_close_times(conn: AsyncConnection, db: Database) -> Check:
    """Closed profitable unconsumed orders whose close_time is the engine's placeholder (2006):
    they are never charged on it, so someone must look at them."""
    check = Check(
        "placeholder_close_time",
        f"no closed profitable unconsumed order has a close_time before {REAL_CLOSE_TIMES_FROM:%Y}",
    )
    o = trading_order.c
    stmt = (
        select(o.id.label("order_id"), o.user_id, o.robot_id, o.close_time, o.realized_profit)
        .where(
            *unconsumed_profit_sql(db.dialect),
            or_(o.close_time < REAL_CLOSE_TIMES_FROM, o.close_time.is_(None)),
        )
        .order_by(o.id)
    )
    check.violations = (
        await conn.execute(select(func.count()).select_from(stmt.subquery()))
    ).scalar_one()
    check.examples = [dict(r._mapping) for r in await conn.execute(stmt.limit(EXAMPLES))]
    return check


async def _backlog(conn: AsyncConnection, db: Database, older_than: timedelta) -> list[Check]:
    """Checks 6 and 10: the eligible orders older than ``older_than``, each judged (legs and
    dismissed rows are not eligible; a held row is listed apart, with its reason)."""
    check = Check("backlog", f"no eligible order unconsumed for longer than {older_than}")
    held = Check("held", f"no row held for longer than {older_than} (see `held list`)")
    o = trading_order.c
    cutoff = db.to_db_time(datetime.now(UTC) - older_than)
    own = verdict.name in await table_names(conn)  # before `migrate up`: no verdicts
    waiting = (
        select(o.id.label("order_id"), o.user_id, o.close_time, o.realized_profit)
        .where(
            *eligible_sql(db.dialect),
            o.close_time < cutoff,
            *((~settled_rows(o.id),) if own else ()),
        )
        .order_by(o.close_time, o.id)
    )
    rows = [dict(r._mapping) for r in await conn.execute(waiting)]
    judged = await TradeJudge(db).judge_all(conn, [r["order_id"] for r in rows])
    for row in rows:
        judgement = judged.get(row["order_id"])
        if judgement is not None and judgement.verdict is Verdict.HELD:
            held.add({**row, "rule": str(judgement.rule), "reason": judgement.reason})
        elif judgement is None or judgement.charge:
            check.add(row)
    return [check, held]
