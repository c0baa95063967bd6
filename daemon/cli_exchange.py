"""``toogo-reconcile exchange closed``: what does the exchange say closed on this account?
``toogo-reconcile exchange quarantine``: the exchange records that could not be normalized.

``closed`` is read-only towards the database (it reads the account row) and the exchange.
See docs/exchanges.md.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import click

from daemon.cli_common import DURATION, EXIT_FAILED, EXIT_OK, EXIT_USAGE, fail, load, run
from daemon.runtime import database, open_core, open_history_sync, resolve_proxy
from reconcile.errors import ReconcileError
from reconcile.records import ClosedPosition
from reconcile.storage.db import Database
from reconcile.sync import quarantine as quarantined
from reconcile.sync.accounts import AccountNotFound, load_account
from reconcile.sync.history import HistorySync


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
    from exchange_adapters.registry import (
        closed_positions_for_account,
        position_to_json,
        unusable_to_json,
    )

    async def job() -> int:
        async with database(config) as db:
            try:
                account = await load_account(db, account_id)
            except AccountNotFound as exc:
                fail(str(exc), EXIT_USAGE)
            proxy = await resolve_proxy(config, db)
        try:
            window = await closed_positions_for_account(
                account,
                config.exchanges.adapter_options(),
                symbol,
                datetime.now(UTC) - since,
                proxy=proxy,
            )
        except UnknownSymbol as exc:
            fail(str(exc), EXIT_USAGE)
        positions = window.records
        for p in positions:
            if as_json:
                click.echo(json.dumps(position_to_json(p)))
            else:
                click.echo(
                    f"{p.close_time:%Y-%m-%d %H:%M:%S}Z {p.symbol} {p.direction:5} size {p.size}"
                    f" open {p.open_price} close {p.close_price} gross {p.gross_pnl}"
                    f" fee {p.fee} funding {p.funding} net {p.net_profit} key {p.record_key}"
                )
        for u in window.unusable:
            if as_json:
                click.echo(json.dumps(unusable_to_json(u)), err=True)
            else:
                click.echo(f"UNUSABLE {u.symbol} key {u.record_key}: {u.reason}", err=True)
        if not as_json:
            click.echo(
                f"{len(positions)} closed position(s), {len(window.unusable)} unusable", err=True
            )
        return EXIT_OK

    run(job)


@exchange.command()
@click.option(
    "--retry",
    is_flag=True,
    help="Re-process each unresolved record: re-normalize its stored payload with the current "
    "adapters, else re-read it from the exchange; a usable one goes to the history sync.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def quarantine(ctx: click.Context, retry: bool, as_json: bool) -> None:
    """List the exchange records that could not be normalized (and re-process them).

    Without --retry: read-only, exit 0. With --retry: exit 1 if any record is still unresolved.
    """
    config = load(ctx, logs_to_stderr=True)

    async def job() -> int:
        async with open_core(config) as core:
            rows = await quarantined.list_unresolved(core.db)
            if not retry:
                for row in rows:
                    _print_row(row, as_json, outcome=None)
                if not as_json:
                    click.echo(f"{len(rows)} unresolved quarantined record(s)", err=True)
                return EXIT_OK
            async with open_history_sync(config, core) as history:
                left = 0
                for row in rows:
                    outcome = await _retry(core.db, history, row)
                    left += outcome != "resolved"
                    _print_row(row, as_json, outcome=outcome)
            if not as_json:
                click.echo(f"{len(rows) - left} resolved, {left} still unresolved", err=True)
            return EXIT_FAILED if left else EXIT_OK

    run(job)


def _print_row(row: quarantined.QuarantinedRecord, as_json: bool, outcome: str | None) -> None:
    if as_json:
        data = {
            "id": row.id,
            "platform": row.platform,
            "account_id": row.account_id,
            "symbol": row.symbol,
            "record_key": row.record_key,
            "reason": row.reason,
            "close_time": row.close_time.isoformat() if row.close_time else None,
            "first_seen": row.first_seen.isoformat(),
            "attempts": row.attempts,
            "raw": row.raw,
        }
        if outcome is not None:
            data["outcome"] = outcome
        click.echo(json.dumps(data, default=str))
        return
    when = f"{row.close_time:%Y-%m-%d %H:%M:%S}Z" if row.close_time else "close time unknown"
    suffix = f" -> {outcome}" if outcome else ""
    click.echo(
        f"#{row.id} {row.platform} account {row.account_id} {row.symbol} key {row.record_key}"
        f" ({when}, seen {row.attempts}x): {row.reason}{suffix}"
    )


async def _retry(db: Database, history: HistorySync, row: quarantined.QuarantinedRecord) -> str:
    """One record: usable now (stored payload with today's code, else the exchange's current
    answer for its close time) -> the history sync's per-record path -> resolved."""
    from exchange_adapters.registry import normalize_stored

    position: ClosedPosition | None = None
    how = "renormalized"
    try:
        position = normalize_stored(row.platform, row.account_id, row.raw, row.context)
    except ReconcileError:
        position = None
    if position is None and row.close_time is not None:
        how = "refetched"
        try:
            account = await load_account(db, row.account_id)
            source = history.provider.source_for(account)
            window = await source.fetch_closed(
                row.symbol,
                row.close_time - timedelta(minutes=1),
                row.close_time + timedelta(minutes=1),
            )
        except (ReconcileError, AccountNotFound) as exc:
            return f"unresolved: {exc}"
        position = next((p for p in window.records if p.record_key == row.record_key), None)
    if position is None:
        return "unresolved: still unusable"
    reconcile = history.reconcile_records
    try:
        await reconcile((row.platform, row.account_id, row.symbol), [position])
    except ReconcileError as exc:  # e.g. the account is being synced elsewhere: next time
        return f"unresolved: {exc}"
    await quarantined.mark_resolved(db, [row.id], how)
    return "resolved"
