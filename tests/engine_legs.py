"""hg_trading_order rows for a trade and for each of its closing orders, as upstream's engine writes
them (lilei800/toogo_v2 at d15f0de, ``server/internal/...``; docs/architecture.md "How upstream's
engine fills these tables").

One trade of the engine is one row (the opening order's id in ``exchange_order_id``, the closing
order's in ``close_order_id`` where add_missing_order_fields.sql ran) - and then one more row per
closing order: every pass of the order-status sync, ``SyncOrderHistoryToDB`` inserts each of the
account's last exchange orders whose id is no row's ``exchange_order_id`` (a closing order's never
is), and the position check closes that row ("leg") with the PnL of matching fills or a ticker
estimate. The same pass sets status 1 again on every row whose opening order is FILLED (a row's
status flips 2 -> 1 -> 2). :class:`EngineKit` plays these writers in that order; the exchange
orders and fills it reads are given as upstream's adapters parse them (:func:`binance_order`,
:func:`okx_order`, :func:`gate_order` and :class:`Fill`).

Upstream writes through GoFrame's ORM, whose models drop map keys that are no column of the live
table (``exchange``, ``client_order_id``, ``market_state``, ... and, on installs without
add_missing_order_fields.sql, ``close_order_id``): so does the kit. Times are the Go process's
clock in its zone (``TZ=Asia/Shanghai``), whole seconds (``gtime.NewFromTimeStamp(ms / 1000)``).
Go's float64 lands in DECIMAL(15,4) columns rounded to 4 places.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import Column, MetaData, Numeric, SmallInteger, inspect, select
from sqlalchemy.ext.asyncio import AsyncConnection

from kits.seed import engine_order_sn
from reconcile.storage.db import Database
from reconcile.storage.schema import trading_order

PENDING, OPEN, CLOSED = 0, 1, 2  # order_status.go 26-28
SYNC_REASON = "手动平仓(同步检测)"  # order_status_sync.go 1168
PNL_EPS = Decimal("1e-8")  # order_status_sync.go 1839

#: hg_trading_order with the columns upstream's writers name beyond the daemon's declaration
_md = MetaData()
ORDER = trading_order.to_metadata(_md)
for _name, _type in (
    ("highest_profit", Numeric(15, 4)),
    ("profit_retreat_started", SmallInteger()),
    ("avg_price", Numeric(15, 4)),
    ("filled_qty", Numeric(15, 8)),
    ("price", Numeric(15, 4)),
    ("mark_price", Numeric(15, 4)),
):
    ORDER.append_column(Column(_name, _type))


def money(value: Decimal) -> Decimal:
    """A Go float64 stored in DECIMAL(15,4)."""
    return value.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)


def at_ms(ms: int) -> datetime:
    """``gtime.NewFromTimeStamp(ms / 1000)``: whole seconds."""
    return datetime.fromtimestamp(ms // 1000, UTC)


def ms_of(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True)
class ExchangeOrder:
    """``exchange.Order`` as an adapter's GetOrderHistory fills it (exchange.go)."""

    order_id: str
    side: str  # BUY / SELL
    position_side: str  # BOTH (binance one-way), NET (okx one-way), LONG / SHORT, "" (gate single)
    avg_price: Decimal
    filled_qty: Decimal
    create_ms: int
    type: str = "MARKET"
    status: str = "FILLED"
    client_id: str = ""
    symbol: str = "BTCUSDT"


@dataclass(frozen=True)
class Fill:
    """``exchange.Trade`` as an adapter's GetTradeHistory fills it (one fill)."""

    order_id: str
    side: str
    position_side: str
    price: Decimal
    qty: Decimal
    realized_pnl: Decimal
    time_ms: int


def binance_order(
    order_id: str, side: str, position_side: str, avg: Decimal, qty: Decimal, create_ms: int
) -> ExchangeOrder:
    """binance.go 657-694: ``/fapi/v1/allOrders`` - positionSide BOTH in one-way mode, LONG/SHORT
    in hedge mode; avgPrice and executedQty set; type MARKET."""
    return ExchangeOrder(order_id, side, position_side, avg, qty, create_ms)


def okx_order(order_id: str, side: str, pos_side: str, create_ms: int) -> ExchangeOrder:
    """okx.go 691-720: ``/api/v5/trade/orders-history`` - PositionSide = upper(posSide) (NET in
    one-way mode), Type = upper(ordType); AvgPrice and FilledQty are **not** set (0), status
    "filled"."""
    return ExchangeOrder(
        order_id, side, pos_side.upper(), Decimal(0), Decimal(0), create_ms, status="filled"
    )


