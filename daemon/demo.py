"""``toogo-reconcile demo``: the whole cycle on a fresh demo database, explained as it runs.

The story (times relative to now): the engine's realtime path charges two orders at close and
loses the ``power_consumed`` update of one (the old double-charge bug); the history sync reads
what the "exchanges" (a replay file written for this run) say closed - it matches the engine's
orders, closes an order still open locally, inserts a position closed by hand on the exchange,
charging both, and ignores a stopped robot; the compensation sweep charges an order that was
never charged and logs ``skip duplicate`` for the one whose flag was lost, repairing it.

The demo database is the configured ``database.url`` or ``--db``: a SQLite file is deleted and
recreated; a MySQL database only with ``force`` (hotgo's and the daemon's tables are dropped and
recreated). The bundled ``demo/closed_positions.jsonl`` is ``replay_records(BUNDLED_AT)``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from daemon.config import Config
from daemon.exchanges_config import ExchangesConfig
from daemon.runtime import Core, open_core, open_history_sync
from reconcile.audit import AuditReport
from reconcile.audit import audit as run_audit
from reconcile.consumer import Source
from reconcile.db import Database
from reconcile.errors import ConfigError
from reconcile.orders import STATUS_CLOSED, STATUS_OPEN
from reconcile.schema import (
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
from reconcile.sweep import sweep as run_sweep
from reconcile.upsert import CLOSE_REASON

BUNDLED_AT = datetime(2026, 5, 17, 6, 40, tzinfo=UTC)  # "now" of demo/closed_positions.jsonl
SQLITE_HEADER = b"SQLite format 3\x00"

Out = Callable[[str], None]


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
    Trade(101, "long", Decimal("25"), 3 * H, 2 * H, "closed and charged by the engine at close",
          order=1, realtime=True, record_key="8389765511"),
    Trade(102, "short", Decimal("7.92"), 150 * M, 90 * M,
          "charged by the engine, but its power_consumed update was lost",
          order=2, realtime=True, lost_flag=True, record_key="8389765512", skew=1 * S),
    Trade(103, "long", Decimal("12.5"), 5 * H, 50 * M,
          "still open locally; the exchange says it closed", order=3, local_status=STATUS_OPEN,
          record_key="681423155054862336:1778986400000"),
    Trade(104, "long", Decimal("3.3"), 2 * H, 75 * M,
          "closed by the engine, but ConsumePower never ran", order=4,
          record_key="ord-5f1c2a", skew=3 * S),
    Trade(101, "short", Decimal("-4.2"), 1 * H, 40 * M, "a loss: nothing to charge", order=5,
          record_key="8389765513", skew=1 * S),
    Trade(104, "short", Decimal("6"), 1 * H, 20 * M,
          "closed by hand on the exchange: not in hg_trading_order", record_key="ord-7e9d04"),
    Trade(105, "long", Decimal("2"), 2 * H, 30 * M, "robot 105 is stopped: not polled",
          record_key="ord-9a3b17"),
)  # fmt: skip
_FEE = Decimal("-0.2")
_MARKETS = {  # base -> (open price, size)
    "BTC": (Decimal("60000"), Decimal("0.01")),
    "ETH": (Decimal("3000"), Decimal("0.1")),
    "SOL": (Decimal("150"), Decimal("1")),
    "DOGE": (Decimal("0.15"), Decimal("1000")),
}


def _robot(robot_id: int) -> DemoRobot:
    return next(r for r in ROBOTS if r.id == robot_id)


def _account(account_id: int) -> DemoAccount:
    return next(a for a in ACCOUNTS if a.id == account_id)


def _prices(trade: Trade) -> tuple[Decimal, Decimal, Decimal]:
    """(size, open price, close price) giving the trade's gross profit."""
    base = _robot(trade.robot_id).symbol.replace("_", "").removesuffix("USDT")
    open_price, size = _MARKETS[base]
    move = (trade.net - _FEE) / size
    close = open_price + move if trade.direction == "long" else open_price - move
    return size, open_price, close


