"""The read-only check, and ``up``: check -> backup + dedupe -> add-unique-key -> verify.
See docs/cutover.md."""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.charging.trades import ChargedLeg, charged_legs
from reconcile.migration._alter import DdlOptions
from reconcile.migration._backup import BackupInfo, DumpResult, dump_tables, get_backup
from reconcile.migration._common import ZERO, SchemaState, money, require_server, schema_state
from reconcile.migration._ddl import (
    AddKeyResult,
    VerifyResult,
    add_unique_key,
    planned_ddl,
    verify,
)
from reconcile.migration._dedupe import DedupeResult, dedupe
from reconcile.migration._duplicates import Duplicates, DuplicatesRemain, scan_duplicates
from reconcile.migration._legs import LegsResult, refund_legs
from reconcile.storage.contract import inspect_live
from reconcile.storage.db import Database
from reconcile.storage.schema import (
    POWER_INDEX,
    ROBOT_CLOSE_INDEX,
    SWEEP_INDEX,
    UNIQUE_KEY,
    migration_backup,
    refund,
)

log = structlog.get_logger("reconcile.migration")

MAX_ROUNDS = 3  # dedupe + add-key rounds in `up` while a legacy writer keeps inserting duplicates


@dataclass(frozen=True)
class RefundTotals:
    rows: int = 0
    amount: Decimal = ZERO
    reversed_rows: int = 0


