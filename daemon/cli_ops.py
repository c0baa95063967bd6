"""Operator commands: ``doctor`` (is this installation able to run?) and ``demo``.
See docs/commands.md."""

from __future__ import annotations

import click

from daemon.cli_common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, fail, load, run
from daemon.config import config_path, load_config
from reconcile.errors import ConfigError

# daemon.doctor and daemon.demo are imported inside the commands: they pull in ccxt (~1.5 s),
# which every other command would otherwise pay at start-up.


@click.command()
@click.option(
    "--all-accounts",
    is_flag=True,
    help="Check every enabled API account, not only those of running robots.",
)
@click.pass_context
def doctor(ctx: click.Context, all_accounts: bool) -> None:
    """Check the installation, one line per check (✓ ok, ✗ failed, ! warning, - skipped).

    Configuration, database (reachable, schema, clocks and time zone), the AES key against
    every ENC: credential, each enabled exchange through the accounts' base_url (a public
    markets call, no retries) and the replay path. Writes nothing. Exit 1 if a check failed,
    2 if the configuration is invalid.
    """
    from daemon.doctor import Doctor
    from daemon.doctor_report import Line, Mark

    obj = ctx.ensure_object(dict)
    given = obj.get("config_path")
    path = config_path(given)
    try:
        load_config(path, required=given is not None)
    except ConfigError as exc:
        click.echo(Line(Mark.FAIL, "config", str(exc)).render())
        fail(f"config error: {exc}", EXIT_USAGE)
    config = load(ctx, logs_to_stderr=True)
    where = f"{path.absolute()}: valid" if path.exists() else "no config file: built-in defaults"
    click.echo(Line(Mark.OK, "config", where).render())

    async def job() -> int:
        healthy = await Doctor(
            config, lambda line: click.echo(line.render()), all_accounts=all_accounts
        ).run()
        return EXIT_OK if healthy else EXIT_FAILED

    run(job)


@click.command()
@click.option(
    "--db",
    "target",
    metavar="PATH|URL",
    help="The demo database: a SQLite file (deleted and recreated) or a database URL"
    " (default: database.url, i.e. ./toogo-reconcile.db with the shipped config.yaml).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Allow a MySQL database: its hotgo and daemon tables are DROPPED and recreated.",
)
@click.pass_context
def demo(ctx: click.Context, target: str | None, force: bool) -> None:
    """Run the whole cycle on a fresh demo database, with no server and no API keys.

    Seeds users, wallets, API accounts, robots and orders (one charged by the old code whose
    flag update was lost, one still open that the exchange says closed), writes matching
    exchange records relative to now, runs one history sync and one compensation sweep, then
    prints balances, orders and the audit. Exit 1 if any step or the audit failed.
    """
    from daemon.demo import demo_url, describe, is_server, run_demo

    config = load(ctx)
    try:
        url = demo_url(target, config.database.url)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    if is_server(url) and not force:
        fail(
            f"the demo database would be {describe(url)}: the demo drops and recreates hotgo's"
            " tables there - pass --force if that is what you want, or --db PATH for SQLite",
            EXIT_USAGE,
        )

    async def job() -> int:
        ok = await run_demo(config, url, click.echo)
        return EXIT_OK if ok else EXIT_FAILED

    run(job)


@click.command()
@click.option("--dry-run", is_flag=True, help="Count what would go; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def prune(ctx: click.Context, dry_run: bool, as_json: bool) -> None:
    """Prune the daemon's own tables by `retention:` now (what the `retention` job does).

    Prints per part the rows that went (or, with --dry-run, would go): old raw payloads
    emptied, old exchange records, skip and shadow rows, resolved quarantine rows, cursors of
    streams no longer polled. Never touches hotgo's tables. docs/retention.md.
    """
    import json

    from daemon.runtime import open_core
    from reconcile.storage.retention import Pruner

    config = load(ctx, logs_to_stderr=True)

    async def job() -> int:
        async with open_core(config) as core:
            pruner = Pruner(core.db, config.retention.settings(config.robots.running_status))
            summary = await pruner.run(dry_run=dry_run)
        if as_json:
            click.echo(json.dumps({"dry_run": dry_run, **summary.counts}))
            return EXIT_OK
        verb = "would go" if dry_run else "pruned"
        for part, count in summary.counts.items():
            age = getattr(config.retention, part)
            kept = "kept forever" if age is None else f"older than {age}"
            click.echo(f"{part}: {count} {verb} ({kept})")
        return EXIT_OK

    run(job)
