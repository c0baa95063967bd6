"""What reconcile.charging.trades reads to judge a row: the rows themselves (:class:`TradeRow`,
with their account and a comparable symbol), their neighbours in the same account, the exchange
closes the sync bound, and the sync's stream cursors. Plain reads inside the caller's
transaction. The rules that use them are explained in docs/architecture.md.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple

from sqlalchemy import inspect, select
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.storage.db import Database
from reconcile.storage.schema import (
    binding,
    record_order_id,
    stream_cursor,
    trading_api_config,
    trading_order,
    trading_robot,
    verdict,
)
from reconcile.storage.streams import polled

#: (platform, account id, exchange order id or symbol key)
StreamKey = tuple[str, int, str]


@functools.lru_cache(maxsize=4096)  # a handful of symbols, thousands of rows per page
def symbol_key(symbol: str | None) -> str:
    """A symbol as every format names it: ``BTC_USDT``, ``BTC-USDT-SWAP``, ``BTC/USDT:USDT``."""
    text = (symbol or "").upper().split(":")[0]
    text = re.sub(r"[^A-Z0-9]", "", text)
    return text.removesuffix("SWAP")


class TradeRow(NamedTuple):  # a named tuple: a page builds thousands (rows and neighbours)
    id: int
    robot_id: int
    account: tuple[str, int]  # ("account", api_config_id), or ("robot", id) without one
    platform: str
    symbol: str  # symbol_key
    direction: str
    quantity: Decimal
    open_time: datetime
    close_time: datetime | None
    status: int | None
    exchange_order_id: str
    close_ids: tuple[str, ...]


async def read_layout(conn: AsyncConnection) -> tuple[tuple[str, ...], bool]:
    """The close-id columns this install has, and whether the daemon's own tables exist."""

    def read(sync_conn: Any) -> tuple[tuple[str, ...], bool]:
        live = inspect(sync_conn)
        names = {c["name"] for c in live.get_columns(trading_order.name)}
        close = tuple(n for n in ("close_order_id", "close_client_order_id") if n in names)
        own = (verdict, binding, record_order_id, stream_cursor)
        return close, all(live.has_table(t.name) for t in own)

    return await conn.run_sync(read)


async def read_rows(
    conn: AsyncConnection, where: Any, close_columns: tuple[str, ...]
) -> dict[int, TradeRow]:
    o, r, a = trading_order.c, trading_robot.c, trading_api_config.c
    columns = [
        o.id,
        o.robot_id,
        o.symbol,
        o.direction,
        o.quantity,
        o.open_time,
        o.close_time,
        o.status,
        o.exchange_order_id,
        r.api_config_id,
        a.platform,
        *(o[name] for name in close_columns),
    ]
    joined = trading_order.outerjoin(trading_robot, r.id == o.robot_id).outerjoin(
        trading_api_config, a.id == r.api_config_id
    )
    out: dict[int, TradeRow] = {}
    # positional unpacking, not attribute access: a page reads thousands of these rows
    for (
        id_,
        robot_id,
        symbol,
        direction,
        quantity,
        open_time,
        close_time,
        status,
        *rest,
    ) in await conn.execute(select(*columns).select_from(joined).where(where)):
        out[id_] = _trade_row(id_, robot_id, close_time, status, symbol, direction, quantity,
                              open_time, rest)  # fmt: skip
    return out


def page_columns(close_columns: tuple[str, ...]) -> list[Any]:
    """What :func:`read_rows` reads beyond the columns the charging transaction's locking read
    has already (id, robot_id, close_time, status), for that read to carry too (then the judge
    reads nothing of its own, :func:`page_row`). The account is read by scalar subqueries: a
    locking read does not lock a subquery's rows (MariaDB, PostgreSQL), as it would a join's."""
    o, r, a = trading_order.c, trading_robot.c, trading_api_config.c
    account = select(r.api_config_id).where(r.id == o.robot_id).scalar_subquery()
    platform = (
        select(a.platform)
        .select_from(trading_robot.join(trading_api_config, a.id == r.api_config_id))
        .where(r.id == o.robot_id)
        .scalar_subquery()
    )
    return [
        o.symbol,
        o.direction,
        o.quantity,
        o.open_time,
        o.exchange_order_id,
        account.label("trade_api_config_id"),
        platform.label("trade_platform"),
        *(o[name] for name in close_columns),
    ]


def page_row(
    id_: int, robot_id: int, close_time: datetime | None, status: int | None, extra: Sequence[Any]
) -> TradeRow:
    """The :class:`TradeRow` of a row read with :func:`page_columns` (``extra``: their values)."""
    symbol, direction, quantity, open_time, *rest = extra
    return _trade_row(
        id_, robot_id, close_time, status, symbol, direction, quantity, open_time, rest
    )