def gate_order(
    order_id: str,
    size_contracts: int,
    pos_side: str,
    fill_price: Decimal,
    multiplier: Decimal,
    create_ms: int,
) -> ExchangeOrder:
    """gate.go 887-953: ``/futures/usdt/orders?status=finished`` - Side from the sign of size,
    PositionSide LONG/SHORT from pos_side (dual mode) else "", AvgPrice = fill_price, FilledQty
    = contracts × quanto_multiplier, CreateTime = create_time × 1000, status "finished"."""
    side = "SELL" if size_contracts < 0 else "BUY"
    qty = abs(size_contracts) * multiplier
    return ExchangeOrder(
        order_id,
        side,
        pos_side.upper(),
        fill_price,
        qty,
        create_ms // 1000 * 1000,
        status="finished",
    )


def history_direction(order: ExchangeOrder) -> str:
    """robot.go 1171-1177: short when PositionSide is SHORT, else short for a SELL, else long."""
    if order.position_side == "SHORT":
        return "short"
    if order.side == "SELL":
        return "short"
    return "long"


def history_status(order: ExchangeOrder) -> int:
    """robot.go 1179-1198: CANCELED -> 3; FILLED/CLOSED -> 2 only for a type naming a close
    (平仓 / close), else 1 - binance's MARKET/LIMIT never does."""
    status = order.status.strip().upper()
    kind = order.type.strip().lower()
    is_close = "平仓" in order.type or "close" in kind
    is_open = "开仓" in order.type or "open" in kind
    if status in ("CANCELED", "CANCELLED"):
        return 3
    if status in ("FILLED", "CLOSED") and is_close and not is_open:
        return CLOSED
    return OPEN


@dataclass(frozen=True)
class CloseInfo:
    price: Decimal
    pnl: Decimal
    order_id: str
    ts_ms: int


def close_info_from_trades(
    fills: Sequence[Fill], position_side: str, open_ms: int | None
) -> CloseInfo | None:
    """order_status_sync.go 40-140 (``tryCloseInfoFromTradeHistory``): the fills since the open
    time on that position side (a fill without one passes) and on its closing side (SELL for
    LONG, BUY for SHORT); the newest one's orderId; the sum of that order's fills."""
    close_side = "BUY" if position_side.upper() == "SHORT" else "SELL"
    start = open_ms or 0
    candidates = [
        f
        for f in fills
        if not (start > 0 and f.time_ms > 0 and f.time_ms < start)
        and not (f.position_side and f.position_side.upper() != position_side.upper())
        and not (f.side and f.side.upper() != close_side)
    ]
    if not candidates:
        return None
    latest = candidates[0]
    for f in candidates[1:]:
        if f.time_ms > latest.time_ms:
            latest = f
    target = latest.order_id
    mine = [f for f in candidates if not target or f.order_id == target]
    qty = sum((f.qty for f in mine if f.qty > 0 and f.price > 0), Decimal(0))
    notional = sum((f.price * f.qty for f in mine if f.qty > 0 and f.price > 0), Decimal(0))
    price = notional / qty if qty > 0 else latest.price
    pnl = sum((f.realized_pnl for f in mine), Decimal(0))
    return CloseInfo(price, pnl, target, max(f.time_ms for f in mine))


def agg_by_order_id(fills: Sequence[Fill], order_id: str) -> CloseInfo | None:
    """robot_engine.go 2663-2676 (``tryAggFromTradeHistoryByOrderID``): the fills of the
    closing order the engine placed, summed."""
    mine = [f for f in fills if f.order_id == order_id]
    if not mine:
        return None
    qty = sum((f.qty for f in mine), Decimal(0))
    price = sum((f.price * f.qty for f in mine), Decimal(0)) / qty
    pnl = sum((f.realized_pnl for f in mine), Decimal(0))
    return CloseInfo(price, pnl, order_id, max(f.time_ms for f in mine))


