"""``toogo-reconcile held``: the closed profitable rows not charged yet because they may be another
row's closing leg or wait for the exchange sync (reconcile.charging.trades), and the operator's
decision on one
(reconcile.charging.held)."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

import click
import structlog

from daemon.cli_common import DURATION, EXIT_OK, load, run
from daemon.render import cell, render_table
from daemon.runtime import open_core
from reconcile.charging.held import decide, list_held
from reconcile.charging.outcomes import Source
from reconcile.charging.verdicts import Verdict

log = structlog.get_logger("daemon.cli")

ORDER_ID = click.option(
    "--order-id", type=click.IntRange(min=1), required=True, help="hg_trading_order.id."
)
BY = click.option("--by", "actor", required=True, help="Who decides (recorded with the verdict).")
NOTE = click.option("--note", default=None, help="Why (recorded with the verdict, 255 chars).")


@click.group()
def held() -> None:
    """Rows held instead of charged: possibly another row's closing leg, or awaiting the
    exchange sync. The next sync releases a row it confirms; otherwise an operator charges or
    dismisses it. See docs/charging.md, "One trade, one charge"."""


@held.command("list")
@click.option("--since", type=DURATION, default="7d", show_default=True, help="Closed within this.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def list_command(ctx: click.Context, since: timedelta, as_json: bool) -> None:
    """List the held rows, oldest first, with the rule that holds each. Read-only; exit 0."""
    config = load(ctx, logs_to_stderr=True)

    async def job() -> int:
        async with open_core(config) as core:
            start = core.db.to_db_time(datetime.now(UTC) - since)
            rows = await list_held(core.db, core.consumer.judge, since=start)
        if as_json:
            for row in rows:
                click.echo(json.dumps(asdict(row), default=str))
        else:
            header = ["order_id", "user_id", "order_sn", "close_time", "profit", "rule", "trade"]
            body = [
                [
                    cell(v)
                    for v in (
                        r.order_id,
                        r.user_id,
                        r.order_sn,
                        r.close_time,
                        r.realized_profit,
                        r.rule,
                        r.trade_order_id,
                    )
                ]
                for r in rows
            ]
            click.echo(render_table(header, body) if body else "no held orders")
        return EXIT_OK

    run(job)


@held.command("charge")
@ORDER_ID
@BY
@NOTE
@click.pass_context
def charge_command(ctx: click.Context, order_id: int, actor: str, note: str | None) -> None:
    """Record that the row is a trade, then charge it (exactly once, as always).

    Repeating it changes nothing (exit 0). Refused (exit 1) for a row recorded as a leg or
    dismissed, and for an order that does not exist.
    """
    config = load(ctx)

    async def job() -> int:
        async with open_core(config) as core:
            decided = await decide(
                core.db, order_id, Verdict.TRADE, actor=actor, note=note, judge=core.consumer.judge
            )
            result = await core.consumer.charge(order_id, Source.OPERATOR)
        fields: dict[str, Any] = {
            "order_id": order_id,
            "verdict": str(decided.verdict),
            "recorded": decided.changed,
            "by": actor,
            "outcome": str(result.outcome),
        }
        if result.consume_power is not None:
            fields["consume_power"] = result.consume_power
        if result.reason is not None:
            fields["reason"] = result.reason
        log.info("held decision", **fields)
        return EXIT_OK

    run(job)


@held.command("dismiss")
@ORDER_ID
@BY
@NOTE
@click.pass_context
def dismiss_command(ctx: click.Context, order_id: int, actor: str, note: str | None) -> None:
    """Record that the row is never to be charged (a leg the rules could not prove).

    Repeating it changes nothing (exit 0). Refused (exit 1) for a charged row or one recorded
    as a trade, and for an order that does not exist.
    """
    config = load(ctx)

    async def job() -> int:
        async with open_core(config) as core:
            decided = await decide(core.db, order_id, Verdict.DISMISSED, actor=actor, note=note)
        log.info(
            "held decision",
            order_id=order_id,
            verdict=str(decided.verdict),
            recorded=decided.changed,
            by=actor,
        )
        return EXIT_OK

    run(job)
