"""``toogo-reconcile exchange closed``: what does the exchange say closed on this account?

Read-only towards the database (it reads the account row) and towards the exchange.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import click

from daemon.cli_common import DURATION, EXIT_OK, EXIT_USAGE, fail, load, run
from reconcile.accounts import AccountNotFound, load_account
from reconcile.db import Database


@click.group()
def exchange() -> None:
    """Look at the exchanges through the configured adapters."""


@exchange.command()
@click.option(
    "--account",
    "account_id",
    type=click.IntRange(min=1),
    required=True,
    help="hg_trading_api_config.id of the API account.",
)
@click.option("--symbol", required=True, help="Robot symbol: BTC_USDT, BTCUSDT, BTC/USDT, ...")
@click.option(
    "--since",
    type=DURATION,
    default="7d",
    show_default=True,
    help="How far back close times may be.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object per line (also a valid replay file)."
)
@click.pass_context
def closed(
    ctx: click.Context, account_id: int, symbol: str, since: timedelta, as_json: bool
) -> None:
    """Print the normalized closed positions the exchange reports for an account and symbol.

    The positions go to stdout; logs go to stderr.
    """
    config = load(ctx, logs_to_stderr=True)

    from exchange_adapters.errors import UnknownSymbol  # ccxt: imported only when needed
    from exchange_adapters.registry import closed_positions_for_account, position_to_json

    async def job() -> int:
        async with Database(config.database.settings()) as db:
            try:
                account = await load_account(db, account_id)
            except AccountNotFound as exc:
                fail(str(exc), EXIT_USAGE)
        try:
            positions = await closed_positions_for_account(
                account, config.exchanges.adapter_options(), symbol, datetime.now(UTC) - since
            )
        except UnknownSymbol as exc:
            fail(str(exc), EXIT_USAGE)
        for p in positions:
            if as_json:
                click.echo(json.dumps(position_to_json(p)))
            else:
                click.echo(
                    f"{p.close_time:%Y-%m-%d %H:%M:%S}Z {p.symbol} {p.direction:5} size {p.size}"
                    f" open {p.open_price} close {p.close_price} gross {p.gross_pnl}"
                    f" fee {p.fee} funding {p.funding} net {p.net_profit} key {p.record_key}"
                )
        if not as_json:
            click.echo(f"{len(positions)} closed position(s)", err=True)
        return EXIT_OK

    run(job)
