"""``toogo-reconcile migrate ...``: the operators' migration runbook as commands.

The report goes to stdout (``check --json``: exactly one JSON object); progress events go to
stderr as log lines. Every command that changes something only prints its plan unless given
``--yes``. None of them needs ``uk_user_order`` to exist. Exit status: 0 done (or plan printed),
1 failed / verification failed / refused, 2 usage or configuration error. What they print is
:mod:`daemon.migrate_render`'s; the steps are :mod:`reconcile.migration`'s. See docs/cutover.md.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from daemon.cli_common import DURATION, EXIT_FAILED, EXIT_OK, load, run
from daemon.migrate_render import (
    out,
    render_add_key,
    render_backup,
    render_check,
    render_dedupe,
    render_dump,
    render_legs_result,
    render_rollback,
    render_verify,
)
from daemon.runtime import database
from reconcile import migration as m
from reconcile.storage.db import Database
from reconcile.storage.grants import require_migration_role

REFUND_HELP = "Credit each user's over-charge back to power, one ledger row per order."


def _execute(
    ctx: click.Context, work: Callable[[Database], Awaitable[int]], *, changes: str | None = None
) -> None:
    """Load the config (progress events to stderr: stdout carries the report), open the
    database without requiring the schema the migration is there to create, run ``work``.
    A command that ``changes`` the schema first checks the migration role (exit 1 without it,
    before anything is read for the plan or written)."""
    config = load(ctx, logs_to_stderr=True)

    async def job() -> int:
        async with database(config) as db:
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
