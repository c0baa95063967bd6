"""``toogo-reconcile migrate ...``: the operators' migration runbook as commands.

The report goes to stdout (``check --json``: exactly one JSON object); progress events go to
stderr as log lines. Every command that changes something only prints its plan unless given
``--yes``. None of them needs ``uk_user_order`` to exist. Exit status: 0 done (or plan printed),
1 failed / verification failed / refused, 2 usage or configuration error.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import click

from daemon.cli_common import DURATION, EXIT_FAILED, EXIT_OK, load, run
from reconcile import migration as m
from reconcile.charging.trades import ChargedLeg
from reconcile.storage.db import Database
from reconcile.storage.grants import require_migration_role

TOP_USERS = 20
REFUND_HELP = "Credit each user's over-charge back to power, one ledger row per order."
CONSUME = "hg_toogo_power_consume"


def _execute(
    ctx: click.Context, work: Callable[[Database], Awaitable[int]], *, changes: str | None = None
) -> None:
    """Load the config (progress events to stderr: stdout carries the report), open the
    database without requiring the schema the migration is there to create, run ``work``.
    A command that ``changes`` the schema first checks the migration role (exit 1 without it,
    before anything is read for the plan or written)."""
    config = load(ctx, logs_to_stderr=True)

    async def job() -> int:
        async with Database(config.database_settings()) as db:
            if changes is not None:
                await require_migration_role(db, changes)
            return await work(db)

    run(job)


def _ddl_options(
    online_only: bool, lock_wait: timedelta, progress_every: timedelta
) -> m.DdlOptions:
    return m.DdlOptions(
        online_only=online_only,
        lock_wait=lock_wait.total_seconds(),
        progress_every=progress_every.total_seconds(),
    )


def yes_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--yes", is_flag=True, help="Apply. Without it only the plan is printed.")(
        f
    )


def dump_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--dump",
        type=click.Path(dir_okay=False, writable=True, path_type=Path),
        default=None,
        metavar="FILE",
        help=(
            "Also dump hg_toogo_power_consume and hg_toogo_wallet into FILE (mode 0600): "
            "mysqldump on MySQL, pg_dump on PostgreSQL."
        ),
    )(f)


def ddl_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--online-only",
        is_flag=True,
        help="MySQL: fail instead of falling back when the server refuses online DDL.",
    )(f)
    f = click.option(
        "--ddl-lock-wait",
        type=DURATION,
        default="5s",
        metavar="DURATION",
        help="How long a DDL statement may wait for the table's lock (5s).",
    )(f)
    return click.option(
        "--progress-every",
        type=DURATION,
        default="5s",
        metavar="DURATION",
        help="Interval of progress events during long steps (5s).",
    )(f)


def out(line: str = "") -> None:
    click.echo(line)


# -- rendering ---------------------------------------------------------------------------------


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
    """The closing legs that carry a charge (README "One trade, one charge"), per order."""
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


# -- commands ----------------------------------------------------------------------------------


@click.group()
def migrate() -> None:
    """The migration runbook: check, backup, dedupe, add-unique-key, verify, up, rollback.

    Destructive commands print their plan unless given --yes. Reports go to stdout, progress
    to stderr.
    """


@migrate.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (all users).")
@click.pass_context
def check(ctx: click.Context, as_json: bool) -> None:
    """Read-only report: duplicates, over-charge per user, what the schema lacks."""

    async def work(db: Database) -> int:
        report = await m.check(db)
        if as_json:
            click.echo(json.dumps(report.to_dict(), separators=(",", ":")))
        else:
            render_check(report)
        # 1 while the daemon would refuse to start on this schema (each problem is printed)
        return EXIT_FAILED if report.problems else EXIT_OK

    _execute(ctx, work)


@migrate.command()
@dump_option
@click.pass_context
def backup(ctx: click.Context, dump: Path | None) -> None:
    """Copy the rows the cleanup will touch into timestamped tables (one transaction)."""

    async def work(db: Database) -> int:
        render_backup(await m.backup(db, dump=dump), db)
        return EXIT_OK

    _execute(ctx, work, changes="migrate backup")


@migrate.command()
@click.option("--refund", is_flag=True, help=REFUND_HELP)
@yes_option
@dump_option
@click.pass_context
def dedupe(ctx: click.Context, refund: bool, yes: bool, dump: Path | None) -> None:
    """Delete all but the max-id row of each (user_id, order_id); back up first."""

    async def work(db: Database) -> int:
        render_dedupe(await m.dedupe(db, refund_overcharge=refund, dry_run=not yes, dump=dump))
        return EXIT_OK

    _execute(ctx, work, changes="migrate dedupe")


@migrate.command("add-unique-key")
@yes_option
@ddl_options
@click.pass_context
def add_unique_key(
    ctx: click.Context,
    yes: bool,
    online_only: bool,
    ddl_lock_wait: timedelta,
    progress_every: timedelta,
) -> None:
    """Add uk_user_order, the order columns and indexes, and the daemon's own tables (online)."""
    options = _ddl_options(online_only, ddl_lock_wait, progress_every)

    async def work(db: Database) -> int:
        render_add_key(await m.add_unique_key(db, dry_run=not yes, options=options))
        return EXIT_OK

    _execute(ctx, work, changes="migrate add-unique-key")


