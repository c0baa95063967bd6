"""Whether an order is charged is one rule with two forms: ``ineligibility`` (Python: the
consumer, the history sync's writer) and ``eligible_sql`` (SQL: the sweep, status, audit, held).
Here they judge the same grid of stored rows, on MariaDB, PostgreSQL and SQLite, and agree."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from kits.seed import insert_order
from reconcile.charging.orders import (
    ORDER_COLUMNS,
    Status,
    awaits_charge,
    eligible_sql,
    fetch_orders,
    ineligibility,
)
from reconcile.storage.db import Database
from reconcile.storage.schema import trading_order

STATUSES = [int(s) for s in Status]
PROFITS = [
    None,
    Decimal("-1"),
    Decimal("-0.0001"),
    Decimal("0"),
    Decimal("0.0001"),
    Decimal("12.5"),
]
#: the engine's placeholder (Go's reference time), either side of the cut-off, a real close, none
CLOSE_TIMES: list[datetime | None] = [
    datetime(2006, 1, 2, 15, 4, 5),
    datetime(2009, 12, 31, 23, 59, 59),
    datetime(2010, 1, 1),
    None,
]


async def test_the_python_rule_and_its_sql_twin_agree_on_every_row(any_db: Database) -> None:
    now = any_db.now().replace(microsecond=0)
    closes = [*CLOSE_TIMES, now - timedelta(minutes=5)]
    for status, profit, close, charged in itertools.product(STATUSES, PROFITS, closes, (0, 1)):
        await insert_order(
            any_db,
            status=status,
            realized_profit=profit,
            close_time=close,
            power_consumed=charged,
            power_amount=Decimal("0.01") if charged else Decimal(0),
        )

    async def read(conn: AsyncConnection) -> tuple[list[Any], dict[int, set[int]]]:
        o = trading_order.c
        rows = await fetch_orders(conn, select(*ORDER_COLUMNS).order_by(o.id))
        passes = {}
        for charged in (0, 1):
            where = eligible_sql(any_db.dialect, power_consumed=charged)
            passes[charged] = {r.id for r in await conn.execute(select(o.id).where(*where))}
        return rows, passes

    rows, selected = await any_db.transaction(read, what="test read")
    assert len(rows) == len(STATUSES) * len(PROFITS) * len(closes) * 2
    disagree = []
    for row in rows:
        eligible = ineligibility(row.status, row.realized_profit, row.close_time) is None
        assert row.ineligibility() == ineligibility(row.status, row.realized_profit, row.close_time)
        for charged in (0, 1):
            python = eligible and row.power_consumed == charged
            if python != (row.id in selected[charged]):
                disagree.append((row, charged, python))
        waiting = awaits_charge(row.status, row.realized_profit, row.close_time, row.power_consumed)
        assert waiting == (row.id in selected[0]), row
    assert not disagree
    # the grid holds both answers in each pass: 2 profits x 2 real close times
    assert len(selected[0]) == len(selected[1]) == 4
