"""The demo's database: who and what ``toogo-reconcile demo`` seeds, and the few reads and
writes its story needs.

The story (``daemon/demo.py`` tells it) in data: three users with wallets, an API account each,
five robots (one stopped), and :data:`TRADES` - each a local order in ``hg_trading_order``
and/or a record the "exchanges" report. Everything here writes only to a demo database that
the caller has just recreated (:func:`recreate_schema`).
See docs/demo.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.charging import ledger
from reconcile.charging.orders import STATUS_CLOSED, STATUS_OPEN
from reconcile.storage.db import Database
from reconcile.storage.schema import (
    create_hotgo_schema,
    create_own_schema,
    metadata,
    own_metadata,
    toogo_config,
    toogo_user,
    trading_api_config,
    trading_order,
    trading_robot,
    wallet,
)

GIFT_POWER = Decimal("5")


@dataclass(frozen=True)
class DemoUser:
    id: int
    power: Decimal
    vip_level: int = 1
    discount: Decimal = Decimal(0)  # percent off the charge


@dataclass(frozen=True)
class DemoAccount:
    id: int
    user_id: int
    platform: str
    passphrase: str | None = None


@dataclass(frozen=True)
class DemoRobot:
    id: int
    user_id: int
    account_id: int
    symbol: str
    running: bool = True


@dataclass(frozen=True)
class Trade:
    """A position: a local order (``order`` set) and/or an exchange record (``record_key`` set)."""

    robot_id: int
    direction: Literal["long", "short"]
    net: Decimal
    opened_ago: timedelta
    closed_ago: timedelta
    note: str
    order: int | None = None  # the demo's order number (1..), None: not in hg_trading_order
    local_status: int = STATUS_CLOSED
    realtime: bool = False  # charged by the engine at close
    lost_flag: bool = False  # ...whose power_consumed update was then lost
    record_key: str | None = None
    skew: timedelta = timedelta(seconds=2)  # the exchange's close time vs the engine's


USERS = (
    DemoUser(1001, Decimal("100")),
    DemoUser(1002, Decimal("50"), vip_level=3, discount=Decimal("20")),
    DemoUser(1003, Decimal("20")),
)
ACCOUNTS = (
    DemoAccount(11, 1001, "binance"),
    DemoAccount(12, 1002, "okx", passphrase="demo-okx-passphrase"),  # noqa: S106
    DemoAccount(13, 1003, "bybit"),
)
ROBOTS = (
    DemoRobot(101, 1001, 11, "BTCUSDT"),
    DemoRobot(102, 1001, 11, "ETHUSDT"),
    DemoRobot(103, 1002, 12, "BTC_USDT"),
    DemoRobot(104, 1003, 13, "SOLUSDT"),
    DemoRobot(105, 1003, 13, "DOGEUSDT", running=False),
)
H, M, S = timedelta(hours=1), timedelta(minutes=1), timedelta(seconds=1)
TRADES = (
    Trade(
        101,
        "long",
        Decimal("25"),
        3 * H,
        2 * H,
        "closed and charged by the engine at close",
        order=1,
        realtime=True,
        record_key="8389765511",
    ),
    Trade(
        102,
        "short",
        Decimal("7.92"),
        150 * M,
        90 * M,
        "charged by the engine, but its power_consumed update was lost",
        order=2,
        realtime=True,
        lost_flag=True,
        record_key="8389765512",
        skew=1 * S,
    ),
    Trade(
        103,
        "long",
        Decimal("12.5"),
        5 * H,
        50 * M,
        "still open locally; the exchange says it closed",
        order=3,
        local_status=STATUS_OPEN,
        record_key="681423155054862336:1778986400000",
    ),
    Trade(
        104,
        "long",
        Decimal("3.3"),
        2 * H,
        75 * M,
        "closed by the engine, but ConsumePower never ran",
        order=4,
        record_key="ord-5f1c2a",
        skew=3 * S,
    ),
    Trade(
        101,
        "short",
        Decimal("-4.2"),
        1 * H,
        40 * M,
        "a loss: nothing to charge",
        order=5,
        record_key="8389765513",
        skew=1 * S,
    ),
    Trade(
        104,
        "short",
        Decimal("6"),
        1 * H,
        20 * M,
        "closed by hand on the exchange: not in hg_trading_order",
        record_key="ord-7e9d04",
    ),
    Trade(
        105,
        "long",
        Decimal("2"),
        2 * H,
        30 * M,
        "robot 105 is stopped: not polled",
        record_key="ord-9a3b17",
    ),
)
FEE = Decimal("-0.2")
MARKETS = {  # base -> (open price, size)
    "BTC": (Decimal("60000"), Decimal("0.01")),
    "ETH": (Decimal("3000"), Decimal("0.1")),
    "SOL": (Decimal("150"), Decimal("1")),
    "DOGE": (Decimal("0.15"), Decimal("1000")),
}


def robot(robot_id: int) -> DemoRobot:
    return next(r for r in ROBOTS if r.id == robot_id)


def account(account_id: int) -> DemoAccount:
    return next(a for a in ACCOUNTS if a.id == account_id)


def prices(trade: Trade) -> tuple[Decimal, Decimal, Decimal]:
    """(size, open price, close price) giving the trade's gross profit."""
    base = robot(trade.robot_id).symbol.replace("_", "").removesuffix("USDT")
    open_price, size = MARKETS[base]
    move = (trade.net - FEE) / size
    close = open_price + move if trade.direction == "long" else open_price - move
    return size, open_price, close


