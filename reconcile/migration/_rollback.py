"""Undo the cleanup: drop ``uk_user_order``, put back the rows the last dedupe deleted.

Two steps, in the only order that can work (the restored rows are duplicates again):

1. ``ALTER TABLE ... DROP INDEX uk_user_order`` - one atomic statement;
2. one transaction: lock the registry row, insert every backed-up row that is not in the live
   table (all columns, same ids: byte for byte), optionally debit the dedupe's refunds again
   (``--reverse-refunds``: one ``power_consume_refund_reversal`` ledger row per order, refund
   rows marked reversed), mark the backup rolled back.

If step 2 fails, the key is gone and nothing else changed - a consistent state (no duplicates,
no key) that a second ``rollback`` completes and ``add-unique-key`` undoes. Refunds stay by
default: they were owed. Wallets are never overwritten from the backup (that would erase every
charge since); the wallet backup table is there for forensics.
See docs/runbook.md.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import structlog
from sqlalchemy import case, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.charging import ledger
from reconcile.errors import SchemaNotReady
from reconcile.migration._alter import DdlOptions, DdlStep
from reconcile.migration._backup import BackupInfo, get_backup
from reconcile.migration._common import (
    CONSUME,
    ZERO,
    backup_table_name,
    chunks,
    column_names,
    quote,
    require_server,
    schema_state,
)
from reconcile.migration._ddl import drop_unique_key
from reconcile.migration._legs import KIND as LEGS
from reconcile.storage.db import Database
from reconcile.storage.schema import (
    UNIQUE_KEY,
    migration_backup,
    power_consume,
    refund,
    trading_order,
)

log = structlog.get_logger("reconcile.migration")


@dataclass(frozen=True)
class RollbackResult:
    dry_run: bool
    reverse_refunds: bool
    key_present: bool
    backup: BackupInfo | None
    to_restore: int = 0  # backed-up rows missing from the live table
    active_refund_rows: int = 0
    active_refund_amount: Decimal = ZERO
    key_drop: DdlStep | None = None
    restored_rows: int = 0
    reversed_rows: int = 0
    reversed_orders: int = 0
    reversed_amount: Decimal = ZERO
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(
            (self.key_drop and self.key_drop.done) or self.restored_rows or self.reversed_rows
        )


@dataclass(frozen=True)
class _Plan:
    key_present: bool
    backup: BackupInfo | None
    to_restore: int
    refunds: int
    refund_amount: Decimal


async def _plan(conn: AsyncConnection, backup_id: int | None) -> _Plan:
    state = await schema_state(conn)
    if not state.own_tables.get(migration_backup.name):
        if backup_id is not None:
            raise SchemaNotReady(f"no backup #{backup_id}: there is no backup registry")
        return _Plan(state.unique_key, None, 0, 0, ZERO)
    info = await get_backup(conn, kind=("dedupe", LEGS), backup_id=backup_id)
    if info is None:
        if backup_id is not None:
            raise SchemaNotReady(f"no dedupe or legs backup #{backup_id} in the registry")
        return _Plan(state.unique_key, None, 0, 0, ZERO)
    table = quote(conn, backup_table_name(info.consume_table))
    if info.consume_table not in state.tables:
        raise SchemaNotReady(f"backup table {info.consume_table} of backup #{info.id} is gone")
    missing = (
        await conn.execute(
            text(
                f"SELECT COUNT(*) FROM {table} b WHERE NOT EXISTS "  # noqa: S608
                f"(SELECT 1 FROM {CONSUME} p WHERE p.id = b.id)"
            )
        )
    ).scalar_one()
    f = refund.c
    count, amount = (
        await conn.execute(
            select(text("COUNT(*)"), text("COALESCE(SUM(amount), 0)"))
            .select_from(refund)
            .where(f.backup_id == info.id, f.reversed == 0)
        )
    ).one()
    return _Plan(state.unique_key, info, int(missing), int(count), Decimal(amount))


async def rollback(
    db: Database,
    *,
    dry_run: bool = True,
    reverse_refunds: bool = False,
    backup_id: int | None = None,
    options: DdlOptions | None = None,
) -> RollbackResult:
    """Dry run by default. ``backup_id`` picks a dedupe backup other than the last one."""
    require_server(db)
    started = time.monotonic()

    async def read(conn: AsyncConnection) -> _Plan:
        return await _plan(conn, backup_id)

    plan = await db.transaction(read, what="migrate rollback plan")
    base: dict[str, Any] = {
        "reverse_refunds": reverse_refunds,
        "key_present": plan.key_present,
        "backup": plan.backup,
        "to_restore": plan.to_restore,
        "active_refund_rows": plan.refunds,
        "active_refund_amount": plan.refund_amount,
    }
    if dry_run:
        return RollbackResult(dry_run=True, **base)
    info = plan.backup
    legs = info is not None and info.kind == LEGS  # a leg's only consume row: no duplicate
    key_drop = None if legs else await drop_unique_key(db, options or DdlOptions())
    if info is None or (
        not plan.to_restore
        and info.rolled_back_at is not None
        and not (reverse_refunds and plan.refunds)
    ):
        log.info(
            "migrate rollback done",
            key_dropped=bool(key_drop and key_drop.done),
            restored_rows=0,
            backup_id=info.id if info else None,
        )
        return RollbackResult(
            dry_run=False, key_drop=key_drop, seconds=time.monotonic() - started, **base
        )

    async def unit(conn: AsyncConnection) -> tuple[int, int, int, Decimal]:
        return await _restore(db, conn, info, reverse_refunds)

    restored, rows, orders, amount = await db.transaction(
        unit, what="migrate rollback", backup_id=info.id
    )
    seconds = time.monotonic() - started
    log.info(
        "migrate rollback done",
        backup_id=info.id,
        key_dropped=bool(key_drop and key_drop.done),
        restored_rows=restored,
        reversed_refund_rows=rows,
        reversed_amount=amount,
        seconds=round(seconds, 3),
    )
    return RollbackResult(
        dry_run=False,
        key_drop=key_drop,
        restored_rows=restored,
        reversed_rows=rows,
        reversed_orders=orders,
        reversed_amount=amount,
        seconds=seconds,
        **base,
    )


async def _restore(
    db: Database, conn: AsyncConnection, info: BackupInfo, reverse_refunds: bool
) -> tuple[int, int, int, Decimal]:
    locked = await get_backup(conn, backup_id=info.id, lock=True)
    if locked is None:
        raise SchemaNotReady(f"backup #{info.id} vanished from the registry")
    state = await schema_state(conn)
    if locked.kind != LEGS and (state.unique_key or UNIQUE_KEY in state.invalid_indexes):
        raise SchemaNotReady(f"{CONSUME} got uk_user_order back during the rollback; re-run")
    now = db.now()
    # wallets before consume rows, as the consumer and the dedupe lock them
    reversal = await _lock_reversal(db, conn, locked.id) if reverse_refunds else None
    restored = 0
    if locked.rolled_back_at is None:
        cols = ", ".join(quote(conn, c) for c in await column_names(conn, CONSUME))
        source = quote(conn, backup_table_name(locked.consume_table))
        result = await conn.execute(
            text(
                f"INSERT INTO {CONSUME} ({cols}) SELECT {cols} FROM {source} b "  # noqa: S608
                f"WHERE NOT EXISTS (SELECT 1 FROM {CONSUME} p WHERE p.id = b.id) ORDER BY b.id"
            )
        )
        restored = result.rowcount
        if locked.kind == LEGS:  # the legs are charged again: their flags say so again
            o = trading_order.c
            charged = (
                select(func.max(power_consume.c.consume_power))
                .where(power_consume.c.order_id == o.id)
                .scalar_subquery()
            )
            restored_orders = text(f"SELECT order_id FROM {source}")  # noqa: S608
            await conn.execute(
                trading_order.update()
                .where(o.id.in_(restored_orders))
                .values(power_consumed=1, power_amount=charged)
            )
        await conn.execute(
            migration_backup.update()
            .where(migration_backup.c.id == locked.id)
            .values(rolled_back_at=now)
        )
        log.info(
            "migrate progress",
            step="rollback",
            phase="restored",
            rows=restored,
            backup_id=locked.id,
        )
    if reversal is None:
        return restored, 0, 0, ZERO
    rows, orders, amount = await _reverse(conn, reversal, now)
    return restored, rows, orders, amount


@dataclass(frozen=True)
class _Reversal:
    active: list[Any]
    entries: list[ledger.Entry]
    balances: dict[int, ledger.Balance]


async def _lock_reversal(db: Database, conn: AsyncConnection, backup_id: int) -> _Reversal:
    """Lock the dedupe's active refund rows, then the wallets they credited (user-id order)."""
    f = refund.c
    active = list(
        await conn.execute(
            select(f.id, f.consume_id, f.user_id, f.order_id, f.order_sn, f.amount)
            .where(f.backup_id == backup_id, f.reversed == 0)
            .order_by(f.user_id, f.order_id, f.consume_id)
            .with_for_update()
        )
    )
    per_order: dict[tuple[int, int], list[Any]] = defaultdict(list)
    for r in active:
        per_order[(r.user_id, r.order_id)].append(r)
    entries = [
        ledger.Entry(
            uid,
            oid,
            rs[0].order_sn,
            -sum((r.amount for r in rs), ZERO),
            f"reversal of the refund for consume rows "
            f"{', '.join(str(r.consume_id) for r in rs)} (migrate rollback)",
        )
        for (uid, oid), rs in per_order.items()
    ]
    entries.sort(key=lambda e: (e.user_id, e.order_id))
    balances = await ledger.lock(db, conn, [r.user_id for r in active]) if active else {}
    return _Reversal(active, entries, balances)


async def _reverse(conn: AsyncConnection, rev: _Reversal, now: Any) -> tuple[int, int, Decimal]:
    if not rev.active:
        return 0, 0, ZERO
    f = refund.c
    _, ledger_ids = await ledger.post(
        conn, rev.entries, rev.balances, change_type=ledger.REFUND_REVERSAL, now=now, returning=True
    )
    for chunk in chunks(rev.active):
        await conn.execute(
            refund.update()
            .where(f.id.in_([r.id for r in chunk]))
            .values(
                reversed=1,
                reversed_at=now,
                reversal_wallet_log_id=case(
                    {r.id: ledger_ids[(r.user_id, r.order_id)] for r in chunk}, value=f.id
                ),
            )
        )
    total = -sum((e.amount for e in rev.entries), ZERO)
    log.info(
        "migrate progress",
        step="rollback",
        phase="refunds reversed",
        rows=len(rev.active),
        orders=len(rev.entries),
        amount=total,
    )
    return len(rev.active), len(rev.entries), total