@dataclass(frozen=True)
class CheckReport:
    duplicates: Duplicates
    schema: SchemaState
    refunds: RefundTotals
    last_backup: BackupInfo | None
    pending_ddl: tuple[str, ...]
    #: what the daemon needs and the live schema lacks (reconcile.storage.contract), each with its
    #: remedy
    problems: tuple[str, ...] = ()
    #: those of ``problems`` that `migrate up` cannot mend
    by_hand: tuple[str, ...] = ()
    #: closing legs that carry a charge (reconcile.charging.trades): over-charges `up --refund`
    #: refunds
    charged_legs: tuple[ChargedLeg, ...] = ()

    @property
    def ready(self) -> bool:
        return not self.duplicates.groups and not self.pending_ddl and not self.by_hand

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: Decimals as strings; every user and every group."""
        d, s = self.duplicates, self.schema
        return {
            "duplicate_groups": len(d.groups),
            "extra_rows": d.extra_rows,
            "over_charged_total": money(d.over_charged),
            "affected_users": len(d.users),
            "users": [u.to_dict() for u in d.users],
            "groups": [g.to_dict() for g in d.groups],
            "unique_key": s.unique_key,
            "unique_key_problem": s.unique_key_problem,
            "trading_order": {**s.order_columns, POWER_INDEX: s.power_index},
            "sweep_index": {SWEEP_INDEX: s.sweep_index},
            "robot_close_index": {ROBOT_CLOSE_INDEX: s.robot_close_index},
            "invalid_indexes": list(s.invalid_indexes),
            "own_tables": s.own_tables,
            "refunds": {
                "rows": self.refunds.rows,
                "amount": money(self.refunds.amount),
                "reversed_rows": self.refunds.reversed_rows,
            },
            "last_backup": self.last_backup.to_dict() if self.last_backup else None,
            "pending_ddl": list(self.pending_ddl),
            "schema_problems": list(self.problems),
            "schema_problems_by_hand": list(self.by_hand),
            "charged_legs": [
                {
                    "order_id": leg.order_id,
                    "user_id": leg.user_id,
                    "order_sn": leg.order_sn,
                    "consume_id": leg.consume_id,
                    "amount": money(leg.consume_power),
                    "trade_order_id": leg.trade_order_id,
                    "rule": leg.rule,
                }
                for leg in self.charged_legs
            ],
            "charged_legs_amount": money(
                sum((leg.consume_power for leg in self.charged_legs), ZERO)
            ),
            "ready": self.ready,
        }


async def check(db: Database) -> CheckReport:
    """Read-only: duplicates, over-charge per user, and what the schema still lacks."""
    require_server(db)

    async def read(conn: AsyncConnection) -> CheckReport:
        state = await schema_state(conn)
        dups = await scan_duplicates(conn)
        totals, last = RefundTotals(), None
        if state.own_tables.get(refund.name):
            f = refund.c
            row = (
                await conn.execute(
                    select(text("COUNT(*)"), text("COALESCE(SUM(amount), 0)"))
                    .select_from(refund)
                    .where(f.reversed == 0)
                )
            ).one()
            rev = (
                await conn.execute(
                    select(text("COUNT(*)")).select_from(refund).where(f.reversed == 1)
                )
            ).scalar_one()
            totals = RefundTotals(int(row[0]), Decimal(row[1]), int(rev))
        if state.own_tables.get(migration_backup.name):
            last = await get_backup(conn)
        pending = (
            tuple(name for name, _ in planned_ddl(state, pg=db.dialect.is_postgresql))
            if not state.unique_key_problem
            else (UNIQUE_KEY,)
        )
        live = await inspect_live(conn)
        legs = tuple(await charged_legs(conn, db))
        return CheckReport(dups, state, totals, last, pending, live.problems, live.by_hand, legs)

    started = time.monotonic()
    report = await db.transaction(read, what="migrate check")
    log.info(
        "migrate check",
        duplicate_groups=len(report.duplicates.groups),
        extra_rows=report.duplicates.extra_rows,
        over_charged=report.duplicates.over_charged,
        unique_key=report.schema.unique_key,
        pending_ddl=list(report.pending_ddl),
        seconds=round(time.monotonic() - started, 3),
    )
    return report


@dataclass(frozen=True)
class UpResult:
    dry_run: bool
    before: CheckReport
    dedupes: tuple[DedupeResult, ...] = ()
    add_key: AddKeyResult | None = None
    verify: VerifyResult | None = None
    dump: DumpResult | None = None
    seconds: float = 0.0
    legs: LegsResult | None = None  # the charged closing legs (refunded with --refund)

    @property
    def changed(self) -> bool:
        return (
            any(d.changed for d in self.dedupes)
            or bool(self.add_key and self.add_key.changed)
            or bool(self.legs and self.legs.changed)
        )

    @property
    def ok(self) -> bool:
        return self.dry_run or bool(self.verify and self.verify.ok)


async def up(
    db: Database,
    *,
    refund_overcharge: bool = False,
    dry_run: bool = True,
    dump: Path | None = None,
    options: DdlOptions | None = None,
) -> UpResult:
    """The whole runbook, each step idempotent: a second ``up`` changes nothing.

    A legacy writer still inserting duplicates makes the ALTER fail atomically; ``up`` then
    dedupes again, up to ``MAX_ROUNDS`` times.
    """
    started = time.monotonic()
    before = await check(db)
    if dry_run:
        plan = await dedupe(db, refund_overcharge=refund_overcharge, dry_run=True)
        keys = await add_unique_key(db, dry_run=True, options=options)
        legs = LegsResult(dry_run=True, legs=list(before.charged_legs))
        return UpResult(dry_run=True, before=before, dedupes=(plan,), add_key=keys, legs=legs)
    dumped = await dump_tables(db, dump) if dump is not None else None
    rounds: list[DedupeResult] = []
    add_key: AddKeyResult | None = None
    for round_no in range(1, MAX_ROUNDS + 1):
        rounds.append(await dedupe(db, refund_overcharge=refund_overcharge, dry_run=False))
        try:
            add_key = await add_unique_key(db, options=options)
            break
        except DuplicatesRemain as exc:
            if round_no == MAX_ROUNDS:
                raise
            log.warning(
                "duplicates reappeared", round=round_no, duplicate_groups=exc.groups, retry=True
            )
    # the closing legs an earlier release charged: refunded with --refund, else only listed
    legs = await refund_legs(db, dry_run=not refund_overcharge)
    verified = await verify(db)
    seconds = time.monotonic() - started
    result = UpResult(
        dry_run=False,
        before=before,
        dedupes=tuple(rounds),
        add_key=add_key,
        verify=verified,
        dump=dumped,
        seconds=seconds,
        legs=legs,
    )
    log.info("migrate up done", ok=verified.ok, changed=result.changed, seconds=round(seconds, 3))
    return result