async def recreate_schema(db: Database) -> None:
    """hotgo's and the daemon's tables, empty (on a server, dropped first)."""

    async def ddl(conn: AsyncConnection) -> None:
        if db.dialect.concurrent:
            await conn.run_sync(own_metadata.drop_all)
            await conn.run_sync(metadata.drop_all)
        await create_hotgo_schema(conn, with_unique_key=True)
        await create_own_schema(conn)

    await db.transaction(ddl, what="create the demo schema")


async def seed_wallets(
    conn: AsyncConnection, balances: Mapping[int, Decimal], created: datetime
) -> None:
    """One wallet per user with its starting power (and a little gift power, never touched)."""
    await ledger.open_with_balances(conn, balances, gift=GIFT_POWER, now=created)


async def seed(db: Database, *, running_status: int, now: datetime) -> dict[int, int]:
    """Config, users, wallets, accounts, robots and local orders, times relative to ``now``;
    returns order number -> order id. ``running_status`` is ``hg_trading_robot.status`` for a
    running robot (``robots.running_status``)."""
    stopped = 4 if running_status != 4 else 3
    created = db.now()

    async def write(conn: AsyncConnection) -> dict[int, int]:
        await conn.execute(
            toogo_config.insert(),
            [
                {"group": "power", "key": "consume_rate", "value": "0.10", "name": "rate"},
                {"group": "power", "key": "min_consume", "value": "0.01", "name": "minimum"},
            ],
        )
        for user in USERS:
            await conn.execute(
                toogo_user.insert().values(
                    member_id=user.id,
                    vip_level=user.vip_level,
                    power_discount=user.discount,
                    invite_code=f"DEMO{user.id:04d}",
                    created_at=created,
                )
            )
        await seed_wallets(conn, {user.id: user.power for user in USERS}, created)
        for acct in ACCOUNTS:
            await conn.execute(
                trading_api_config.insert().values(
                    id=acct.id,
                    user_id=acct.user_id,
                    api_name=f"demo {acct.platform}",
                    platform=acct.platform,
                    base_url="",
                    api_key=f"demo-{acct.platform}-key",
                    secret_key=f"demo-{acct.platform}-secret",
                    passphrase=acct.passphrase,
                    status=1,
                    created_at=created,
                )
            )
        for bot in ROBOTS:
            await conn.execute(
                trading_robot.insert().values(
                    id=bot.id,
                    tenant_id=1,
                    user_id=bot.user_id,
                    api_config_id=bot.account_id,
                    robot_name=f"demo {bot.symbol}",
                    exchange=account(bot.account_id).platform,
                    symbol=bot.symbol,
                    leverage=10,
                    status=running_status if bot.running else stopped,
                    created_at=created,
                )
            )
        ids: dict[int, int] = {}
        for trade in TRADES:
            if trade.order is not None:
                ids[trade.order] = await _insert_order(conn, db, trade, trade.order, now)
        return ids

    return await db.transaction(write, what="seed the demo")


async def _insert_order(
    conn: AsyncConnection, db: Database, trade: Trade, number: int, now: datetime
) -> int:
    bot = robot(trade.robot_id)
    size, open_price, close_price = prices(trade)
    opened = db.to_db_time(now - trade.opened_ago)
    closed = db.to_db_time(now - trade.closed_ago)
    is_open = trade.local_status == STATUS_OPEN
    result = await conn.execute(
        trading_order.insert().values(
            tenant_id=1,
            user_id=bot.user_id,
            robot_id=bot.id,
            order_sn=f"TO{opened:%Y%m%d%H%M%S}DEMO{number:02d}",
            exchange_order_id=f"{10**17 + number}",
            symbol=bot.symbol,
            direction=trade.direction,
            open_price=open_price,
            close_price=None if is_open else close_price,
            quantity=size,
            leverage=10,
            margin=Decimal("100"),
            realized_profit=Decimal(0) if is_open else trade.net,
            open_time=opened,
            close_time=None if is_open else closed,
            hold_duration=0 if is_open else int((closed - opened).total_seconds()),
            status=trade.local_status,
            close_reason=None if is_open else "take_profit",
            created_at=opened,
            updated_at=opened if is_open else closed,
        )
    )
    return int(result.inserted_primary_key[0])  # type: ignore[index]


@dataclass(frozen=True)
class OrderRow:
    id: int
    user_id: int
    robot_id: int
    symbol: str
    direction: str
    status: int
    realized_profit: Decimal
    power_consumed: int
    power_amount: Decimal
    close_reason: str | None


@dataclass(frozen=True)
class State:
    balances: dict[int, Decimal]  # user id -> power
    orders: Sequence[OrderRow]  # id order


async def read_state(db: Database) -> State:
    """Balances by user, and the orders."""
    o = trading_order.c
    orders = select(
        o.id,
        o.user_id,
        o.robot_id,
        o.symbol,
        o.direction,
        o.status,
        o.realized_profit,
        o.power_consumed,
        o.power_amount,
        o.close_reason,
    ).order_by(o.id)

    async def read(conn: AsyncConnection) -> State:
        rows = await conn.execute(select(wallet.c.user_id, wallet.c.power))
        balances = {r.user_id: r.power for r in rows}
        return State(balances, [OrderRow(**row._mapping) for row in await conn.execute(orders)])

    return await db.transaction(read, what="read the demo's state")


async def lose_flags(db: Database, order_ids: Sequence[int]) -> None:
    """What the old code's failed UPDATE left: a consume row and no flag."""
    lose = (
        update(trading_order)
        .where(trading_order.c.id.in_(order_ids))
        .values(power_consumed=0, power_amount=Decimal(0))
    )

    async def run(conn: AsyncConnection) -> None:
        await conn.execute(lose)

    await db.transaction(run, what="lose the flag updates")
