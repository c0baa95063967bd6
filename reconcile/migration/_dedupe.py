"""Delete all but the max-id consume row of each (user_id, order_id), and refund the over-charge.

One transaction does it all, so a failure anywhere leaves the database as it was:

1. lock the affected users' wallet rows in user-id order - first, as the consumer locks a
   wallet before it reads that user's consume rows: the same order, so no deadlock with charges;
2. lock the rows of the duplicate groups found by the scan (``FOR UPDATE`` by primary key); the
   locked rows decide what is kept (max id) and what is deleted;
3. register the backup, copy the rows to delete into the backup table, delete them, copy the
   wallets (as they are before any refund) into the wallet backup table;
4. with ``refund``: per order, credit ``power`` (and lower ``total_power_consume``) by the
   deleted rows' ``consume_power`` with one ``power_consume_refund`` ledger row, and record
   each deleted row in ``toogo_reconcile_refund`` (unique by consume id: a row is never refunded
   twice; one whose refund was reversed by a rollback is refunded again); commit.

The backup tables are created just before (DDL commits by itself) and dropped again if the
transaction fails, so nothing is left half-done. Charges of the affected users wait for the
transaction's end (it holds their wallet rows); everybody else's go on.
See docs/cutover.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import bindparam, case, literal, select
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.charging import ledger
from reconcile.migration._backup import (
    BackupInfo,
    DumpResult,
    copy_rows,
    create_backup_tables,
    drop_unregistered,
    dump_tables,
    ensure_registry,
    finish,
    register,
)
from reconcile.migration._common import CONSUME, WALLET, ZERO, chunks, require_server, schema_state
from reconcile.migration._duplicates import Duplicates, lock_duplicates, scan_duplicates
from reconcile.storage.db import Database
from reconcile.storage.schema import power_consume, refund

log = structlog.get_logger("reconcile.migration")


@dataclass(frozen=True)
class DedupeResult:
    dry_run: bool
    refund: bool
    duplicates: Duplicates
    refunded_orders: int = 0
    refunded_rows: int = 0
    refunded_amount: Decimal = ZERO
    already_refunded_rows: int = 0
    wallets_created: int = 0
    backup: BackupInfo | None = None
    dump: DumpResult | None = None
    seconds: float = 0.0

    @property
    def deleted_rows(self) -> int:
        return 0 if self.dry_run else self.duplicates.extra_rows

    @property
    def changed(self) -> bool:
        return self.backup is not None


@dataclass
class _Applied:
    duplicates: Duplicates = field(default_factory=Duplicates)
    backup: BackupInfo | None = None
    refunded_orders: int = 0
    refunded_rows: int = 0
    refunded_amount: Decimal = ZERO
    already_refunded: int = 0
    wallets_created: int = 0


async def dedupe(
    db: Database,
    *,
    refund_overcharge: bool = False,
    dry_run: bool = True,
    dump: Path | None = None,
) -> DedupeResult:
    """Dry run by default: returns what would be deleted and refunded, changes nothing."""
    require_server(db)
    started = time.monotonic()

    async def scan(conn: AsyncConnection) -> Duplicates:
        await schema_state(conn)
        return await scan_duplicates(conn)

    found = await db.transaction(scan, what="migrate scan duplicates")
    log.info(
        "migrate dedupe scan",
        duplicate_groups=len(found.groups),
        extra_rows=found.extra_rows,
        over_charged=found.over_charged,
        users=len(found.users),
        seconds=round(time.monotonic() - started, 3),
    )
    if dry_run:
        already = await _already_refunded(db, found.extra_ids) if refund_overcharge else 0
        return DedupeResult(
            dry_run=True, refund=refund_overcharge, duplicates=found, already_refunded_rows=already
        )
    dumped = await dump_tables(db, dump) if dump is not None else None
    if not found.groups:
        return DedupeResult(
            dry_run=False,
            refund=refund_overcharge,
            duplicates=found,
            dump=dumped,
            seconds=time.monotonic() - started,
        )
    await ensure_registry(db)
    tables = await create_backup_tables(db)

    async def unit(conn: AsyncConnection) -> _Applied:
        return await _apply(db, conn, found, tables, refund_overcharge)

    try:
        applied = await db.transaction(
            unit, what="migrate dedupe", duplicate_groups=len(found.groups)
        )
    except BaseException:
        await drop_unregistered(db, tables)
        raise
    if applied.backup is None:
        # nothing left to delete - or an earlier attempt of this transaction committed although
        # its COMMIT reported a lost connection; then the registry names these tables
        applied.backup = await drop_unregistered(db, tables)
        if applied.backup is not None:
            log.info("migrate dedupe committed on an earlier attempt", backup_id=applied.backup.id)
            applied.duplicates = found
            applied.refunded_rows = applied.backup.refunded_rows
            applied.refunded_amount = applied.backup.refunded_amount
    seconds = time.monotonic() - started
    log.info(
        "migrate dedupe done",
        duplicate_groups=len(applied.duplicates.groups),
        deleted_rows=applied.duplicates.extra_rows,
        over_charged=applied.duplicates.over_charged,
        refund=refund_overcharge,
        refunded_orders=applied.refunded_orders,
        refunded_rows=applied.refunded_rows,
        refunded_amount=applied.refunded_amount,
        already_refunded_rows=applied.already_refunded,
        backup_id=applied.backup.id if applied.backup else None,
        seconds=round(seconds, 3),
    )
    if not refund_overcharge and applied.duplicates.over_charged:
        log.warning(
            "over-charge not refunded",
            over_charged=applied.duplicates.over_charged,
            users=len(applied.duplicates.users),
            backup_id=applied.backup.id if applied.backup else None,
        )
    return DedupeResult(
        dry_run=False,
        refund=refund_overcharge,
        duplicates=applied.duplicates,
        refunded_orders=applied.refunded_orders,
        refunded_rows=applied.refunded_rows,
        refunded_amount=applied.refunded_amount,
        already_refunded_rows=applied.already_refunded,
        wallets_created=applied.wallets_created,
        backup=applied.backup,
        dump=dumped,
        seconds=seconds,
    )


async def _apply(
    db: Database,
    conn: AsyncConnection,
    found: Duplicates,
    tables: tuple[str, str],
    refund_overcharge: bool,
) -> _Applied:
    t0 = time.monotonic()

    def progress(phase: str, **fields: Any) -> None:
        log.info(
            "migrate progress",
            step="dedupe",
            phase=phase,
            elapsed_s=round(time.monotonic() - t0, 3),
            **fields,
        )

    now = db.now()
    balances = await ledger.lock(db, conn, found.user_ids, require=False)
    dups = await lock_duplicates(conn, found, exclusive=True)
    if not dups.groups:
        return _Applied(duplicates=dups)
    progress("locked", rows=dups.extra_rows, groups=len(dups.groups), wallets=len(balances))
    out = _Applied(duplicates=dups)
    refunds: list[tuple[int, Any]] = []  # (consume_id, existing refund row or None)
    entries: list[ledger.Entry] = []
    if refund_overcharge:
        existing = await _refund_rows(conn, dups.extra_ids, lock=True)
        for g in dups.groups:
            rows = [r for r in g.extra if r.id not in existing or existing[r.id].reversed]
            out.already_refunded += len(g.extra) - len(rows)
            if not rows:
                continue
            refunds += [(r.id, existing.get(r.id)) for r in rows]
            amount = sum((r.consume_power for r in rows), ZERO)
            ids = ", ".join(str(r.id) for r in rows)
            entries.append(
                ledger.Entry(
                    g.user_id,
                    g.order_id,
                    g.keep.order_sn,
                    amount,
                    f"refund of duplicate power charge: consume rows {ids} deleted by "
                    "migrate dedupe",
                )
            )
        out.refunded_orders = len(entries)
        out.refunded_rows = len(refunds)
        out.refunded_amount = sum((e.amount for e in entries), ZERO)
    backup_id = await register(
        conn,
        kind="dedupe",
        consume_table=tables[0],
        wallet_table=tables[1],
        dup_groups=len(dups.groups),
        deleted_rows=dups.extra_rows,
        refunded_rows=out.refunded_rows,
        refunded_amount=out.refunded_amount,
        created_at=now,
    )
    n_consume = await copy_rows(conn, tables[0], CONSUME, "id", dups.extra_ids)
    n_wallet = await copy_rows(conn, tables[1], WALLET, "user_id", dups.user_ids)
    deleted = 0
    c = power_consume.c
    for chunk in chunks(dups.extra_ids):
        result = await conn.execute(power_consume.delete().where(c.id.in_(list(chunk))))
        deleted += result.rowcount
    if deleted != dups.extra_rows:  # cannot happen under the row locks; never commit if it does
        raise RuntimeError(f"deleted {deleted} consume rows, expected {dups.extra_rows}")
    progress("backed up and deleted", backup_id=backup_id, rows=deleted)
    if entries:
        missing = sorted({e.user_id for e in entries} - set(balances))
        if missing:  # a legacy user charged without a wallet row: credit a new (zero) one
            balances.update(await ledger.create_locked(db, conn, missing))
            out.wallets_created = len(missing)
        entries.sort(key=lambda e: (e.user_id, e.order_id))
        _, ledger_ids = await ledger.post(
            conn, entries, balances, change_type=ledger.REFUND, now=now, returning=True
        )
        await _record_refunds(conn, dups, refunds, ledger_ids, backup_id, now)
        progress("refunded", orders=len(entries), amount=out.refunded_amount)
    out.backup = await finish(conn, backup_id, n_consume, n_wallet)
    return out


async def _record_refunds(
    conn: AsyncConnection,
    dups: Duplicates,
    refunds: list[tuple[int, Any]],
    ledger_ids: dict[tuple[int, int], int],
    backup_id: int,
    now: Any,
) -> None:
    row_of = {r.id: r for g in dups.groups for r in g.extra}
    new: list[dict[str, Any]] = []
    again: list[dict[str, Any]] = []
    for consume_id, existing in refunds:
        r = row_of[consume_id]
        values = {
            "consume_id": consume_id,
            "backup_id": backup_id,
            "user_id": r.user_id,
            "order_id": r.order_id,
            "order_sn": r.order_sn,
            "amount": r.consume_power,
            "wallet_log_id": ledger_ids[(r.user_id, r.order_id)],
            "created_at": now,
        }
        (new if existing is None else again).append(values)
    for chunk in chunks(new):
        await conn.execute(refund.insert(), list(chunk))
    f = refund.c
    for chunk in chunks(again):  # refunded, reversed by a rollback, deleted again: owed again
        await conn.execute(
            refund.update()
            .where(f.consume_id.in_([v["consume_id"] for v in chunk]))
            .values(
                reversed=0,
                reversed_at=None,
                reversal_wallet_log_id=None,
                backup_id=backup_id,
                amount=case(
                    {v["consume_id"]: literal(v["amount"], f.amount.type) for v in chunk},
                    value=f.consume_id,
                ),
                wallet_log_id=case(
                    {v["consume_id"]: v["wallet_log_id"] for v in chunk}, value=f.consume_id
                ),
                created_at=now,
            )
        )


@dataclass(frozen=True)
class _RefundRow:
    consume_id: int
    reversed: int


async def _refund_rows(
    conn: AsyncConnection, consume_ids: list[int], *, lock: bool
) -> dict[int, _RefundRow]:
    f = refund.c
    stmt = (
        select(f.consume_id, f.reversed)
        .where(f.consume_id.in_(bindparam("ids", expanding=True)))
        .order_by(f.consume_id)
    )
    if lock:
        stmt = stmt.with_for_update()
    found: dict[int, _RefundRow] = {}
    for chunk in chunks(consume_ids):
        for r in await conn.execute(stmt, {"ids": list(chunk)}):
            found[r.consume_id] = _RefundRow(r.consume_id, r.reversed)
    return found


async def _already_refunded(db: Database, consume_ids: list[int]) -> int:
    async def read(conn: AsyncConnection) -> int:
        state = await schema_state(conn)
        if not state.own_tables.get(refund.name):
            return 0
        rows = await _refund_rows(conn, consume_ids, lock=False)
        return sum(1 for r in rows.values() if not r.reversed)

    return await db.transaction(read, what="migrate read refunds")