def replay_records(now: datetime) -> list[dict[str, Any]]:
    """The exchanges' side of the story as replay records, close times relative to ``now``."""
    records: list[dict[str, Any]] = []
    for trade in TRADES:
        if trade.record_key is None:
            continue
        robot = _robot(trade.robot_id)
        size, open_price, close_price = _prices(trade)
        closed = now - trade.closed_ago + trade.skew
        records.append(
            {
                "platform": _account(robot.account_id).platform,
                "account_id": robot.account_id,
                "symbol": robot.symbol,
                "direction": trade.direction,
                "size": str(size),
                "open_price": str(open_price),
                "close_price": str(close_price),
                "gross_pnl": str(trade.net - _FEE),
                "fee": str(_FEE),
                "funding": "0",
                "net_profit": str(trade.net),
                "open_time": _iso(now - trade.opened_ago),
                "close_time": _iso(closed),
                "record_key": trade.record_key,
            }
        )
    return records


def write_replay(path: Path, now: datetime) -> Path:
    lines = (json.dumps(r, separators=(",", ":")) + "\n" for r in replay_records(now))
    path.write_text("".join(lines), encoding="utf-8")
    return path


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# -- the target database ------------------------------------------------------------------------


def demo_url(target: str | None, configured: str) -> str:
    """``--db``: a database URL, or a path meaning a SQLite file; default the configured URL."""
    if target is None:
        return configured
    if "://" in target:
        if not target.startswith(("sqlite+aiosqlite://", "mysql+aiomysql://", "mariadb+aiomysql")):
            raise ConfigError("--db: use a file path, sqlite+aiosqlite:// or mysql+aiomysql://")
        return target
    return f"sqlite+aiosqlite:///{Path(target).expanduser().absolute()}"


def describe(url: str) -> str:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"sqlite {_sqlite_path(url) or ':memory:'}"
    return f"mysql {parsed.host}:{parsed.port or 3306}/{parsed.database}"


def _sqlite_path(url: str) -> Path | None:
    database = make_url(url).database
    if not database or database == ":memory:":
        return None
    return Path(database).absolute()


def is_mysql(url: str) -> bool:
    return make_url(url).get_backend_name() != "sqlite"


def reset_sqlite(url: str) -> None:
    """Delete the SQLite file (and its journals) the URL points at; refuse a non-SQLite file."""
    path = _sqlite_path(url)
    if path is None:
        return
    if path.is_dir():
        raise ConfigError(f"--db: {path} is a folder")
    if path.exists() and path.stat().st_size > 0:
        with path.open("rb") as fh:
            if fh.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
                raise ConfigError(f"--db: {path} is not a SQLite database; refusing to delete it")
    for stale in (path, *(path.with_name(path.name + s) for s in ("-journal", "-wal", "-shm"))):
        stale.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)


# -- seeding ------------------------------------------------------------------------------------


async def _recreate_schema(db: Database) -> None:
    async def ddl(conn: AsyncConnection) -> None:
        if db.is_mysql:
            await conn.run_sync(own_metadata.drop_all)
            await conn.run_sync(metadata.drop_all)
        await create_hotgo_schema(conn, with_unique_key=True)
        await create_own_schema(conn)

    await db.transaction(ddl, what="create the demo schema")


