"""``toogo-reconcile report``: figures for a period, as a table, one JSON object or CSV.

This branch builds ``report --shadow`` (reconcile.shadow: the daemon's shadow charges against
what hotgo's engine charged). The renderers below take a list of rows and know nothing of the
report they print: ``table_text``, ``csv_text`` (a header row, for a spreadsheet) and
``json_text`` (one object). Read-only; the report goes to stdout, logs to stderr.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any

import click

from daemon.cli_common import DURATION, EXIT_OK, EXIT_USAGE, fail, load, run
from daemon.runtime import open_core
from reconcile.shadow import ShadowReport, Verdict, compare

FORMATS = ("table", "json", "csv")


@dataclass(frozen=True)
class Rows:
    """A titled list of rows: what every renderer takes."""

    title: str
    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, (plain(v) for v in row), strict=True)) for row in self.rows]


def plain(value: Any) -> Any:
    """A cell as JSON and CSV take it: exact decimal strings, ISO times, enum values."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime | date):
        return value.isoformat(sep=" ") if isinstance(value, datetime) else value.isoformat()
    if isinstance(value, Enum):
        return value.value
    return value


def table_text(*parts: Rows, notes: Sequence[str] = ()) -> str:
    """Aligned columns (numbers to the right), one block per part, blank lines between."""
    return "\n\n".join([*(_block(part) for part in parts), *notes]) + "\n"


def _block(part: Rows) -> str:
    cells = [[_cell(v) for v in row] for row in part.rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(part.columns)]
    numeric = [
        bool(part.rows) and all(isinstance(r[i], int | Decimal) or r[i] is None for r in part.rows)
        for i in range(len(part.columns))
    ]

    def line(values: Sequence[str]) -> str:
        out = (
            v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric, strict=True)
        )
        return "  ".join(out).rstrip()

    body = [line(part.columns), *(line(row) for row in cells)]
    return "\n".join([part.title, *body] if part.title else body)


def csv_text(part: Rows) -> str:
    """One header row, then the rows (RFC 4180: a spreadsheet opens it)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(part.columns)
    writer.writerows([[_cell(v) for v in row] for row in part.rows])
    return buffer.getvalue()


def json_text(document: Mapping[str, Any]) -> str:
    """One JSON object; Rows become lists of objects, decimals exact strings."""

    def default(value: Any) -> Any:
        if isinstance(value, Rows):
            return value.records()
        return plain(value)

    return json.dumps(document, default=default, ensure_ascii=False) + "\n"


def _cell(value: Any) -> str:
    shown = plain(value)
    return "" if shown is None else str(shown)


# -- report --shadow ------------------------------------------------------------------------------


def shadow_totals(report: ShadowReport) -> Rows:
    return Rows(
        "by verdict",
        ("verdict", "orders", "hotgo", "daemon", "difference"),
        [(t.verdict, t.orders, t.hotgo, t.daemon, t.daemon - t.hotgo) for t in report.totals()],
    )


def shadow_orders(report: ShadowReport, *, equal: bool = True) -> Rows:
    return Rows(
        "orders" if equal else "orders that differ",
        (
            "order_id",
            "user_id",
            "order_sn",
            "verdict",
            "hotgo",
            "daemon",
            "difference",
            "hotgo_rows",
            "charged_at",
        ),
        [
            (
                r.order_id,
                r.user_id,
                r.order_sn,
                r.verdict,
                r.hotgo,
                r.daemon,
                r.difference,
                r.hotgo_rows,
                r.charged_at,
            )
            for r in report.orders
            if equal or r.verdict is not Verdict.EQUAL
        ],
    )


def render_shadow(report: ShadowReport, fmt: str, timezone: str) -> str:
    """The table lists the orders that differ (equal ones are counted); JSON and CSV list
    every order compared, with its verdict."""
    if fmt == "csv":
        return csv_text(shadow_orders(report))
    period = {"since": report.since, "until": report.until, "timezone": timezone}
    if fmt == "json":
        totals, orders = shadow_totals(report), shadow_orders(report)
        return json_text({"report": "shadow", **period, "totals": totals, "orders": orders})
    equal = sum(1 for r in report.orders if r.verdict is Verdict.EQUAL)
    head = f"shadow charges vs hotgo's, {plain(report.since)} .. {plain(report.until)} ({timezone})"
    differ = shadow_orders(report, equal=False)
    notes = [f"{equal} equal order(s) not listed (--format json or csv lists every order)"]
    return head + "\n\n" + table_text(shadow_totals(report), differ, notes=notes)


@click.command()
@click.option(
    "--since", type=DURATION, default="7d", show_default=True, help="Start of the period, ago."
)
@click.option("--until", type=DURATION, default=None, help="End of the period, ago (default: now).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option(
    "--shadow",
    is_flag=True,
    help="Compare the shadow charges (power.mode: shadow) with what hotgo's engine charged: "
    "equal, different (both figures), hotgo only, daemon only.",
)
@click.pass_context
def report(
    ctx: click.Context, since: timedelta, until: timedelta | None, fmt: str, shadow: bool
) -> None:
    """Figures for a period (read-only): the report goes to stdout, logs to stderr.

    --shadow: the orders charged in the period by the daemon's shadow or by hotgo (a shadow
    or hg_toogo_power_consume row created in it), each with both sides' figures.
    """
    if not shadow:
        fail("report: only --shadow is implemented in this branch", EXIT_USAGE)
    now = datetime.now(UTC).replace(microsecond=0)
    start, end = now - since, now - (until or timedelta(0))
    if end <= start:
        fail("report: --until must be more recent than --since", EXIT_USAGE)
    config = load(ctx, logs_to_stderr=True)

    async def job() -> int:
        async with open_core(config) as core:
            compared = await compare(core.db, since=start, until=end)
        click.echo(render_shadow(compared, fmt, config.database.timezone), nl=False)
        return EXIT_OK

    run(job)
