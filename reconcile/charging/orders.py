"""An order's rules: hotgo's statuses, whether an order is charged, and the engine's oddities.

Facts read from upstream's engine (docs/architecture.md): status 0 pending, 1 open, 2 closed,
3 cancelled, 4 failed; ``close_time`` sometimes holds a placeholder date in 2006 that is not a
close time; ``realized_profit`` is NULL-able.

**Whether an order is charged** is decided here and nowhere else: an order is *eligible* when it
is closed, has a real close time and a positive realized profit - :func:`ineligibility` (None,
or why not), the one Python form every path asks (the consumer, the history sync's writer), and
:func:`eligible_sql`, its SQL twin for set-based reads (the sweep, ``status``, ``audit``,
``held``), which also selects the ``power_consumed`` pass. tests/test_orders_eligibility.py
checks the two against each other on a grid of rows, on both servers and SQLite. Whether an
eligible order is also a *trade* (not another row's closing leg) is reconcile.charging.trades'.
:class:`OrderRow` is the typed row the consumer charges from. See docs/charging.md, "Which
orders are charged".
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import IntEnum
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, Select, select
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.charging.trade_rows import TradeRow, page_row
from reconcile.storage.dialect import Dialect
from reconcile.storage.schema import power_consume, trading_order


class Status(IntEnum):
    PENDING = 0
    OPEN = 1
    CLOSED = 2
    CANCELLED = 3
    FAILED = 4


STATUS_OPEN, STATUS_CLOSED, STATUS_CANCELLED = Status.OPEN, Status.CLOSED, Status.CANCELLED

#: a close_time before this is the engine's placeholder (it writes dates in 2006), not a close
REAL_CLOSE_TIMES_FROM = datetime(2010, 1, 1)


def real_close_time(value: datetime | None) -> bool:
    return value is not None and value.replace(tzinfo=None) >= REAL_CLOSE_TIMES_FROM


def unconsumed_profit_sql(
    dialect: Dialect, *, power_consumed: int = 0
) -> tuple[ColumnElement[bool], ...]:
    """Closed, profitable, not yet consumed: eligible but for the close time.
    ``power_consumed=1``: the same, charged (shadow mode also reads those: hotgo charged them)."""
    o = trading_order.c
    return (
        o.power_consumed == power_consumed,
        o.status == int(Status.CLOSED),
        dialect.positive(o.realized_profit),
    )


def eligible_sql(dialect: Dialect, *, power_consumed: int = 0) -> tuple[ColumnElement[bool], ...]:
    """Closed, a real close time, profitable, not yet consumed (the sweep's WHERE); a range on
    ``idx_reconcile_sweep`` for either value of ``power_consumed``. The SQL twin of
    :func:`ineligibility` (``is None``) and ``power_consumed == power_consumed``."""
    return (
        *unconsumed_profit_sql(dialect, power_consumed=power_consumed),
        trading_order.c.close_time >= REAL_CLOSE_TIMES_FROM,
    )


def ineligibility(
    status: int | None, realized_profit: Decimal | None, close_time: Any
) -> str | None:
    """Why an order is not charged, or None when it is: *the* rule (eligible_sql is its SQL
    twin). Whether it was charged already is not part of it: the caller reads the consume row."""
    if status != Status.CLOSED:
        name = Status(status).name.lower() if status in set(Status) else f"in status {status}"
        return f"order is {name}"
    if realized_profit is None or realized_profit <= 0:
        return f"not profitable (realized_profit {realized_profit})"
    if not real_close_time(close_time):
        return f"close_time {close_time} is not a real close time (engine placeholder)"
    return None


def awaits_charge(
    status: int | None, realized_profit: Decimal | None, close_time: Any, power_consumed: int
) -> bool:
    """Eligible and not flagged charged yet: the Python form of ``eligible_sql()``."""
    return not power_consumed and ineligibility(status, realized_profit, close_time) is None


class OrderRow(NamedTuple):
    """The columns of an hg_trading_order row that charging reads (``ORDER_COLUMNS``); a
    named tuple, as a page builds 500 of them per transaction."""

    id: int
    user_id: int
    robot_id: int
    order_sn: str
    status: int | None
    realized_profit: Decimal | None
    power_consumed: int
    power_amount: Decimal
    close_time: datetime | None
    #: consume_power of the order's consume row (the newest, were there several): charged
    charged: Decimal | None

    def ineligibility(self) -> str | None:
        return ineligibility(self.status, self.realized_profit, self.close_time)


_c = power_consume.c
#: read in the same statement as the order, as a scalar subquery: a locking read does not lock
#: a subquery's rows (MariaDB, PostgreSQL), and one statement per page is saved
_CHARGED = (
    select(_c.consume_power)
    .where(_c.user_id == trading_order.c.user_id, _c.order_id == trading_order.c.id)
    .order_by(_c.id.desc())
    .limit(1)
    .scalar_subquery()
    .label("charged")
)

ORDER_COLUMNS = (
    trading_order.c.id,
    trading_order.c.user_id,
    trading_order.c.robot_id,
    trading_order.c.order_sn,
    trading_order.c.status,
    trading_order.c.realized_profit,
    trading_order.c.power_consumed,
    trading_order.c.power_amount,
    trading_order.c.close_time,
    _CHARGED,
)


async def fetch_orders(conn: AsyncConnection, stmt: Select[Any]) -> list[OrderRow]:
    """``stmt`` selects ``ORDER_COLUMNS`` (with the order's consume row's amount)."""
    return [OrderRow._make(row) for row in await conn.execute(stmt)]


async def fetch_judged_orders(
    conn: AsyncConnection, stmt: Select[Any]
) -> tuple[list[OrderRow], dict[int, TradeRow]]:
    """``stmt`` selects ``ORDER_COLUMNS`` and then the trade judge's ``page_columns``: the
    orders, and the same rows as the judge reads them (reconcile.charging.trade_rows)."""
    width = len(ORDER_COLUMNS)
    orders: list[OrderRow] = []
    trades: dict[int, TradeRow] = {}
    for row in await conn.execute(stmt):
        order = OrderRow._make(row[:width])
        orders.append(order)
        trades[order.id] = page_row(
            order.id, order.robot_id, order.close_time, order.status, row[width:]
        )
    return orders, trades


__all__ = [
    "ORDER_COLUMNS",
    "REAL_CLOSE_TIMES_FROM",
    "STATUS_CANCELLED",
    "STATUS_CLOSED",
    "STATUS_OPEN",
    "OrderRow",
    "Status",
    "awaits_charge",
    "eligible_sql",
    "fetch_judged_orders",
    "fetch_orders",
    "ineligibility",
    "real_close_time",
    "unconsumed_profit_sql",
]