def _trade_row(
    id_: int,
    robot_id: int,
    close_time: datetime | None,
    status: int | None,
    symbol: str | None,
    direction: str | None,
    quantity: Decimal,
    open_time: datetime,
    rest: Sequence[Any],  # exchange_order_id, api_config_id, platform, the close-id columns
) -> TradeRow:
    exchange_order_id, api_config_id, platform, *closes = rest
    ids = tuple(str(c or "").strip() for c in closes)
    return TradeRow(
        id_,
        robot_id,
        ("account", int(api_config_id)) if api_config_id is not None else ("robot", int(robot_id)),
        (platform or "").lower(),
        symbol_key(symbol),
        (direction or "").lower(),
        quantity,
        open_time,
        close_time,
        status,
        (exchange_order_id or "").strip(),
        tuple(i for i in ids if i),
    )


async def read_neighbours(
    conn: AsyncConnection,
    rows: list[TradeRow],
    close_columns: tuple[str, ...],
    *,
    known: dict[int, TradeRow],
    tolerance: timedelta,
) -> list[TradeRow]:
    """The rows of the same accounts (every robot of each) that may be the trade of one of
    ``rows``: opened no later, closed no earlier than its open minus the tolerance; and the
    rows ``known`` already (the page's own: not read twice)."""
    accounts = {r.account[1] for r in rows if r.account[0] == "account"}
    robots = {r.robot_id for r in rows}
    if accounts:
        found = await conn.execute(
            select(trading_robot.c.id).where(trading_robot.c.api_config_id.in_(accounts))
        )
        robots |= {int(i) for (i,) in found}
    o = trading_order.c
    lowest = min(r.open_time for r in rows) - tolerance
    highest = max(r.open_time for r in rows)
    where = (
        o.robot_id.in_(sorted(robots))
        & (o.close_time >= lowest)
        & (o.open_time <= highest)
        & o.id.not_in(sorted(known))
    )
    return [*known.values(), *(await read_rows(conn, where, close_columns)).values()]


async def read_recorded_closes(conn: AsyncConnection, rows: list[TradeRow]) -> dict[StreamKey, int]:
    """(platform, account, exchange order id) -> the row the sync bound that close to."""
    refs = sorted({r.exchange_order_id for r in rows if r.exchange_order_id})
    if not refs:
        return {}
    ro, b = record_order_id.c, binding.c
    stmt = (
        select(ro.platform, ro.account_id, ro.exchange_order_id, b.order_id)
        .select_from(
            record_order_id.join(
                binding,
                (b.platform == ro.platform)
                & (b.account_id == ro.account_id)
                & (b.record_key == ro.record_key),
            )
        )
        .where(ro.exchange_order_id.in_(refs), b.kind == "order")
    )
    return {
        (p.lower(), int(acc), ref): int(order_id)
        for p, acc, ref, order_id in await conn.execute(stmt)
    }


async def read_bound(conn: AsyncConnection, ids: list[int]) -> set[int]:
    """Those of ``ids`` an exchange close is bound to (as its order)."""
    stmt = select(binding.c.order_id).where(binding.c.order_id.in_(ids), binding.c.kind == "order")
    return {int(i) for (i,) in await conn.execute(stmt)}


async def read_cursors(
    conn: AsyncConnection, db: Database, rows: list[TradeRow], *, running_status: int
) -> dict[StreamKey, tuple[datetime, datetime | None]]:
    """(platform, account, symbol) -> (complete_until in database time, updated_at)."""
    accounts = sorted({r.account[1] for r in rows if r.account[0] == "account"})
    if not accounts:
        return {}
    c = stream_cursor.c
    # a stream the sync no longer polls (a stopped robot): its last close is not waited for
    stmt = select(c.platform, c.account_id, c.symbol, c.complete_until, c.updated_at).where(
        c.account_id.in_(accounts), c.complete_until.is_not(None), polled(running_status)
    )
    out: dict[StreamKey, tuple[datetime, datetime | None]] = {}
    for platform, account_id, symbol, until, updated in await conn.execute(stmt):
        # cursors are kept in UTC; orders in database.timezone
        local = db.to_db_time(until.replace(tzinfo=UTC))
        out[(platform.lower(), int(account_id), symbol_key(symbol))] = (local, updated)
    return out


__all__ = [
    "StreamKey",
    "TradeRow",
    "page_columns",
    "page_row",
    "read_bound",
    "read_cursors",
    "read_layout",
    "read_neighbours",
    "read_recorded_closes",
    "read_rows",
    "symbol_key",
]