@migrate.command()
@click.pass_context
def verify(ctx: click.Context) -> None:
    """Exit 0 iff no duplicates remain and uk_user_order exists, else 1 saying which."""

    async def work(db: Database) -> int:
        result = await m.verify(db)
        render_verify(result)
        return EXIT_OK if result.ok else EXIT_FAILED

    _execute(ctx, work)


@migrate.command()
@click.option("--refund", is_flag=True, help=REFUND_HELP)
@yes_option
@dump_option
@ddl_options
@click.pass_context
def up(
    ctx: click.Context,
    refund: bool,
    yes: bool,
    dump: Path | None,
    online_only: bool,
    ddl_lock_wait: timedelta,
    progress_every: timedelta,
) -> None:
    """check -> backup -> dedupe -> add-unique-key -> verify; a second run changes nothing."""
    options = _ddl_options(online_only, ddl_lock_wait, progress_every)

    async def work(db: Database) -> int:
        result = await m.up(
            db, refund_overcharge=refund, dry_run=not yes, dump=dump, options=options
        )
        out("== check")
        render_check(result.before)
        if result.dump:
            out("== dump")
            render_dump(result.dump)
        out("== backup + dedupe")
        for d in result.dedupes:
            render_dedupe(d)
        out("== add-unique-key")
        if result.add_key is not None:
            render_add_key(result.add_key, after_dedupe=True)
        out("== charged closing legs")
        if result.legs is not None:
            render_legs_result(result.legs)
        if result.dry_run:
            out("== verify (after --yes)")
            return EXIT_OK
        out("== verify")
        if result.verify is not None:
            render_verify(result.verify)
        out(
            f"up: {'changed the database' if result.changed else 'nothing to do'} "
            f"in {result.seconds:.2f}s"
        )
        return EXIT_OK if result.ok else EXIT_FAILED

    _execute(ctx, work, changes="migrate up")


@migrate.command()
@yes_option
@click.option(
    "--reverse-refunds",
    is_flag=True,
    help="Also debit the dedupe's refunds again (ledger rows); default: they stay.",
)
@click.option(
    "--backup-id",
    type=click.IntRange(min=1),
    default=None,
    help="Roll back this dedupe backup instead of the last one.",
)
@ddl_options
@click.pass_context
def rollback(
    ctx: click.Context,
    yes: bool,
    reverse_refunds: bool,
    backup_id: int | None,
    online_only: bool,
    ddl_lock_wait: timedelta,
    progress_every: timedelta,
) -> None:
    """Drop uk_user_order and restore the rows the last dedupe deleted (same ids)."""
    options = _ddl_options(online_only, ddl_lock_wait, progress_every)

    async def work(db: Database) -> int:
        render_rollback(
            await m.rollback(
                db,
                dry_run=not yes,
                reverse_refunds=reverse_refunds,
                backup_id=backup_id,
                options=options,
            )
        )
        return EXIT_OK

    _execute(ctx, work, changes="migrate rollback")
