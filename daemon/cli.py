"""The ``toogo-reconcile`` command line. Exit codes: 0 success, 1 operational failure, 2 usage or
configuration error. See docs/commands.md."""

from __future__ import annotations

import gc
import importlib
import json
from dataclasses import replace
from datetime import timedelta
from typing import Any

import click
import structlog

from daemon.cli_common import DURATION, EXIT_FAILED, EXIT_OK, load, run
from daemon.config import config_path
from daemon.parallel import Workers
from daemon.runtime import open_core, open_history_sync
from daemon.sweep_plan import most_processes, processes_for
from reconcile.charging.outcomes import Source
from reconcile.charging.sweep import sweep as run_sweep
from reconcile.errors import OrderNotFound
from reconcile.views.audit import audit as run_audit

log = structlog.get_logger("daemon.cli")


#: the commands of other modules, imported when one of them runs (or for ``--help``): the
#: others, ``sweep`` above all, do not pay for their imports
_ELSEWHERE = {
    "migrate": "daemon.cli_migrate:migrate",
    "exchange": "daemon.cli_exchange:exchange",
    "doctor": "daemon.cli_ops:doctor",
    "demo": "daemon.cli_ops:demo",
    "report": "daemon.cli_report:report_command",
    "held": "daemon.cli_held:held",
    "grants": "daemon.cli_grants:grants",
    "prune": "daemon.cli_ops:prune",
}


