"""The text ``toogo-reconcile migrate ...`` prints: one renderer per result of
:mod:`reconcile.migration` (check, legs, dedupe, backup, dump, add-unique-key, verify, rollback),
each a plan under a dry run and what was done otherwise. Lines go to stdout; ``check --json``
is printed by the command itself. See docs/cutover.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import click

from reconcile import migration as m
from reconcile.charging.trades import ChargedLeg
from reconcile.storage.db import Database

TOP_USERS = 20
CONSUME = "hg_toogo_power_consume"


def out(line: str = "") -> None:
    click.echo(line)


def _present(flag: bool) -> str:
    return "present" if flag else "MISSING"


def render_check(r: m.CheckReport) -> None:
    d, s = r.duplicates, r.schema
    out(
        f"duplicates in {CONSUME}: {len(d.groups)} groups, {d.extra_rows} extra rows, "
        f"{m.money(d.over_charged)} power over-charged to {len(d.users)} users"
    )
    if d.users:
        out(f"  {'user_id':>12} {'groups':>8} {'extra_rows':>11} {'over_charged':>22}")
        for u in d.users[:TOP_USERS]:
            out(f"  {u.user_id:>12} {u.groups:>8} {u.extra_rows:>11} {u.over_charged!s:>22}")
        if len(d.users) > TOP_USERS:
            out(f"  ... {len(d.users) - TOP_USERS} more users (`check --json` lists all)")
    out("schema:")
    out(f"  {CONSUME}.uk_user_order".ljust(52) + (s.unique_key_problem or _present(s.unique_key)))
    for col, ok in s.order_columns.items():
        out(f"  hg_trading_order.{col}".ljust(52) + _present(ok))
    out("  hg_trading_order.idx_power_consumed".ljust(52) + _present(s.power_index))
    out("  hg_trading_order.idx_reconcile_sweep".ljust(52) + _present(s.sweep_index))
    out("  hg_trading_order.idx_reconcile_robot_close".ljust(52) + _present(s.robot_close_index))
    for index in s.invalid_indexes:
        out(
            f"  ✗ index {index} is INVALID (left by a failed CONCURRENTLY build): "
            "`migrate up` drops and rebuilds it"
        )
    for table, ok in s.own_tables.items():
        out(f"  {table}".ljust(52) + _present(ok))
    out(
        f"refunds recorded: {r.refunds.rows} rows, {m.money(r.refunds.amount)} power "
        f"({r.refunds.reversed_rows} reversed)"
    )
    if r.last_backup:
        b = r.last_backup
        state = f", rolled back {b.rolled_back_at:%Y-%m-%d %H:%M:%S}" if b.rolled_back_at else ""
        out(
            f"last backup: #{b.id} ({b.kind}, {b.created_at:%Y-%m-%d %H:%M:%S}{state}) "
            f"{b.consume_table} ({b.consume_rows} rows), {b.wallet_table} ({b.wallet_rows} rows)"
        )
    render_legs(r.charged_legs)
    for problem in r.problems:
        out(f"  ✗ {problem}")
    if r.ready:
        out("ready: yes")
    else:
        out("ready: no - `toogo-reconcile migrate up --refund` shows the plan")


def render_legs(legs: Sequence[ChargedLeg]) -> None:
    """The closing legs that carry a charge (docs/charging.md, "One trade, one charge"), per
    order."""
    total = sum((leg.consume_power for leg in legs), Decimal(0))
    users = len({leg.user_id for leg in legs})
    out(f"charged closing legs: {len(legs)} orders, {m.money(total)} power, {users} users")
    if legs:
        out(f"  {'order_id':>12} {'user_id':>10} {'trade':>12} {'rule':<16} {'amount':>20}")
        for leg in legs[:TOP_USERS]:
            trade = str(leg.trade_order_id or "")
            out(
                f"  {leg.order_id:>12} {leg.user_id:>10} {trade:>12} {leg.rule:<16}"
                f" {leg.consume_power!s:>20}"
            )
        if len(legs) > TOP_USERS:
            out(f"  ... {len(legs) - TOP_USERS} more (`check --json` lists all)")


def render_legs_result(r: m.LegsResult) -> None:
    if r.dry_run:
        if r.legs:
            out(
                f"  refund {m.money(sum((x.consume_power for x in r.legs), Decimal(0)))} power"
                f" charged on {len(r.legs)} closing legs (with --refund: consume rows backed up"
                " and deleted, one power_consume_refund ledger row each)"
            )
        else:
            out("  nothing to do: no closing leg carries a charge")
        return
    if not r.changed:
        out(
            f"legs: {len(r.legs)} charged closing legs"
            + (" - not refunded (no --refund)" if r.legs and not r.already_refunded else "")
        )
        return
    b = r.backup
    out(
        f"legs: refunded {m.money(r.refunded_amount)} power on {r.refunded_rows} closing legs"
        f" to {len(r.users)} users" + (f" (backup #{b.id}: {b.consume_table})" if b else "")
    )
    out("undo: toogo-reconcile migrate rollback --yes (puts the legs' consume rows back)")


def render_dedupe(r: m.DedupeResult) -> None:
    d = r.duplicates
    if r.dry_run:
        out("PLAN dedupe (dry run, nothing changed; add --yes to apply):")
        if not d.groups:
            out(f"  nothing to do: {CONSUME} has no duplicate (user_id, order_id) rows")
            return
        out(
            f"  back up {d.extra_rows} consume rows and the wallets of {len(d.users)} users "
            "into new toogo_reconcile_bak_{consume,wallet}_<timestamp> tables"
        )
        out(
            f"  delete {d.extra_rows} rows of {len(d.groups)} (user_id, order_id) groups, "
            "keeping the max id of each - one transaction"
        )
        if r.refund:
            out(
                f"  refund {m.money(d.over_charged)} power to {len(d.users)} users, one "
                f"power_consume_refund ledger row per order ({len(d.groups)} orders)"
                + (
                    f"; {r.already_refunded_rows} rows were refunded before and are skipped"
                    if r.already_refunded_rows
                    else ""
                )
            )
        else:
            out(
                f"  WARNING: without --refund the {m.money(d.over_charged)} power "
                "over-charged stays charged (the deleted rows remain only in the backup)"
            )
        return
    if not d.groups:
        out("dedupe: nothing to do - no duplicate rows")
        return
    out(
        f"dedupe: deleted {r.deleted_rows} rows of {len(d.groups)} groups (kept the max id of "
        f"each) in {r.seconds:.2f}s"
    )
    if r.backup:
        b = r.backup
        out(
            f"backup #{b.id}: {b.consume_table} ({b.consume_rows} rows), "
            f"{b.wallet_table} ({b.wallet_rows} rows)"
        )
    if r.refund:
        out(
            f"refunded {m.money(r.refunded_amount)} power on {r.refunded_orders} orders "
            f"({r.refunded_rows} deleted rows) to {len(d.users)} users"
            + (
                f"; {r.already_refunded_rows} rows had been refunded before"
                if r.already_refunded_rows
                else ""
            )
        )
    else:
        out(f"WARNING: {m.money(d.over_charged)} power over-charged was NOT refunded (no --refund)")
    out("undo: toogo-reconcile migrate rollback --yes")


def render_backup(r: m.BackupResult, db: Database) -> None:
    if r.backup is None:
        out(f"backup: nothing to back up - {CONSUME} has no duplicate rows")
    else:
        b = r.backup
        out(
            f"backup #{b.id}: {b.consume_table} ({b.consume_rows} consume rows a dedupe "
            f"would delete), {b.wallet_table} ({b.wallet_rows} wallets of affected users)"
        )
        out("to restore by hand:")
        for stmt in b.restore_statements(db.dialect):
            out(f"  {stmt}")
    if r.dump:
        render_dump(r.dump)


def render_dump(d: m.DumpResult) -> None:
    out(
        f"dump: {d.path} ({d.bytes} bytes, {d.tool}, {d.seconds:.2f}s); restore with "
        f"`{d.restore}` (replaces both tables)"
    )


def render_add_key(r: m.AddKeyResult, *, after_dedupe: bool = False) -> None:
    if r.dry_run:
        out("PLAN add-unique-key (dry run, nothing changed; add --yes to apply):")
        if not r.steps:
            out("  nothing to do: the key, the order columns/indexes and own tables exist")
        for step in r.steps:
            out(f"  {step.sql}")
        if r.duplicate_groups and not after_dedupe:
            out(
                f"  BLOCKED: {r.duplicate_groups} duplicate groups ({r.extra_rows} extra rows) "
                "remain - run `migrate dedupe --yes` first"
            )
        return
    if not r.changed:
        out("add-unique-key: nothing to do - everything is present")
        return
    for step in r.steps:
        mode = (
            ""
            if step.name == "own tables"
            else (" (online)" if step.online else " (LOCKING: the server refused online DDL)")
        )
        status = "done" if step.done else "already present"
        out(f"add-unique-key: {step.name}: {status} in {step.seconds:.2f}s{mode}")
    out(f"add-unique-key: total {r.seconds:.2f}s")


def render_verify(r: m.VerifyResult) -> None:
    if r.ok:
        out(f"verify: OK - no duplicate rows in {CONSUME}, uk_user_order present")
    else:
        out("verify: FAILED - " + "; ".join(r.problems))


def render_rollback(r: m.RollbackResult) -> None:
    b = r.backup
    if r.dry_run:
        out("PLAN rollback (dry run, nothing changed; add --yes to apply):")
        out(
            f"  drop uk_user_order on {CONSUME}"
            if r.key_present
            else "  uk_user_order is absent: nothing to drop"
        )
        if b is None:
            out("  no dedupe backup in the registry: no rows to restore")
        else:
            done = (
                f" (rolled back {b.rolled_back_at:%Y-%m-%d %H:%M:%S})" if b.rolled_back_at else ""
            )
            out(
                f"  restore {r.to_restore} rows (same ids) from {b.consume_table}, backup #{b.id} "
                f"of the dedupe at {b.created_at:%Y-%m-%d %H:%M:%S}{done}"
            )
            if r.reverse_refunds:
                out(
                    f"  debit {m.money(r.active_refund_amount)} power of "
                    f"{r.active_refund_rows} refunded rows again "
                    "(power_consume_refund_reversal ledger rows)"
                )
            elif r.active_refund_rows:
                out(
                    f"  refunds stay: {r.active_refund_rows} rows, "
                    f"{m.money(r.active_refund_amount)} power (they were owed; "
                    "--reverse-refunds debits them again)"
                )
        return
    dropped = r.key_drop is not None and r.key_drop.done
    out(f"rollback: uk_user_order {'dropped' if dropped else 'was already absent'}")
    if b is None:
        out("rollback: no dedupe backup in the registry - no rows to restore")
        return
    if r.restored_rows or b.rolled_back_at is None:
        out(f"rollback: restored {r.restored_rows} rows from {b.consume_table} (backup #{b.id})")
    else:
        out(
            f"rollback: the rows of backup #{b.id} were restored before "
            f"({b.rolled_back_at:%Y-%m-%d %H:%M:%S})"
        )
    if r.reversed_rows:
        out(
            f"rollback: reversed {m.money(r.reversed_amount)} power of refunds on "
            f"{r.reversed_orders} orders ({r.reversed_rows} rows)"
        )
    elif r.active_refund_rows and not r.reverse_refunds:
        out(
            f"rollback: refunds stay ({r.active_refund_rows} rows, "
            f"{m.money(r.active_refund_amount)} power)"
        )
    out(f"rollback: {r.seconds:.2f}s; run the daemon only after `migrate up` again")
