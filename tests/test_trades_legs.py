"""Issue 22: upstream's engine writes a second row ("leg") for every closing order of a trade;
the daemon charges trades, never legs (reconcile/charging/trades.py).

The rows come from tests/engine_legs.py, which plays upstream's writers in their order (the
engine's open and close, then the order-status sync's pass: SyncOrderHistoryToDB and the position
check), reading exchange orders and fills as upstream's adapters parse them. The exchanges are the
fakes of kits/fake_exchanges, read by real ccxt; their records are the same trades. DATETIMEs are
written in Asia/Shanghai, as upstream deploys.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from kits.databases import open_database
from kits.fake_exchanges import FAKES, FakeExchange
from kits.fake_exchanges import binance as binance_wire
from kits.fake_exchanges import gate as gate_wire
from kits.fake_exchanges import okx as okx_wire
from kits.seed import assert_ledger_consistent
from kits.upstream import CLOSE_ID_COLUMNS
from reconcile.storage.db import Database
from reconcile.storage.schema import power_consume, trading_order, wallet, wallet_log
from tests.engine_legs import (
    EngineKit,
    ExchangeOrder,
    Fill,
    binance_order,
    gate_order,
    ms_of,
    okx_order,
    order_id_counter,
)
from tests.history_kit import add_account, add_robot
from tests.procs import run_cli, write_config

pytestmark = pytest.mark.mysql

ZONE = "Asia/Shanghai"  # upstream deploys with TZ=Asia/Shanghai
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
QTY = Decimal("0.01")
ENTRY = Decimal(60000)
GATE_MULTIPLIER = Decimal("0.0001")  # kits/fake_exchanges DEFAULT_MARKETS: BTC_USDT
GATE_CONTRACTS = 100  # × 0.0001 = 0.01 BTC
OKX_CONTRACTS = "1"  # × ctVal 0.01 = 0.01 BTC
SNAPSHOT_TABLES = (
    "hg_trading_order",
    "hg_toogo_power_consume",
    "hg_toogo_wallet",
    "hg_toogo_wallet_log",
    "toogo_reconcile_binding",
    "toogo_reconcile_verdict",
)


# -- the exchange side of one trade, for upstream's adapters and for the fake -------------------


@dataclass(frozen=True)
class Venue:
    platform: str
    hedge: bool


VENUES = {
    "binance_oneway": Venue("binance", hedge=False),
    "binance_hedge": Venue("binance", hedge=True),
    "okx": Venue("okx", hedge=True),
    "gate": Venue("gate", hedge=True),
}


@dataclass
class Exchange:
    """What one account did on the exchange: orders (as GetOrderHistory parses them), fills (as
    GetTradeHistory parses them) and the records the fake serves."""

    venue: Venue
    next_id: Any
    orders: list[ExchangeOrder] = field(default_factory=list)
    fills: list[Fill] = field(default_factory=list)
    wire: list[dict[str, Any]] = field(default_factory=list)

    def side_of(self, direction: str) -> str:
        if not self.venue.hedge:
            return {"binance": "BOTH", "okx": "NET", "gate": ""}[self.venue.platform]
        return direction.upper()

    def order(
        self, side: str, direction: str, price: Decimal, qty: Decimal, ms: int
    ) -> ExchangeOrder:
        oid = self.next_id()
        ps = self.side_of(direction)
        if self.venue.platform == "binance":
            order = binance_order(oid, side, ps, price, qty, ms)
        elif self.venue.platform == "okx":
            order = okx_order(oid, side, ps, ms)
        else:
            contracts = int(qty / GATE_MULTIPLIER)
            size = contracts if side == "BUY" else -contracts
            order = gate_order(oid, size, ps, price, GATE_MULTIPLIER, ms)
        self.orders.append(order)
        return order

    def fill(
        self, order: ExchangeOrder, price: Decimal, qty: Decimal, pnl: Decimal, ms: int
    ) -> None:
        # gate's my_trades carries no position side (gate.go 956-1030); binance's and okx's do
        ps = "" if self.venue.platform == "gate" else self.side_of_fill(order)
        self.fills.append(Fill(order.order_id, order.side, ps, price, qty, pnl, ms))
        if self.venue.platform == "binance":
            self.wire.append(
                binance_wire.fill(
                    order_id=int(order.order_id),
                    side=order.side,
                    price=str(price),
                    qty=str(qty),
                    realized_pnl=str(pnl),
                    commission="0.024",
                    time=ms,
                    position_side=ps,
                )
            )

    def until(self, moment: datetime) -> tuple[list[ExchangeOrder], list[Fill]]:
        """The orders and fills the exchange has at ``moment``."""
        cut = ms_of(moment)
        return (
            [o for o in self.orders if o.create_ms <= cut],
            [f for f in self.fills if f.time_ms <= cut],
        )

    def side_of_fill(self, order: ExchangeOrder) -> str:
        return order.position_side

    def close_record(
        self,
        direction: str,
        open_price: Decimal,
        close_price: Decimal,
        pnl: Decimal,
        open_ms: int,
        close_ms: int,
    ) -> None:
        """okx's and gate's closed-position record (binance's are its fills)."""
        long = direction == "long"
        if self.venue.platform == "okx":
            self.wire.append(
                okx_wire.position(
                    pos_id=f"pos{self.next_id()}",
                    direction=direction,
                    open_px=str(open_price),
                    close_px=str(close_price),
                    close_total_pos=OKX_CONTRACTS,
                    pnl=str(pnl),
                    fee="-0.06",
                    funding_fee="0",
                    c_time=open_ms,
                    u_time=close_ms,
                    pos_side=direction if self.venue.hedge else "net",
                )
            )
        elif self.venue.platform == "gate":
            self.wire.append(
                gate_wire.closed(
                    side=direction,
                    long_price=str(open_price if long else close_price),
                    short_price=str(close_price if long else open_price),
                    accum_size=str(GATE_CONTRACTS),
                    pnl_pnl=str(pnl),
                    pnl_fee="-0.06",
                    pnl_fund="0",
                    first_open_time=open_ms // 1000,
                    time=close_ms // 1000,
                )
            )

    def trade(
        self, direction: str, opened: datetime, closes: list[tuple[datetime, Decimal, Decimal]]
    ) -> tuple[ExchangeOrder, list[ExchangeOrder]]:
        """A position opened at ``opened`` (ENTRY) and closed by one order per (time, qty,
        pnl): orders placed a second before their fill."""
        long = direction == "long"
        total = sum((q for _, q, _ in closes), Decimal(0))
        open_ms = ms_of(opened)
        opening = self.order("BUY" if long else "SELL", direction, ENTRY, total, open_ms - 1000)
        self.fill(opening, ENTRY, total, Decimal(0), open_ms)
        closing = []
        for when, qty, pnl in closes:
            price = ENTRY + pnl / qty if long else ENTRY - pnl / qty
            close_ms = ms_of(when)
            order = self.order("SELL" if long else "BUY", direction, price, qty, close_ms - 1000)
            self.fill(order, price, qty, pnl, close_ms)
            self.close_record(direction, ENTRY, price, pnl, open_ms, close_ms)
            closing.append(order)
        return opening, closing


# -- the scenario --------------------------------------------------------------------------------

#: direction, the trade's PnL, the ticker when the order-status sync closes its leg
TRADES = (
    ("long", "9.8", "60900"),  # leg short at 60980: ticker estimate +0.8, a profitable leg
    ("short", "7.5", "59400"),  # hedge: the fills' +7.5; one-way leg long: (59400 − 59250) × .01
    ("long", "5", "60600"),  # leg short at 60500: (60500 − 60600) × 0.01 = −1
    ("short", "-4", "60300"),  # hedge: the fills' −4; one-way leg long: (60300 − 60400) × .01
    ("long", "-3", "59600"),  # a losing trade whose leg is profitable: (59700 − 59600) × .01
)
#: closed by hand on the exchange while the robot was stopped: not in the local table
HAND = (("long", "6.3"), ("short", "8.1"))


@dataclass
class World:
    trades: dict[int, Decimal] = field(default_factory=dict)  # trade row -> its PnL
    legs: dict[int, int] = field(default_factory=dict)  # leg row -> its trade row
    hand_profitable: int = 0


async def build(db: Database, exchange: Exchange, now: datetime) -> World:
    engine = EngineKit(db)
    world = World()
    base = now - 9 * HOUR
    for k, (direction, pnl, ticker) in enumerate(TRADES):
        opened = base + k * HOUR
        closed = opened + 40 * MINUTE
        opening, [closing] = exchange.trade(direction, opened, [(closed, QTY, Decimal(pnl))])
        row = await engine.open_trade(opening, direction, now=opened)
        await engine.close_trade(row, closing, exchange.fills, now=closed)
        world.trades[row] = Decimal(pnl)
        # the order-status sync's next pass: the closing order becomes a row and is closed
        legs = await engine.sync_pass(
            exchange.orders, exchange.fills, ticker=Decimal(ticker), now=closed + MINUTE
        )
        assert len(legs) == 1, legs
        world.legs[legs[0]] = row
    for k, (direction, pnl) in enumerate(HAND):
        opened = base + (5 + k) * HOUR
        exchange.trade(direction, opened, [(opened + 40 * MINUTE, QTY, Decimal(pnl))])
        world.hand_profitable += Decimal(pnl) > 0
    return world


async def leg_profits(db: Database, world: World) -> dict[int, Decimal]:
    async def read(conn: AsyncConnection) -> dict[int, Decimal]:
        o = trading_order.c
        rows = await conn.execute(
            select(o.id, o.realized_profit, o.status).where(o.id.in_(list(world.legs)))
        )
        return {r.id: r.realized_profit for r in rows if r.status == 2}

    return await db.transaction(read, what="read legs")


async def tables(db: Database) -> set[str]:
    async def read(conn: AsyncConnection) -> set[str]:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))

    return await db.transaction(read, what="table names")


