"""``toogo-reconcile report``: the reconciliation report, one order's chain (``--order``), and
the shadow charges against hotgo's (``--shadow``, for a cutover: reconcile.charging.shadow).

Read-only. The report is stdout (a table, one JSON object, or CSV with a header row); logs go to
stderr. The figures are :mod:`reconcile.views.report`'s; here they are only rendered, by the small
functions below (:func:`render_table`, :func:`render_csv`, :func:`to_json`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import click

from daemon.cli_common import DURATION, EXIT_OK, EXIT_USAGE, fail, load, run
from daemon.render import cell, render_csv, render_table, to_json
from daemon.runtime import database, sync_settings
from reconcile.charging.shadow import ShadowReport, Verdict, compare
from reconcile.storage.contract import ensure_schema
from reconcile.views.report import Chain, order_chain, report
from reconcile.views.report_figures import COLUMNS, Line, Period, Report, Scope

FORMATS = ("table", "json", "csv")
FIGURES = tuple(COLUMNS)


class MomentType(click.ParamType):  # type: ignore[type-arg]
    """A moment: a duration ago (``7d``, ``90m``) or an ISO-8601 time (naive: UTC)."""

    name = "moment"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            return value
        try:
            ago: timedelta = DURATION.convert(value, param, ctx)
        except click.BadParameter:
            try:
                moment = datetime.fromisoformat(str(value))
            except ValueError:
                self.fail(f"{value!r} is neither a duration (7d, 12h) nor an ISO time", param, ctx)
            return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        return datetime.now(UTC) - ago


MOMENT = MomentType()


def _help() -> str:
    legend = "\n".join(f"  {name}: {meaning}" for name, meaning in COLUMNS.items())
    return (
        "Per account and per user for a period: what the exchanges showed and what the daemon"
        " did with it. --order N prints one order's chain instead (the other options are then"
        " ignored).\n\nRead-only. Exit 0; 1 when --order N does not exist or the database"
        " fails; 2 on bad options.\n\nColumns (each dated by its own event; see docs/reports.md):"
        "\n\n\b\n" + legend
    )


@click.command("report", help=_help())
@click.option(
    "--since",
    type=MOMENT,
    default="7d",
    show_default=True,
    help="Start of the period: a duration ago or an ISO time (naive = UTC).",
)
@click.option("--until", type=MOMENT, default=None, help="End of the period (default: now).")
@click.option("--user", "user_id", type=click.IntRange(min=1), help="Only this user's figures.")
@click.option(
    "--account",
    "account_id",
    type=click.IntRange(min=1),
    help="Only this API account's figures (hg_trading_api_config.id).",
)
@click.option("--order", "order_id", type=click.IntRange(min=1), help="One order's chain.")
@click.option(
    "--shadow",
    is_flag=True,
    help="Instead: the orders charged in the period by the daemon's shadow (power.mode: shadow)"
    " or by hotgo (a shadow or hg_toogo_power_consume row created in it), each with both sides'"
    " figures: equal, different, hotgo only, daemon only. Takes --since, --until, --format.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="table",
    show_default=True,
    help="table: aligned text; json: one object; csv: a header row, then one row per line.",
)
@click.pass_context
def report_command(
    ctx: click.Context,
    since: datetime,
    until: datetime | None,
    user_id: int | None,
    account_id: int | None,
    order_id: int | None,
    shadow: bool,
    fmt: str,
) -> None:
    end = until or datetime.now(UTC)
    if shadow and (order_id or user_id or account_id):
        fail("report: --shadow takes only --since, --until and --format", EXIT_USAGE)
    if order_id is None and since >= end:
        fail("report: --since must be before --until", EXIT_USAGE)
    config = load(ctx, logs_to_stderr=True)

    async def job() -> int:
        async with database(config) as db:
            await ensure_schema(db)
            if shadow:
                compared = await compare(db, since=since, until=end)
                click.echo(render_shadow(compared, fmt, config.database.timezone), nl=False)
                return EXIT_OK
            if order_id is not None:
                chain = await order_chain(db, order_id)
                click.echo(render_chain(chain, fmt), nl=False)
                return EXIT_OK
            figures = await report(
                db,
                Period(since, end),
                Scope(user_id=user_id, account_id=account_id),
                sync=sync_settings(config),
            )
        click.echo(render_report(figures, fmt), nl=False)
        return EXIT_OK

    run(job)


# -- rendering ------------------------------------------------------------------------------------


def _figures(line: Line) -> list[Any]:
    return list(line.figures.values().values())


def report_rows(rep: Report) -> tuple[list[str], list[list[Any]]]:
    """The report as one sheet: accounts, then users, then the total."""
    headers = ["section", "id", "platform", "user_id", *FIGURES]
    rows: list[list[Any]] = [
        ["account", a.id, a.platform, a.user_id, *_figures(a)] for a in rep.accounts
    ]
    rows += [["user", u.id, None, u.user_id, *_figures(u)] for u in rep.users]
    rows.append(["total", None, None, None, *rep.total.values().values()])
    return headers, rows


def render_report(rep: Report, fmt: str) -> str:
    if fmt == "json":
        return to_json(
            {
                "period": {"since": rep.period.since, "until": rep.period.until},
                "scope": {"user_id": rep.scope.user_id, "account_id": rep.scope.account_id},
                "columns": COLUMNS,
                "accounts": [
                    {
                        "account_id": a.id,
                        "platform": a.platform,
                        "user_id": a.user_id,
                        **a.figures.values(),
                    }
                    for a in rep.accounts
                ],
                "users": [{"user_id": u.id, **u.figures.values()} for u in rep.users],
                "total": rep.total.values(),
            }
        )
    headers, rows = report_rows(rep)
    if fmt == "csv":
        return render_csv(headers, rows)
    accounts = [r[1:] for r in rows if r[0] == "account"]
    users = [[r[1], *r[4:]] for r in rows if r[0] == "user"]
    scope = "".join(
        f", {name} {value}"
        for name, value in (("user", rep.scope.user_id), ("account", rep.scope.account_id))
        if value is not None
    )
    return (
        f"period {cell(rep.period.since)} .. {cell(rep.period.until)}{scope}\n\naccounts\n"
        + render_table(["account", "platform", "user", *FIGURES], accounts)
        + "\nusers\n"
        + render_table(["user", *FIGURES], users)
        + "\ntotal\n"
        + render_table(list(FIGURES), [rows[-1][4:]])
    )


def render_chain(chain: Chain, fmt: str) -> str:
    if fmt == "json":
        return to_json({"order": chain.order, **chain.parts()})
    entries = [("order", 0, chain.order)] + [
        (part, i, row) for part, found in chain.parts().items() for i, row in enumerate(found, 1)
    ]
    if fmt == "csv":
        rows = [[part, i, k, v] for part, i, row in entries for k, v in row.items()]
        return render_csv(["part", "index", "field", "value"], rows)
    out: list[str] = []
    for part, found in [("order", [chain.order]), *chain.parts().items()]:
        out.append(f"{part} ({len(found)})" if part != "order" else "order")
        for i, row in enumerate(found, 1):
            prefix = f"  #{i} " if part != "order" else "  "
            out.extend(f"{prefix}{k}: {cell(v)}" for k, v in row.items())
    return "\n".join(out) + "\n"


# -- report --shadow ------------------------------------------------------------------------------

SHADOW_TOTALS = ("verdict", "orders", "hotgo", "daemon", "difference")
SHADOW_ORDERS = (
    "order_id",
    "user_id",
    "order_sn",
    "verdict",
    "hotgo",
    "daemon",
    "difference",
    "hotgo_rows",
    "charged_at",
)


def _shadow_totals(rep: ShadowReport) -> list[list[Any]]:
    return [[t.verdict, t.orders, t.hotgo, t.daemon, t.daemon - t.hotgo] for t in rep.totals()]


def _shadow_orders(rep: ShadowReport, *, equal: bool = True) -> list[list[Any]]:
    return [
        [
            r.order_id,
            r.user_id,
            r.order_sn,
            r.verdict,
            r.hotgo,
            r.daemon,
            r.difference,
            r.hotgo_rows,
            r.charged_at,
        ]
        for r in rep.orders
        if equal or r.verdict is not Verdict.EQUAL
    ]


def render_shadow(rep: ShadowReport, fmt: str, timezone: str) -> str:
    """The table lists the orders that differ (equal ones are counted); JSON and CSV list every
    order compared, with its verdict."""
    if fmt == "csv":
        return render_csv(SHADOW_ORDERS, _shadow_orders(rep))
    if fmt == "json":
        return to_json(
            {
                "report": "shadow",
                "since": rep.since,
                "until": rep.until,
                "timezone": timezone,
                "totals": [dict(zip(SHADOW_TOTALS, r, strict=True)) for r in _shadow_totals(rep)],
                "orders": [dict(zip(SHADOW_ORDERS, r, strict=True)) for r in _shadow_orders(rep)],
            }
        )
    equal = sum(1 for r in rep.orders if r.verdict is Verdict.EQUAL)
    return (
        f"shadow charges vs hotgo's, {cell(rep.since)} .. {cell(rep.until)} ({timezone})\n\n"
        "by verdict\n"
        + render_table(SHADOW_TOTALS, _shadow_totals(rep))
        + "\norders that differ\n"
        + render_table(SHADOW_ORDERS, _shadow_orders(rep, equal=False))
        + f"\n{equal} equal order(s) not listed (--format json or csv lists every order)\n"
    )