class _Commands(click.Group):
    """This module's commands, and those of ``_ELSEWHERE`` imported on demand."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_ELSEWHERE})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in _ELSEWHERE:
            return super().get_command(ctx, name)
        module, attribute = _ELSEWHERE[name].split(":")
        command: click.Command = getattr(importlib.import_module(module), attribute)
        return command


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_file",
    metavar="PATH",
    envvar="TOOGO_CONFIG",
    help="YAML configuration (env TOOGO_CONFIG; default ./config.yaml).",
)
@click.option(
    "--log-format",
    type=click.Choice(["auto", "json", "console"]),
    help="Override logging.format: JSON lines, or pretty console output.",
)
@click.pass_context
def cli(ctx: click.Context, config_file: str | None, log_format: str | None) -> None:
    """Charge Toogo users' power exactly once per profitable closed order.

    Logs are JSON lines on stdout; errors are one line on stderr. Exit status: 0 success,
    1 operational failure, 2 usage or configuration error.
    """
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_file
    ctx.obj["log_format"] = log_format


@cli.command()
@click.option(
    "--lookback",
    type=DURATION,
    default=None,
    help="How far back close_time may be (default: sweep.lookback, 7d).",
)
@click.option(
    "--page-size",
    type=click.IntRange(1, 5000),
    default=None,
    help="Orders locked and charged per transaction (default: sweep.page_size, 1000).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 16),
    default=None,
    help="Pages charged concurrently per process (default: sweep.workers, 2; SQLite 1).",
)
@click.option(
    "--processes",
    type=click.IntRange(1, 16),
    default=None,
    help="Split the pass over this many processes by user (default: sweep.processes, auto:"
    " one per core, at most 4, when at least 50,000 orders wait; else 1). MySQL/MariaDB and"
    " PostgreSQL.",
)
@click.pass_context
def sweep(
    ctx: click.Context,
    lookback: timedelta | None,
    page_size: int | None,
    workers: int | None,
    processes: int | None,
) -> None:
    """One compensation pass: charge closed, profitable, unconsumed orders, oldest first.

    Safe to run while other sweeps, the daemon and the realtime path charge the same database.
    Exit 1 if any order failed or the database gave up.
    """
    obj = ctx.ensure_object(dict)
    given = obj.get("config_path")
    # the workers a split pass may need are forked first: before this process opens the database
    # or starts a thread (daemon.parallel); those the plan does not use exit at once
    most = most_processes(config_path(given), required=given is not None, fixed=processes)
    with Workers.fork(most) as forked:
        config = load(ctx)
        base = config.sweep.settings()
        settings = replace(
            base,
            lookback=lookback or base.lookback,
            page_size=page_size or base.page_size,
            workers=workers or base.workers,
        )
        fixed = processes or config.sweep.process_count()
        log_format = obj.get("log_format") or config.logging.format

        async def job() -> int:
            async with open_core(config) as core:
                split = await processes_for(core, settings, fixed)
                if split > 1 and len(forked) > 1:
                    summary = await forked.sweep(
                        config, log_format, settings, core, processes=split
                    )
                else:
                    forked.dismiss()
                    summary = await run_sweep(core.consumer, settings, source=Source.SWEEP)
            return EXIT_OK if summary.ok else EXIT_FAILED

        run(job)


@cli.command()
@click.option(
    "--order-id",
    type=click.IntRange(min=1),
    required=True,
    help="hg_trading_order.id of the order to charge.",
)
@click.pass_context
def consume(ctx: click.Context, order_id: int) -> None:
    """The realtime trigger: charge one order (any age) exactly once.

    Charged or already charged: exit 0. Not eligible (open, cancelled, not profitable): exit 0
    with the reason. Not found: exit 1.
    """
    config = load(ctx)

    async def job() -> int:
        async with open_core(config) as core:
            try:
                result = await core.consumer.charge(order_id, Source.REALTIME)
            except OrderNotFound as exc:
                log.error("order not found", order_id=order_id)
                raise exc
        fields: dict[str, Any] = {"order_id": order_id, "outcome": str(result.outcome)}
        if result.consume_power is not None:
            fields["consume_power"] = result.consume_power
        if result.reason is not None:  # not eligible, a leg, held
            fields["reason"] = result.reason
        log.info("consume result", **fields)
        return EXIT_OK

    run(job)


@cli.command("run")
@click.option(
    "--once",
    is_flag=True,
    help="One history sync of every stream plus one compensation sweep, then exit "
    "(0 when everything succeeded, 1 when any stream or charge failed).",
)
@click.pass_context
def run_command(ctx: click.Context, once: bool) -> None:
    """The daemon: history sync, realtime sweep and compensation sweep on a schedule.

    Speaks sd_notify under systemd (READY, WATCHDOG, STATUS, STOPPING). SIGTERM/SIGINT finish
    the transactions in flight and exit 0. Metrics and /healthz on metrics.listen when set.
    """
    from daemon.metrics import Metrics  # aiohttp and prometheus: only the daemon needs them
    from daemon.service import Service

    metrics = Metrics()
    config = load(ctx, log_processors=[metrics.processor])
    service = Service(config, metrics)
    run(service.run_once if once else service.run_forever)


@cli.command()
@click.pass_context
def sync(ctx: click.Context) -> None:
    """One history sync: pull every running robot's closed positions from the exchanges,
    upsert the missing local orders, charge the profitable ones.

    Exit 1 if any stream failed (its cursor stays; the next cycle retries it).
    """
    config = load(ctx)

    async def job() -> int:
        async with open_core(config) as core, open_history_sync(config, core) as history:
            summary = await history.run_cycle()
        return EXIT_OK if summary.ok else EXIT_FAILED

    run(job)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--backlog-after",
    type=DURATION,
    default="1h",
    show_default=True,
    help="An eligible order unconsumed for longer than this is a violation.",
)
@click.pass_context
def audit(ctx: click.Context, as_json: bool, backlog_after: timedelta) -> None:
    """Check the ledger invariants; exit 1 on any violation, listing examples.

    No duplicate consume rows; consume row <=> power_consumed = 1 with equal power_amount;
    per user Σ consume = −Σ ledger change; unbroken before/after chains; no backlog.
    Read-only; works before the migration too.
    """
    config = load(ctx, logs_to_stderr=True)

    async def job() -> int:
        async with open_core(config, require_schema=False) as core:
            report = await run_audit(core.db, backlog_after=backlog_after)
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "ok": report.ok,
                        "checks": [
                            {
                                "name": c.name,
                                "description": c.description,
                                "ok": c.ok,
                                "violations": c.violations,
                                "examples": c.examples,
                            }
                            for c in report.checks
                        ],
                    },
                    default=str,
                )
            )
        else:
            for c in report.checks:
                mark = "✓" if c.ok else "✗"
                tail = "" if c.ok else f" - {c.violations} violation(s)"
                click.echo(f"{mark} {c.name}: {c.description}{tail}")
                for example in c.examples:
                    fields = ", ".join(f"{k}={v}" for k, v in example.items())
                    click.echo(f"    {fields}")
        return EXIT_OK if report.ok else EXIT_FAILED

    run(job)


def main() -> None:
    # everything imported so far lives as long as the process: leave it out of the cyclic
    # collector's passes, which otherwise re-scan it (~5% of a sweep's CPU, BENCHMARKS.md)
    gc.freeze()
    cli(prog_name="toogo-reconcile")