async def snapshot(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    present = await tables(db)

    async def read(conn: AsyncConnection) -> dict[str, list[tuple[Any, ...]]]:
        out = {}
        for name in SNAPSHOT_TABLES:
            if name in present:
                rows = await conn.execute(text(f"SELECT * FROM {name} ORDER BY id"))
                out[name] = [tuple(r) for r in rows]
        return out

    return await db.transaction(read, what="snapshot")


async def consumes(db: Database) -> Counter[int]:
    async def read(conn: AsyncConnection) -> Counter[int]:
        rows = await conn.execute(select(power_consume.c.order_id))
        return Counter(r.order_id for r in rows)

    return await db.transaction(read, what="consume rows")


async def verdicts(db: Database) -> dict[int, Any]:
    async def read(conn: AsyncConnection) -> dict[int, Any]:
        rows = await conn.execute(
            text(
                "SELECT order_id, verdict, rule, trade_order_id, actor, note"
                " FROM toogo_reconcile_verdict"
            )
        )
        return {r.order_id: r for r in rows}

    return await db.transaction(read, what="verdicts")


async def set_close_ids(db: Database, present: bool) -> None:
    """Whether add_missing_order_fields.sql ran: on MySQL upstream's as-applied schema has the
    close ids (dropped here for the installs without them); upstream's PostgreSQL DDL lacks
    them (added here as that script's lines 18-19 add them)."""

    async def alter(conn: AsyncConnection) -> None:
        have = {
            c["name"]
            for c in await conn.run_sync(lambda c: inspect(c).get_columns(trading_order.name))
        }
        for column in CLOSE_ID_COLUMNS:
            if present and column not in have:
                await conn.exec_driver_sql(
                    f"ALTER TABLE {trading_order.name} ADD COLUMN {column} VARCHAR(100) NULL"
                )
            elif not present and column in have:
                await conn.exec_driver_sql(f"ALTER TABLE {trading_order.name} DROP COLUMN {column}")

    await db.transaction(alter, what="close id columns")


def config(tmp_path: Path, url: str, platform: str | None) -> Path:
    sections: dict[str, Any] = {"power": {"consume_rate": "0.10", "min_consume": "0.01"}}
    if platform is not None:
        sections["exchanges"] = {
            platform: {"timeout": "2s", "retry": {"attempts": 2, "initial": "10ms"}}
        }
    cfg = write_config(tmp_path / "c.yaml", url, **sections)
    cfg.write_text(cfg.read_text().replace("database:\n", f"database:\n  timezone: {ZONE}\n", 1))
    return cfg


async def wire(db: Database, fake: FakeExchange, platform: str) -> None:
    await add_account(
        db,
        10,
        user_id=7,
        platform=platform,
        base_url=fake.url,
        api_key=fake.api_key,
        secret_key=fake.secret,
        passphrase=fake.passphrase,
    )
    await add_robot(db, 100, user_id=7, account_id=10, exchange=platform)


async def cli_ok(cfg: Path, *args: str) -> str:
    code, out, err = await run_cli(cfg, *args)
    assert code == 0, (args, code, err[-3000:], out[-3000:])
    return out


# -- 1. every venue, three ways of running ----------------------------------------------------

MODES = {
    "run": ("run --once, close ids present", True, True),
    "sweep": ("sweep alone, no exchange configured", True, False),
    "run_no_close_ids": ("run --once, close-id columns dropped", False, True),
}


@pytest.fixture(params=sorted(VENUES))
def venue(request: pytest.FixtureRequest) -> Iterator[str]:
    yield request.param


@pytest.mark.parametrize("mode", list(MODES))
async def test_legs_are_never_charged(
    server_url: str, tmp_path: Path, venue: str, mode: str
) -> None:
    """Several engine trades, each with the leg row its closing order became (legs carrying the
    trade's own PnL from the fills, legs with a ticker estimate of either sign, a profitable leg
    of a losing trade), and two trades closed by hand on the exchange, missing locally. After
    each run, and after a second identical run that changes nothing: no leg has a consume row;
    every profitable trade has exactly one (the engine's row, or the row the sync inserted for a
    hand-closed trade); the ledger is consistent."""
    _, close_ids, with_exchange = MODES[mode]
    spec = VENUES[venue]
    db = await open_database(server_url, timezone=ZONE)
    try:
        await set_close_ids(db, close_ids)
        async with FAKES[spec.platform]() as fake:
            await wire(db, fake, spec.platform)
            exchange = Exchange(spec, order_id_counter(8_000_000_000_000))
            now = datetime.now(UTC).replace(microsecond=0)
            world = await build(db, exchange, now)
            fake.records += exchange.wire
            legs = await leg_profits(db, world)
            # the scenario is what it says: profitable legs exist, of both origins on hedge venues
            assert sum(p > 0 for p in legs.values()) >= (2 if spec.platform != "okx" else 1), legs
            cfg = config(tmp_path, server_url, spec.platform if with_exchange else None)
            command = ("run", "--once") if with_exchange else ("sweep",)
            await cli_ok(cfg, *command)
            first = await snapshot(db)
            await cli_ok(cfg, *command)
            assert await snapshot(db) == first, "the second run changed something"
        charged = await consumes(db)
        assert not {leg for leg in world.legs if charged[leg]}, (
            f"legs charged: { {leg: legs.get(leg) for leg in world.legs if charged[leg]} }"
        )
        profitable = {row for row, pnl in world.trades.items() if pnl > 0}
        assert {row: charged[row] for row in profitable} == dict.fromkeys(profitable, 1)
        engine_rows = set(world.trades) | set(world.legs)
        inserted = {o for o in charged if o not in engine_rows}
        expected_inserted = world.hand_profitable if with_exchange else 0
        assert len(inserted) == expected_inserted and all(charged[o] == 1 for o in inserted), (
            charged
        )
        assert sum(charged.values()) == len(profitable) + expected_inserted
        await assert_ledger_consistent(db, {})
        if close_ids:  # rule close_order_id: every profitable leg recorded, with its trade
            found = await verdicts(db)
            for leg, pnl in legs.items():
                if pnl > 0:
                    assert leg in found and found[leg].verdict == "leg", (leg, found.get(leg))
                    assert found[leg].trade_order_id == world.legs[leg], found[leg]
    finally:
        await db.close()


# -- 2. two closing orders, a leg charged by an earlier release, a status that flips -------------


async def plant_old_charge(db: Database, order_id: int, rate: Decimal = Decimal("0.10")) -> Decimal:
    """What the first release did for every closed profitable row: a consume row, its ledger row
    (before/after continuing the wallet), the wallet debited, the order flagged."""
    o = trading_order.c

    async def charge(conn: AsyncConnection) -> Decimal:
        cols = (o.user_id, o.robot_id, o.order_sn, o.realized_profit)
        order = (await conn.execute(select(*cols).where(o.id == order_id))).one()
        amount = max((order.realized_profit * rate).quantize(Decimal("1e-8")), Decimal("0.01"))
        now = datetime.now(UTC).replace(microsecond=0, tzinfo=None)
        row = (
            await conn.execute(select(wallet).where(wallet.c.user_id == order.user_id))
        ).one_or_none()
        if row is None:
            await conn.execute(
                wallet.insert().values(
                    user_id=order.user_id,
                    power=Decimal(0),
                    gift_power=Decimal(0),
                    total_power_consume=Decimal(0),
                )
            )
            before = Decimal(0)
        else:
            before = row.power
        await conn.execute(
            power_consume.insert().values(
                user_id=order.user_id,
                robot_id=order.robot_id,
                order_id=order_id,
                order_sn=order.order_sn,
                profit_amount=order.realized_profit,
                consume_rate=rate,
                consume_power=amount,
                original_power=amount,
                created_at=now,
            )
        )
        await conn.execute(
            wallet_log.insert().values(
                user_id=order.user_id,
                account_type="power",
                change_type="power_consume",
                change_amount=-amount,
                before_amount=before,
                after_amount=before - amount,
                related_id=order_id,
                related_type="trading_order",
                order_sn=order.order_sn,
                remark="power consume",
                created_at=now,
            )
        )
        await conn.execute(
            wallet.update()
            .where(wallet.c.user_id == order.user_id)
            .values(
                power=wallet.c.power - amount,
                total_power_consume=wallet.c.total_power_consume + amount,
            )
        )
        await conn.execute(
            trading_order.update()
            .where(o.id == order_id)
            .values(power_consumed=1, power_amount=amount)
        )
        return amount

    return await db.transaction(charge, what="the first release charges")


def audit_examples(out: str) -> list[tuple[str, dict[str, Any]]]:
    report = json.loads(next(line for line in out.splitlines() if '"checks"' in line))
    return [(c["name"], e) for c in report["checks"] if not c["ok"] for e in c["examples"]]


async def test_two_closing_orders_an_old_charge_and_a_flipping_status(
    server_url: str, tmp_path: Path
) -> None:
    """A trade closed by two closing orders (two leg rows); the earlier release charged the
    trade and its second leg; a second trade with a leg carrying its own PnL. `run --once`
    charges neither leg, never charges the charged leg again; `audit` exits 1 naming that leg,
    its user and amount. The order-history sync then sets the rows back to status 1 (a run in
    between), the position check closes them again (another run): still exactly one charge per
    trade, none added."""
    db = await open_database(server_url, timezone=ZONE)
    try:
        await set_close_ids(db, True)
        async with FAKES["binance"]() as fake:
            await wire(db, fake, "binance")
            exchange = Exchange(VENUES["binance_hedge"], order_id_counter(7_000_000_000_000))
            engine = EngineKit(db)
            now = datetime.now(UTC).replace(microsecond=0)
            t0 = now - 6 * HOUR
            # trade A: long 0.02, a partial close by hand at +20 min, the engine's close at +40
            closes = [(t0 + 20 * MINUTE, QTY, Decimal(9)), (t0 + 40 * MINUTE, QTY, Decimal(10))]
            opening, (_c1, c2) = exchange.trade("long", t0, closes)
            a = await engine.open_trade(opening, "long", now=t0)
            orders, fills = exchange.until(t0 + 21 * MINUTE)
            [leg1] = await engine.sync_pass(
                orders,
                fills,
                ticker=Decimal(60800),
                now=t0 + 21 * MINUTE,
                positions=frozenset({"LONG"}),  # the rest of the position is still open
            )
            await engine.close_trade(a, c2, exchange.fills, now=t0 + 40 * MINUTE)
            [leg2] = await engine.sync_pass(
                exchange.orders, exchange.fills, ticker=Decimal(60950), now=t0 + 41 * MINUTE
            )
            # trade B: short (hedge mode): its leg is closed with the trade's own fills
            t1 = t0 + 2 * HOUR
            opening_b, [closing_b] = exchange.trade(
                "short", t1, [(t1 + 30 * MINUTE, QTY, Decimal("7.5"))]
            )
            b = await engine.open_trade(opening_b, "short", now=t1)
            await engine.close_trade(b, closing_b, exchange.fills, now=t1 + 30 * MINUTE)
            [leg_b] = await engine.sync_pass(
                exchange.orders, exchange.fills, ticker=Decimal(59000), now=t1 + 31 * MINUTE
            )
            fake.records += exchange.wire
            rows = {r.id: r for r in await engine.robot_rows()}
            assert rows[a].realized_profit == Decimal(10)  # upstream sums c2's fills only
            assert rows[leg_b].realized_profit == Decimal("7.5")  # the trade's own PnL
            assert all(rows[x].realized_profit > 0 for x in (leg1, leg2, leg_b))
            planted = {a: await plant_old_charge(db, a), leg2: await plant_old_charge(db, leg2)}

            cfg = config(tmp_path, server_url, "binance")
            await cli_ok(cfg, "run", "--once")
            expected = Counter({a: 1, leg2: 1, b: 1})
            assert await consumes(db) == expected
            await assert_ledger_consistent(db, {})

            code, out, err = await run_cli(cfg, "audit", "--json")
            assert code == 1, (out, err)
            named = [
                (name, e)
                for name, e in audit_examples(out)
                if leg2 in {int(v) for k, v in e.items() if "order" in k and str(v).isdigit()}
            ]
            assert named, f"audit does not name the charged leg {leg2}: {out}"
            _, example = named[0]
            assert str(example.get("user_id")) == "7", example
            assert any(_decimal(v) == planted[leg2] for v in example.values()), (
                f"audit does not give the amount {planted[leg2]}: {example}"
            )
            # a leg the engine itself names (its id is B's close_order_id) waits for nothing
            backlog = {e.get("order_id") for name, e in audit_examples(out) if name == "backlog"}
            assert leg_b not in backlog, f"audit lists leg {leg_b} as an uncharged backlog: {out}"
            code, out, _ = await run_cli(cfg, "audit")
            assert code == 1 and str(leg2) in out, out

            # the order-history sync's next pass: every row of a filled order back to 1 ...
            await engine.sync_order_history(exchange.orders, now=now - 30 * MINUTE)
            flipped = {r.id: r.status for r in await engine.robot_rows()}
            assert flipped[a] == flipped[b] == flipped[leg2] == 1, flipped
            await cli_ok(cfg, "run", "--once")
            assert await consumes(db) == expected
            # ... and its position check closes them again, updated_at = now
            await engine.position_check(
                fills=exchange.fills, ticker=Decimal(61000), now=now - 29 * MINUTE
            )
            assert {r.status for r in await engine.robot_rows()} == {2}
            await cli_ok(cfg, "run", "--once")
            first = await snapshot(db)
            await cli_ok(cfg, "run", "--once")
            assert await snapshot(db) == first
        assert await consumes(db) == expected
        await assert_ledger_consistent(db, {})
    finally:
        await db.close()


def _decimal(value: Any) -> Decimal | None:
    try:
        return Decimal(str(value))
    except ArithmeticError:
        return None


# -- 3. held rows and the operator's commands -----------------------------------------------------


def held_ids(out: str) -> set[int]:
    """Order ids in ``held list --json`` (one JSON document or JSON lines; log lines, which
    carry an ``event``, are not the listing)."""

    def walk(value: Any) -> Iterator[int]:
        if isinstance(value, list):
            for item in value:
                yield from walk(item)
        elif isinstance(value, dict) and "event" not in value:
            if "order_id" in value:
                yield int(value["order_id"])
            else:
                for item in value.values():
                    if isinstance(item, list | dict):
                        yield from walk(item)

    try:
        return set(walk(json.loads(out)))
    except json.JSONDecodeError:
        found: set[int] = set()
        for line in out.splitlines():
            try:
                found |= set(walk(json.loads(line)))
            except json.JSONDecodeError:
                continue
        return found


async def test_held_rows_and_the_operators_decisions(server_url: str, tmp_path: Path) -> None:
    """Without close ids and without an exchange, a leg is only 'possibly a leg' (opened inside a
    trade's lifetime, in its closing direction, no larger): held, not charged, listed by
    `held list --json`. `held charge` charges one once (a second call is a no-op, exit 0);
    `held dismiss` keeps another uncharged through later sweeps; both are recorded in
    toogo_reconcile_verdict with the operator's name."""
    db = await open_database(server_url, timezone=ZONE)
    try:
        await set_close_ids(db, False)
        await add_account(db, 10, user_id=7, platform="binance")
        await add_robot(db, 100, user_id=7, account_id=10, exchange="binance")
        exchange = Exchange(VENUES["binance_hedge"], order_id_counter(6_000_000_000_000))
        engine = EngineKit(db)
        now = datetime.now(UTC).replace(microsecond=0)
        trades, legs = [], []
        for k, (direction, pnl, ticker) in enumerate(
            (("long", "9.8", "60900"), ("short", "7.5", "59000"))
        ):
            opened = now - (5 - 2 * k) * HOUR
            closed = opened + 40 * MINUTE
            opening, [closing] = exchange.trade(direction, opened, [(closed, QTY, Decimal(pnl))])
            row = await engine.open_trade(opening, direction, now=opened)
            await engine.close_trade(row, closing, exchange.fills, now=closed)
            [leg] = await engine.sync_pass(
                exchange.orders, exchange.fills, ticker=Decimal(ticker), now=closed + MINUTE
            )
            trades.append(row)
            legs.append(leg)
        to_charge, to_dismiss = legs
        profits = {r.id: r.realized_profit for r in await engine.robot_rows()}
        assert profits[to_charge] == Decimal("0.8") and profits[to_dismiss] == Decimal("7.5")

        cfg = config(tmp_path, server_url, None)
        await cli_ok(cfg, "sweep")
        assert await consumes(db) == Counter(trades)
        listed = held_ids(await cli_ok(cfg, "held", "list", "--json"))
        assert set(legs) <= listed, listed
        assert not set(trades) & listed, listed

        charge = (
            "held",
            "charge",
            "--order-id",
            str(to_charge),
            "--by",
            "alice",
            "--note",
            "checked: a re-entry",
        )
        await cli_ok(cfg, *charge)
        assert await consumes(db) == Counter([*trades, to_charge])
        once = await snapshot(db)
        await cli_ok(cfg, *charge)  # the same decision again: nothing
        assert await snapshot(db) == once

        dismiss = ("held", "dismiss", "--order-id", str(to_dismiss), "--by", "bob")
        await cli_ok(cfg, *dismiss)
        await cli_ok(cfg, *dismiss)
        await cli_ok(cfg, "sweep")
        await cli_ok(cfg, "sweep")
        assert await consumes(db) == Counter([*trades, to_charge])
        assert not set(legs) & held_ids(await cli_ok(cfg, "held", "list", "--json"))
        found = await verdicts(db)
        assert (found[to_charge].verdict, found[to_charge].actor) == ("trade", "alice")
        assert found[to_charge].note == "checked: a re-entry"
        assert (found[to_dismiss].verdict, found[to_dismiss].actor) == ("dismissed", "bob")
        await assert_ledger_consistent(db, {})
    finally:
        await db.close()
