"""Refund the power charged on closing legs (reconcile.charging.trades): an earlier release, or
hotgo while its own charging was on, charged the second row upstream's engine writes for a trade's
closing order on top of the trade itself.

One transaction does it all, as the dedupe does, so a failure anywhere leaves nothing:

1. lock the affected users' wallet rows in user-id order, then the legs' consume rows;
2. register the backup (kind ``legs``), copy the consume rows and the wallets into the backup
   tables, delete the consume rows, set the legs' ``power_consumed = 0, power_amount = 0``
   (the audit's "consume row <=> flag" stays true) and record each leg in
   ``toogo_reconcile_verdict`` (never charged again);
3. credit each user once per leg (a ``power_consume_refund`` ledger row) and record each refund
   in ``toogo_reconcile_refund`` by consume id: a row is never refunded twice; one whose refund a
   rollback reversed is refunded again.

``migrate rollback`` of that backup puts the consume rows back (same ids), flags the legs
charged again and, with ``--reverse-refunds``, debits the refunds again; it does not touch
``uk_user_order``. The legs stay recorded as legs: the sweep never charges them again either way.
See docs/runbook.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.charging import ledger
from reconcile.charging.trades import ChargedLeg, charged_legs
from reconcile.charging.verdicts import Judgement, Rule, Verdict, record_legs
from reconcile.migration._backup import (
    BackupInfo,
    copy_rows,
    create_backup_tables,
    drop_unregistered,
    ensure_registry,
    finish,
    register,
)
from reconcile.migration._common import CONSUME, WALLET, ZERO, chunks, require_server
from reconcile.storage.db import Database
from reconcile.storage.schema import power_consume, refund, trading_order

log = structlog.get_logger("reconcile.migration")

KIND = "legs"


@dataclass
class LegsResult:
    dry_run: bool
    legs: list[ChargedLeg]
    refunded_rows: int = 0
    refunded_amount: Decimal = ZERO
    already_refunded: int = 0
    backup: BackupInfo | None = None
    seconds: float = 0.0
    users: dict[int, Decimal] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return self.refunded_rows > 0


async def scan_legs(db: Database) -> list[ChargedLeg]:
    async def read(conn: AsyncConnection) -> list[ChargedLeg]:
        return await charged_legs(conn, db)

    return await db.transaction(read, what="migrate scan charged legs")


async def refund_legs(db: Database, *, dry_run: bool = True) -> LegsResult:
    """Dry run by default: the charged legs, per user; otherwise refund them (see above)."""
    require_server(db)
    started = time.monotonic()
    found = await scan_legs(db)
    users = _per_user(found)
    log.info(
        "migrate legs scan",
        charged_legs=len(found),
        amount=sum((leg.consume_power for leg in found), ZERO),
        users=len(users),
    )
    if dry_run or not found:
        return LegsResult(dry_run=dry_run, legs=found, users=users)
    await ensure_registry(db)
    tables = await create_backup_tables(db)

    async def unit(conn: AsyncConnection) -> LegsResult:
        return await _apply(db, conn, found, tables)

    try:
        result = await db.transaction(unit, what="migrate refund charged legs")
    except BaseException:
        await drop_unregistered(db, tables)
        raise
    if result.backup is None:  # nothing left to refund, or committed on an earlier attempt
        result.backup = await drop_unregistered(db, tables)
    result.seconds = time.monotonic() - started
    log.info(
        "migrate legs refunded",
        legs=len(result.legs),
        refunded_rows=result.refunded_rows,
        refunded_amount=result.refunded_amount,
        already_refunded_rows=result.already_refunded,
        backup_id=result.backup.id if result.backup else None,
        seconds=round(result.seconds, 3),
    )
    return result


async def _apply(
    db: Database, conn: AsyncConnection, found: list[ChargedLeg], tables: tuple[str, str]
) -> LegsResult:
    now = db.now()
    balances = await ledger.lock(db, conn, sorted({leg.user_id for leg in found}), require=False)
    c = power_consume.c
    present = {
        int(i)
        for chunk in chunks([leg.consume_id for leg in found])
        for (i,) in await conn.execute(
            select(c.id).where(c.id.in_(list(chunk))).order_by(c.id).with_for_update()
        )
    }
    legs = [leg for leg in found if leg.consume_id in present]  # another run got the rest
    out = LegsResult(dry_run=False, legs=legs, users=_per_user(legs))
    if not legs:
        return out
    f = refund.c
    refunded = {
        r.consume_id: r.reversed
        for chunk in chunks([leg.consume_id for leg in legs])
        for r in await conn.execute(
            select(f.consume_id, f.reversed).where(f.consume_id.in_(list(chunk))).with_for_update()
        )
    }
    owed = [leg for leg in legs if refunded.get(leg.consume_id, 1)]  # none yet, or reversed
    out.already_refunded = len(legs) - len(owed)
    out.refunded_rows = len(owed)
    out.refunded_amount = sum((leg.consume_power for leg in owed), ZERO)
    backup_id = await register(
        conn,
        kind=KIND,
        consume_table=tables[0],
        wallet_table=tables[1],
        dup_groups=0,
        deleted_rows=len(legs),
        refunded_rows=out.refunded_rows,
        refunded_amount=out.refunded_amount,
        created_at=now,
    )
    ids = [leg.consume_id for leg in legs]
    n_consume = await copy_rows(conn, tables[0], CONSUME, "id", ids)
    n_wallet = await copy_rows(conn, tables[1], WALLET, "user_id", sorted(out.users))
    for chunk in chunks(ids):
        await conn.execute(power_consume.delete().where(c.id.in_(list(chunk))))
    o = trading_order.c
    for chunk in chunks(sorted({leg.order_id for leg in legs})):
        await conn.execute(
            trading_order.update()
            .where(o.id.in_(list(chunk)))
            .values(power_consumed=0, power_amount=ZERO)
        )
    await record_legs(
        conn,
        db,
        [Judgement(leg.order_id, Verdict.LEG, Rule(leg.rule), leg.trade_order_id) for leg in legs],
    )
    if owed:
        missing = sorted({leg.user_id for leg in owed} - set(balances))
        if missing:  # charged without a wallet row: credit a new (zero) one
            balances.update(await ledger.create_locked(db, conn, missing))
        entries = sorted(
            (
                ledger.Entry(
                    leg.user_id,
                    leg.order_id,
                    leg.order_sn,
                    leg.consume_power,
                    f"refund of the power charged on a closing leg of order {leg.trade_order_id}"
                    f" (rule {leg.rule}): consume row {leg.consume_id} deleted by migrate",
                )
                for leg in owed
            ),
            key=lambda e: (e.user_id, e.order_id),
        )
        _, ledger_ids = await ledger.post(
            conn, entries, balances, change_type=ledger.REFUND, now=now, returning=True
        )
        again = [leg for leg in owed if leg.consume_id in refunded]
        new = [leg for leg in owed if leg.consume_id not in refunded]
        rows = {
            leg.consume_id: {
                "consume_id": leg.consume_id,
                "backup_id": backup_id,
                "user_id": leg.user_id,
                "order_id": leg.order_id,
                "order_sn": leg.order_sn,
                "amount": leg.consume_power,
                "wallet_log_id": ledger_ids[(leg.user_id, leg.order_id)],
                "created_at": now,
            }
            for leg in owed
        }
        for part in chunks(new):
            await conn.execute(refund.insert(), [rows[leg.consume_id] for leg in part])
        for leg in again:  # refunded, reversed by a rollback, deleted again: owed again
            values = {k: v for k, v in rows[leg.consume_id].items() if k != "consume_id"}
            await conn.execute(
                refund.update()
                .where(f.consume_id == leg.consume_id)
                .values(reversed=0, reversed_at=None, reversal_wallet_log_id=None, **values)
            )
    out.backup = await finish(conn, backup_id, n_consume, n_wallet)
    return out


def _per_user(legs: list[ChargedLeg]) -> dict[int, Decimal]:
    users: dict[int, Decimal] = {}
    for leg in legs:
        users[leg.user_id] = users.get(leg.user_id, ZERO) + leg.consume_power
    return dict(sorted(users.items()))


__all__ = ["KIND", "LegsResult", "refund_legs", "scan_legs"]