async def _seed(db: Database, config: Config, now: datetime) -> dict[int, int]:
    """Users, wallets, accounts, robots and local orders; returns order number -> order id."""
    running = config.robots.running_status
    stopped = 4 if running != 4 else 3
    created = db.now()

    async def seed(conn: AsyncConnection) -> dict[int, int]:
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
                    member_id=user.id, vip_level=user.vip_level, power_discount=user.discount,
                    invite_code=f"DEMO{user.id:04d}", created_at=created,
                )
            )  # fmt: skip
            await conn.execute(
                wallet.insert().values(
                    user_id=user.id, power=user.power, gift_power=Decimal("5"),
                    total_power_consume=Decimal(0), created_at=created, updated_at=created,
                )
            )  # fmt: skip
        for acct in ACCOUNTS:
            await conn.execute(
                trading_api_config.insert().values(
                    id=acct.id, user_id=acct.user_id, api_name=f"demo {acct.platform}",
                    platform=acct.platform, base_url="", api_key=f"demo-{acct.platform}-key",
                    secret_key=f"demo-{acct.platform}-secret", passphrase=acct.passphrase,
                    status=1, created_at=created,
                )
            )  # fmt: skip
        for robot in ROBOTS:
            await conn.execute(
                trading_robot.insert().values(
                    id=robot.id, tenant_id=1, user_id=robot.user_id,
                    api_config_id=robot.account_id, robot_name=f"demo {robot.symbol}",
                    exchange=_account(robot.account_id).platform, symbol=robot.symbol,
                    leverage=10, status=running if robot.running else stopped, created_at=created,
                )
            )  # fmt: skip
        ids: dict[int, int] = {}
        for trade in TRADES:
            if trade.order is None:
                continue
            robot = _robot(trade.robot_id)
            size, open_price, close_price = _prices(trade)
            opened = db.to_db_time(now - trade.opened_ago)
            closed = db.to_db_time(now - trade.closed_ago)
            is_open = trade.local_status == STATUS_OPEN
            result = await conn.execute(
                trading_order.insert().values(
                    tenant_id=1, user_id=robot.user_id, robot_id=robot.id,
                    order_sn=f"TO{opened:%Y%m%d%H%M%S}DEMO{trade.order:02d}",
                    exchange_order_id=f"{10**17 + trade.order}", symbol=robot.symbol,
                    direction=trade.direction, open_price=open_price,
                    close_price=None if is_open else close_price, quantity=size, leverage=10,
                    margin=Decimal("100"), realized_profit=Decimal(0) if is_open else trade.net,
                    open_time=opened, close_time=None if is_open else closed,
                    hold_duration=0 if is_open else int((closed - opened).total_seconds()),
                    status=trade.local_status, close_reason=None if is_open else "take_profit",
                    created_at=opened, updated_at=opened if is_open else closed,
                )
            )  # fmt: skip
            ids[trade.order] = int(result.inserted_primary_key[0])  # type: ignore[index]
        return ids

    return await db.transaction(seed, what="seed the demo")


async def _state(db: Database) -> tuple[dict[int, Decimal], list[Any]]:
    """Balances by user, and the orders."""
    o = trading_order.c
    orders = select(
        o.id, o.user_id, o.robot_id, o.symbol, o.direction, o.status, o.realized_profit,
        o.power_consumed, o.power_amount, o.close_reason,
    ).order_by(o.id)  # fmt: skip

    async def read(conn: AsyncConnection) -> tuple[dict[int, Decimal], list[Any]]:
        rows = await conn.execute(select(wallet.c.user_id, wallet.c.power))
        return {r.user_id: r.power for r in rows}, list(await conn.execute(orders))

    return await db.transaction(read, what="read the demo's state")