class EngineKit:
    """One robot's writers of hg_trading_order, on ``db`` (whose zone is the engine's)."""

    def __init__(
        self,
        db: Database,
        *,
        user_id: int = 7,
        robot_id: int = 100,
        tenant_id: int = 3,
        symbol: str = "BTCUSDT",
        leverage: int = 10,
    ) -> None:
        self.db = db
        self.user_id = user_id
        self.robot_id = robot_id
        self.tenant_id = tenant_id
        self.symbol = symbol
        self.leverage = leverage
        self._columns: frozenset[str] | None = None

    # -- plumbing --------------------------------------------------------------------------------

    def local(self, moment: datetime) -> datetime:
        """The Go process's clock (``gtime``) as it lands in a DATETIME: its zone, seconds."""
        return self.db.to_db_time(moment.replace(microsecond=0))

    async def columns(self) -> frozenset[str]:
        if self._columns is None:

            async def read(conn: AsyncConnection) -> frozenset[str]:
                def names(sync_conn: Any) -> frozenset[str]:
                    return frozenset(c["name"] for c in inspect(sync_conn).get_columns(ORDER.name))

                return await conn.run_sync(names)

            self._columns = await self.db.transaction(read, what="engine reads its table")
        return self._columns

    async def _filtered(self, data: dict[str, Any]) -> dict[str, Any]:
        """GoFrame's model: keys that are no column of the live table are dropped; Go zero
        values are written as such (never NULL: PostgreSQL's DDL has NOT NULL DEFAULT '')."""
        live = await self.columns()
        return {k: v for k, v in data.items() if k in live and k in ORDER.c and v is not None}

    async def _insert(self, data: dict[str, Any]) -> int:
        values = await self._filtered(data)

        async def ins(conn: AsyncConnection) -> int:
            result = await conn.execute(ORDER.insert().values(**values))
            return int(result.inserted_primary_key[0])  # type: ignore[index]

        return await self.db.transaction(ins, what="engine inserts an order")

    async def _update(self, order_id: int, data: dict[str, Any]) -> None:
        values = await self._filtered(data)

        async def upd(conn: AsyncConnection) -> None:
            await conn.execute(ORDER.update().where(ORDER.c.id == order_id).values(**values))

        await self.db.transaction(upd, what="engine updates an order")

    async def row(self, order_id: int) -> Any:
        live = await self.columns()
        cols = [c for c in ORDER.columns if c.name in live]

        async def read(conn: AsyncConnection) -> Any:
            return (await conn.execute(select(*cols).where(ORDER.c.id == order_id))).one()

        return await self.db.transaction(read, what="engine reads an order")

    async def robot_rows(self, status: int | None = None) -> list[Any]:
        live = await self.columns()
        cols = [c for c in ORDER.columns if c.name in live]

        async def read(conn: AsyncConnection) -> list[Any]:
            stmt = select(*cols).where(ORDER.c.robot_id == self.robot_id)
            if status is not None:
                stmt = stmt.where(ORDER.c.status == status)
            return list(await conn.execute(stmt.order_by(ORDER.c.id)))

        return await self.db.transaction(read, what="engine reads its orders")

    # -- the engine's own trade ------------------------------------------------------------------

    async def open_trade(self, opening: ExchangeOrder, direction: str, *, now: datetime) -> int:
        """robot_engine.go 7024-7202 (``preCreateOrder``): a PENDING row, ``exchange_order_id``
        "", order_sn TO…, margin = qty × price ÷ leverage; then robot_engine.go 7206-7250
        (``updateOrderStatus``) once the exchange filled the opening order: status 1, its id in
        ``exchange_order_id``, its average price as open price, its time as open_time and
        created_at."""
        clock = self.local(now)
        qty, price = opening.filled_qty, opening.avg_price
        order_id = await self._insert(
            {
                "tenant_id": self.tenant_id,
                "user_id": self.user_id,
                "robot_id": self.robot_id,
                "exchange": None,  # filtered: no such column
                "symbol": self.symbol,
                "order_sn": engine_order_sn(clock),
                "exchange_order_id": "",
                "direction": direction,
                "quantity": qty,
                "price": price,
                "avg_price": price,
                "open_price": price,
                "mark_price": Decimal(0),
                "open_time": clock,
                "margin": money(qty * price / self.leverage),
                "open_fee": Decimal(0),
                "leverage": self.leverage,
                "status": PENDING,
                "created_at": clock,
                "updated_at": clock,
            }
        )
        opened = self.local(at_ms(opening.create_ms))
        await self._update(
            order_id,
            {
                "status": OPEN,
                "updated_at": clock,
                "highest_profit": Decimal(0),
                "exchange_order_id": opening.order_id,
                "avg_price": price,
                "open_price": price,
                "filled_qty": qty,
                "open_time": opened,
                "created_at": opened,
            },
        )
        return order_id

    async def close_trade(
        self,
        order_id: int,
        closing: ExchangeOrder,
        fills: Sequence[Fill],
        *,
        close_type: str = "take_profit",
        now: datetime,
    ) -> None:
        """robot_engine.go 2607-2748 (``updateOrderStatusAfterClose``): the closing order's own
        fills summed (price, realized PnL, newest fill time), handed to ``CloseOrder`` with the
        closing order: ``close_order_id`` = its id, close_time = its newest fill."""
        agg = agg_by_order_id(fills, closing.order_id)
        assert agg is not None, f"no fill of closing order {closing.order_id}"
        await self.close_order(
            order_id,
            agg.price,
            agg.pnl,
            close_type,
            close_order_id=closing.order_id,
            close_client_order_id=closing.client_id,
            ts_ms=agg.ts_ms,
            now=now,
        )

    async def close_order(
        self,
        order_id: int,
        close_price: Decimal,
        realized: Decimal,
        reason: str,
        *,
        close_order_id: str | None = None,
        close_client_order_id: str = "",
        ts_ms: int | None = None,
        now: datetime,
    ) -> None:
        """order_status_sync.go 1834-1960 (``CloseOrder``): only what is missing is written -
        status 2; close time = the close order's time, else now (and updated_at the same);
        close_price if 0; close_time if missing or a 2006 placeholder; realized_profit only while
        the stored one is below 1e-8; hold_duration if 0; close_reason if empty; close_order_id /
        close_client_order_id if empty (where the columns exist); a sync/check reason also
        zeroes profit_retreat_started and highest_profit."""
        current = await self.row(order_id)
        close_time = self.local(at_ms(ts_ms) if ts_ms else now)
        data: dict[str, Any] = {"updated_at": close_time}
        if current.status != CLOSED:
            data["status"] = CLOSED
        if any(word in reason for word in ("同步", "对账", "检测")):
            data["profit_retreat_started"] = 0
            data["highest_profit"] = Decimal(0)
        if not current.close_price and close_price > 0:
            data["close_price"] = money(close_price)
        if current.close_time is None or current.close_time.year == 2006:
            data["close_time"] = close_time
        stored = current.realized_profit or Decimal(0)
        if abs(stored) < PNL_EPS and abs(realized) >= PNL_EPS:
            data["realized_profit"] = money(realized)
        hold = int((close_time - current.open_time).total_seconds()) if current.open_time else 0
        if not current.hold_duration and hold > 0:
            data["hold_duration"] = hold
        if not current.close_reason and reason:
            data["close_reason"] = reason
        if close_order_id is not None:  # closeOrder != nil
            if close_order_id and not getattr(current, "close_order_id", None):
                data["close_order_id"] = close_order_id
            if close_client_order_id and not getattr(current, "close_client_order_id", None):
                data["close_client_order_id"] = close_client_order_id
        await self._update(order_id, data)

    # -- the order-status sync's pass --------------------------------------------------------------

    async def sync_order_history(
        self, orders: Sequence[ExchangeOrder], *, now: datetime
    ) -> list[int]:
        """robot.go 1110-1286 (``SyncOrderHistoryToDB``, every >= 120 s per running robot with an
        open order: order_status_sync.go 860-883). Each order whose id is a row's
        ``exchange_order_id`` (the robot's last 1000 rows): status from its exchange status (1
        for a filled MARKET order), open_price, quantity and updated_at = now. Any other order -
        a closing order, whose id is only ever in ``close_order_id`` - is inserted as a new row:
        direction short for PositionSide SHORT or a SELL, else long; open price / quantity =
        the order's average price / filled quantity; open_time = created_at = the order's
        time; order_sn TO + that time + 6 random; no leverage or margin (0: PostgreSQL's DDL
        defaults them so; MySQL's non-strict mode writes the same). Returns the new rows' ids."""
        clock = self.local(now)
        rows = await self.robot_rows()
        rows = sorted(rows, key=lambda r: (r.created_at, r.id), reverse=True)[:1000]
        existing = {r.exchange_order_id: r for r in rows if r.exchange_order_id}
        inserted: list[int] = []
        for order in orders:
            exchange_id = order.order_id.strip() or order.client_id.strip()
            if not exchange_id:
                continue
            status = history_status(order)
            found = existing.get(exchange_id)
            if found is not None:
                data: dict[str, Any] = {"updated_at": clock, "client_order_id": None}
                if order.avg_price > 0:
                    data["open_price"] = money(order.avg_price)
                if order.filled_qty > 0:
                    data["quantity"] = order.filled_qty
                if order.status:
                    data["status"] = status
                if order.create_ms > 0 and (
                    found.open_time is None or found.open_time.year == 2006
                ):
                    data["open_time"] = self.local(at_ms(order.create_ms))
                await self._update(found.id, data)
                continue
            opened = self.local(at_ms(order.create_ms)) if order.create_ms > 0 else clock
            inserted.append(
                await self._insert(
                    {
                        "tenant_id": self.tenant_id,  # GoFrame's tenant hook; PG defaults 0
                        "user_id": self.user_id,
                        "robot_id": self.robot_id,
                        "symbol": order.symbol,
                        "order_sn": engine_order_sn(opened),
                        "exchange_order_id": exchange_id,
                        "direction": history_direction(order),
                        "open_price": money(order.avg_price),
                        "quantity": order.filled_qty,
                        "leverage": 0,
                        "margin": Decimal(0),
                        "status": status,
                        "open_time": opened,
                        "created_at": opened,
                        "updated_at": clock,
                    }
                )
            )
        return inserted

    async def position_check(
        self,
        *,
        positions: frozenset[str] = frozenset(),
        fills: Sequence[Fill],
        ticker: Decimal | None,
        now: datetime,
    ) -> dict[int, CloseInfo | None]:
        """order_status_sync.go 960-1168 (``syncPositionsWithCache``) over the robot's open
        rows. A row with a real close time (one the order-history sync set back to 1) is
        closed again in one batch: status 2, updated_at = now (1070-1108). Every other open row
        whose side (LONG for long, SHORT for short) has no exchange position is closed as
        ``手动平仓(同步检测)`` (1111-1168) with the fills' close info
        (``close_info_from_trades`` from its open time) - or, with none, the ticker estimate
        (ticker − open) × qty for a long, (open − ticker) × qty for a short (close_price = the
        ticker; no close order, so close_time = now). Returns, per row closed by the position
        logic, the fill info used (None: the ticker)."""
        used: dict[int, CloseInfo | None] = {}
        rows = await self.robot_rows(status=OPEN)
        stale = [r.id for r in rows if r.close_time is not None and r.close_time.year != 2006]
        if stale:
            clock = self.local(now)

            async def fix(conn: AsyncConnection) -> None:
                await conn.execute(
                    ORDER.update()
                    .where(ORDER.c.robot_id == self.robot_id, ORDER.c.id.in_(stale))
                    .where(ORDER.c.status.in_([PENDING, OPEN]))
                    .values(status=CLOSED, updated_at=clock)
                )

            await self.db.transaction(fix, what="engine re-closes inconsistent orders")
        for row in rows:
            if row.id in stale:
                continue
            side = "LONG" if row.direction == "long" else "SHORT"
            if side in positions:
                continue
            opened = ms_of(self.db.from_db_time(row.open_time)) if row.open_time else None
            info = close_info_from_trades(fills, side, opened)
            used[row.id] = info
            if info is not None:
                await self.close_order(
                    row.id,
                    info.price,
                    info.pnl,
                    SYNC_REASON,
                    close_order_id=info.order_id,
                    ts_ms=info.ts_ms,
                    now=now,
                )
                continue
            price = ticker if ticker is not None else row.open_price
            if row.direction == "long":
                pnl = (price - row.open_price) * row.quantity
            else:
                pnl = (row.open_price - price) * row.quantity
            await self.close_order(row.id, price, pnl, SYNC_REASON, now=now)
        return used

    async def sync_pass(
        self,
        orders: Sequence[ExchangeOrder],
        fills: Sequence[Fill],
        *,
        ticker: Decimal | None,
        now: datetime,
        positions: frozenset[str] = frozenset(),
    ) -> list[int]:
        """One pass of order_status_sync.go 860-890 for the robot: the order-history sync, then
        the position check. Returns the rows the history sync inserted (the legs)."""
        legs = await self.sync_order_history(orders, now=now)
        await self.position_check(positions=positions, fills=fills, ticker=ticker, now=now)
        return legs


def order_id_counter(start: int) -> Any:
    """Exchange order ids as the exchanges number them (numeric strings), unique per test."""
    base = start + random.randint(0, 10**6) * 1000
    n = 0

    def next_id() -> str:
        nonlocal n
        n += 1
        return str(base + n)

    return next_id