def table(rows: Sequence[Sequence[object]], out: Out) -> None:
    """Text columns; columns of numbers right-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    right = [all(isinstance(r[i], int | Decimal) for r in rows[1:]) for i in range(len(widths))]
    for row in cells:
        parts = (
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=True)
        )
        out(("  " + "  ".join(parts)).rstrip())


def print_audit(report: AuditReport, out: Out) -> None:
    for c in report.checks:
        mark = "✓" if c.ok else "✗"
        tail = "" if c.ok else f" - {c.violations} violation(s)"
        out(f"{mark} {c.name}: {c.description}{tail}")
        for example in c.examples:
            out("    " + ", ".join(f"{k}={v}" for k, v in example.items()))


def _ago(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m ago" if minutes >= 60 else f"{minutes}m ago"


def _story(ids: dict[int, int], out: Out) -> None:
    out("The story (times relative to now):")
    rows: list[list[object]] = [["", "robot", "symbol", "side", "profit", "closed", "what"]]
    for t in TRADES:
        robot = _robot(t.robot_id)
        where = f"order {ids[t.order]}" if t.order is not None else "exchange only"
        closed = "open" if t.local_status == STATUS_OPEN else _ago(t.closed_ago)
        rows.append([where, robot.id, robot.symbol, t.direction, t.net, closed, t.note])
    table(rows, out)


# -- the demo -------------------------------------------------------------------------------------


async def run_demo(config: Config, url: str, out: Out) -> bool:
    """Seed a fresh demo database at ``url`` and run the cycle; True when all went well.

    The caller has made sure ``url`` may be reset (SQLite: deleted; MySQL: allowed).
    """
    if not is_mysql(url):
        reset_sqlite(url)
    now = datetime.now(UTC).replace(microsecond=0)
    with tempfile.TemporaryDirectory(prefix="toogo-demo-") as tmp:
        replay = write_replay(Path(tmp) / "closed_positions.jsonl", now)
        demo = config.model_copy(
            update={
                "database": config.database.model_copy(update={"url": url}),
                "exchanges": ExchangesConfig.model_validate({"replay": {"path": replay}}),
            }
        )
        async with Database(demo.database.settings()) as db:
            await _recreate_schema(db)
            ids = await _seed(db, demo, now)
        records = len(replay_records(now))
        out(f"Demo database: {describe(url)}, fresh: {len(USERS)} users, {len(ACCOUNTS)} API"
            f" accounts (plaintext keys), {len(ROBOTS)} robots, {len(ids)} local orders; the"
            f" exchanges: a replay file of {records} closed positions.")  # fmt: skip
        _story(ids, out)
        async with open_core(demo) as core:
            ok = await _cycle(demo, core, ids, out)
    out("")
    out("Demo complete." if ok else "Demo finished with failures (see above).")
    return ok


async def _cycle(config: Config, core: Core, ids: dict[int, int], out: Out) -> bool:
    start, _ = await _state(core.db)
    realtime = [ids[t.order] for t in TRADES if t.realtime and t.order is not None]
    lost = [ids[t.order] for t in TRADES if t.lost_flag and t.order is not None]
    out(f"\n== 1. The engine's realtime path charges order(s) {_nums(realtime)} at close")
    for order_id in realtime:
        await core.consumer.charge(order_id, Source.REALTIME)
    await _lose_flags(core.db, lost)
    out(f"   ...and the power_consumed update of order(s) {_nums(lost)} is lost.")
    before, _ = await _state(core.db)
    out("\n== 2. History sync: what do the exchanges say closed?")
    async with open_history_sync(config, core) as history:
        synced = await history.run_cycle()
    out("\n== 3. Compensation sweep: charge what is still unconsumed")
    swept = await run_sweep(
        core.consumer,
        lookback=config.sweep.lookback,
        page_size=config.sweep.page_size,
        workers=config.sweep.workers,
        source=Source.SWEEP,
    )
    after, orders = await _state(core.db)
    out("\n== 4. Result")
    _summary(start, before, after, orders, set(ids.values()), out)
    out("\n== 5. Audit of the ledger invariants")
    report = await run_audit(core.db, backlog_after=timedelta(hours=1))
    print_audit(report, out)
    return synced.ok and swept.ok and report.ok


async def _lose_flags(db: Database, order_ids: list[int]) -> None:
    """What the old code's failed UPDATE left: a consume row and no flag."""
    lose = (
        update(trading_order)
        .where(trading_order.c.id.in_(order_ids))
        .values(power_consumed=0, power_amount=Decimal(0))
    )

    async def run(conn: AsyncConnection) -> None:
        await conn.execute(lose)

    await db.transaction(run, what="lose the flag updates")


def _nums(order_ids: Iterable[int]) -> str:
    return ", ".join(str(i) for i in order_ids)


def _summary(
    start: dict[int, Decimal],
    before: dict[int, Decimal],
    after: dict[int, Decimal],
    orders: Iterable[Any],
    seeded: set[int],
    out: Out,
) -> None:
    orders = list(orders)
    rows: list[list[object]] = [
        ["user", "power at start", "before reconcile", "after reconcile", "orders charged"]
    ]
    for user in USERS:
        charged = [o for o in orders if o.user_id == user.id and o.power_consumed == 1]
        rows.append([user.id, start[user.id], before[user.id], after[user.id], len(charged)])
    table(rows, out)
    out("")
    rows = [["order", "user", "robot", "symbol", "side", "status", "profit", "power_consumed",
             "power_amount", "origin"]]  # fmt: skip
    for o in orders:
        status = {STATUS_OPEN: "open", STATUS_CLOSED: "closed"}.get(o.status, str(o.status))
        origin = "inserted by the history sync"
        if o.id in seeded:
            origin = "closed by the history sync" if o.close_reason == CLOSE_REASON else "seeded"
        rows.append([o.id, o.user_id, o.robot_id, o.symbol, o.direction, status,
                     o.realized_profit, o.power_consumed, o.power_amount, origin])  # fmt: skip
    table(rows, out)
