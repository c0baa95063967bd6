"""hotgo's side of the database, written the way upstream writes it (docs/architecture.md, "How
upstream's engine writes its tables"), in two threads
with plain pymysql connections straight to the server (the daemons' proxy cuts are theirs):

- ``Engine``: each robot trades one position at a time. A position is opened and closed by the
  engine (``TO…`` order_sn, the opening id in ``exchange_order_id``, the closing id in
  ``close_order_id``, profit the fee-less estimate (close − open) × qty), or closed by hand on
  the exchange while the engine still has it open, or traded by hand with no local order at
  all. Every close is put on the robot's fake exchange first. Some engine closes are charged
  by the legacy ConsumePower (consume row, wallet debit, ledger row: one transaction) whose
  ``power_consumed`` update is then lost.
- ``GoWallet``: ``ChangeBalance`` as the Go application does it: read the wallet without a lock,
  some time later write an absolute balance with its ledger row. A daemon debit landing in
  between is overwritten; the write observes (under a row lock, so exactly) what it overwrote
  and says so in the ledger row's remark - the ground truth the checks compare audit with.

Both survive the database going away: a lost connection is reconnected and the unit re-run,
after checking by its own marker (order_sn, ledger remark) whether the lost COMMIT happened.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import TypeVar
from zoneinfo import ZoneInfo

import pymysql
from pymysql.cursors import Cursor

from bench.sim.world import DB_NAME, RATE, ZONE, Account, Cast, Exchanges
from kits.fake_exchanges.harness import closed_record, record_key_of

T = TypeVar("T")
LOCAL = ZoneInfo(ZONE)
RECONNECT = {1053, 1927, 2002, 2003, 2006, 2013, 2055}  # shutdown, killed, lost, gone
RERUN = {1205, 1213}  # lock wait timeout, deadlock: the transaction was rolled back
LEGACY_REMARK = "sim legacy ConsumePower"
GO_REMARK = "sim go-write"
ENGINE_REASONS = ("take_profit", "stop_loss", "timeout")
SIZE = Decimal("0.01")  # BTC, on every fake: 0.01 BTC, 1 OKX contract, 100 Gate contracts
EIGHT = Decimal("0.00000001")


class GaveUp(RuntimeError):
    """A unit of hotgo's work that could not be done within its time (the server never
    came back)."""


class Sql:
    """One connection of hotgo's (root, no password, straight to the server)."""

    def __init__(self, port: int, give_up: float = 180.0) -> None:
        self.port = port
        self.give_up = give_up
        self.conn: pymysql.connections.Connection | None = None
        self.reconnects = 0

    def _connect(self) -> pymysql.connections.Connection:
        if self.conn is None:
            self.conn = pymysql.connect(
                host="127.0.0.1",
                port=self.port,
                user="root",
                password="",
                database=DB_NAME,
                autocommit=False,
                connect_timeout=2,
                read_timeout=60,
                write_timeout=60,
            )
            with self.conn.cursor() as cur:
                cur.execute("SET SESSION innodb_lock_wait_timeout = 20")
        return self.conn

    def _drop(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(pymysql.err.Error):
                self.conn.close()
            self.conn = None
            self.reconnects += 1

    def transaction(
        self,
        work: Callable[[Cursor], T],
        *,
        what: str,
        done: Callable[[Cursor], T | None] | None = None,
    ) -> T:
        """``work`` in one transaction, re-run after a deadlock, a lock-wait timeout or a lost
        connection; after a lost connection ``done`` says whether the lost attempt committed
        (its result) or not (None)."""
        deadline = time.monotonic() + self.give_up
        lost = False
        while True:
            try:
                conn = self._connect()
                with conn.cursor() as cur:
                    if lost and done is not None:
                        found = done(cur)
                        conn.commit()
                        if found is not None:
                            return found
                    lost = False
                    conn.begin()
                    result = work(cur)
                conn.commit()
                return result
            except pymysql.err.OperationalError as exc:
                code = exc.args[0] if exc.args else 0
                if code in RERUN:
                    self._rollback()
                elif code in RECONNECT or code == 0:
                    self._drop()
                    lost = True
                else:
                    raise
            except (pymysql.err.InterfaceError, OSError):
                self._drop()
                lost = True
            if time.monotonic() > deadline:
                raise GaveUp(f"{what}: the database did not come back in {self.give_up:.0f} s")
            time.sleep(0.3)

    def _rollback(self) -> None:
        try:
            if self.conn is not None:
                self.conn.rollback()
        except pymysql.err.Error:
            self._drop()

    def close(self) -> None:
        if self.conn is not None:
            self._drop()
            self.reconnects -= 1


def local_time(at: datetime) -> datetime:
    """A DATETIME as hotgo's Go application writes it: naive, in its zone, whole seconds."""
    return at.astimezone(LOCAL).replace(tzinfo=None, microsecond=0)


def charge_of(profit: Decimal) -> Decimal:
    """The legacy ConsumePower's charge: profit × rate (no VIP discount), at least 0.01."""
    return max(profit * RATE, Decimal("0.01")).quantize(EIGHT, rounding=ROUND_HALF_UP)


@dataclass
class Close:
    """A position the exchange reports closed: what the daemons must reconcile."""

    platform: str
    account_id: int
    record_key: str
    profitable: bool
    kind: str  # engine | hand_open | hand_only


@dataclass
class Counts:
    opened: int = 0
    closed: int = 0
    closed_first_by_daemon: int = 0  # the history sync closed it before the engine did
    hand_open: int = 0
    hand_only: int = 0
    legacy: int = 0
    legacy_refused: int = 0  # the daemon had charged it first (found, or uk_user_order)
    lost_flags: int = 0
    go_writes: int = 0
    go_overwrites: int = 0


@dataclass
class Position:
    kind: str
    direction: str
    opened: datetime
    order_id: int | None = None
    #: (profit, closed at, closing order id) of a close on the exchange the engine records late
    late: tuple[int, datetime, str] | None = None


@dataclass
class Robot:
    account: Account
    due: float
    position: Position | None = None


KINDS = (("engine", 0.75), ("hand_open", 0.12), ("hand_only", 0.13))


class Engine:
    """The engine's writes; ``run`` trades until ``stop`` is set, ``backfill`` writes history."""

    def __init__(self, port: int, cast: Cast, exchanges: Exchanges, seed: int) -> None:
        self.sql = Sql(port)
        self.cast = cast
        self.exchanges = exchanges
        self.rnd = random.Random(f"engine-{seed}")
        self.closes: list[Close] = []
        self.counts = Counts()
        self.hot: deque[int] = deque(maxlen=20)  # users just charged: the Go writer's favourites
        self.keys = itertools.count(7_000_000_001)
        self.robots = [Robot(a, time.monotonic() + self.rnd.uniform(0, 5)) for a in cast.accounts]
        self.error: BaseException | None = None

    # -- the units of work ---------------------------------------------------------------------

    def open(self, account: Account, direction: str, at: datetime) -> int:
        sn = (
            "TO"
            + local_time(at).strftime("%Y%m%d%H%M%S")
            + "".join(self.rnd.choices("ABCDEFGHJKLMNPQRSTUVWXYZ23456789", k=6))
        )
        opening_id = str(self.rnd.randint(10**17, 10**18 - 1))
        row = (
            1,
            account.user_id,
            account.robot_id,
            sn,
            opening_id,
            account.symbol,
            direction,
            Decimal(60000),
            SIZE,
            10,
            Decimal(60),
            local_time(at),
            1,
            local_time(at),
            local_time(at),
        )

        def insert(cur: Cursor) -> int:
            cur.execute(
                "INSERT INTO hg_trading_order (tenant_id, user_id, robot_id, order_sn,"
                " exchange_order_id, symbol, direction, open_price, quantity, leverage, margin,"
                " open_time, status, created_at, updated_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                row,
            )
            return int(cur.lastrowid)

        def found(cur: Cursor) -> int | None:
            cur.execute("SELECT id FROM hg_trading_order WHERE order_sn = %s", (sn,))
            hit = cur.fetchone()
            return int(hit[0]) if hit else None

        order_id = self.sql.transaction(insert, what="open an order", done=found)
        self.counts.opened += 1
        return order_id

    def exchange_close(
        self, account: Account, kind: str, direction: str, profit: int, at: datetime
    ) -> tuple[str, str]:
        """The exchange reports the position closed; returns (record key, closing order id)."""
        key = str(next(self.keys))
        [raw] = closed_record(
            account.platform,
            close_ms=int(at.timestamp() * 1000),
            symbol="BTC",
            key=key,
            profit=str(profit),
            long=direction == "long",
        )
        self.exchanges.add_record(account.id, raw)
        record_key = record_key_of(account.platform, raw)
        self.closes.append(Close(account.platform, account.id, record_key, profit > 0, kind))
        closing_id = {"binance": key, "bybit": f"ord-{key}"}.get(
            account.platform, str(self.rnd.randint(10**17, 10**18 - 1))
        )
        return record_key, closing_id

    def close(
        self,
        order_id: int,
        direction: str,
        profit: int,
        opened: datetime,
        at: datetime,
        closing_id: str,
    ) -> bool:
        """The engine records the close; False when the daemon's history sync closed it first."""
        move = Decimal(profit) / SIZE
        close_price = Decimal(60000) + (move if direction == "long" else -move)
        reason = self.rnd.choice(ENGINE_REASONS) if profit > 0 else "stop_loss"
        args = (
            close_price,
            local_time(at),
            Decimal(profit),
            int((at - opened).total_seconds()),
            reason,
            closing_id,
            local_time(at),
            order_id,
        )

        def update(cur: Cursor) -> bool:
            return bool(
                cur.execute(
                    "UPDATE hg_trading_order SET status = 2, close_price = %s, close_time = %s,"
                    " realized_profit = %s, hold_duration = %s, close_reason = %s,"
                    " close_order_id = %s, updated_at = %s WHERE id = %s AND status = 1",
                    args,
                )
            )

        closed = self.sql.transaction(update, what="close an order")
        if closed:
            self.counts.closed += 1
        else:
            self.counts.closed_first_by_daemon += 1
        return closed

    def legacy_charge(
        self, account: Account, order_id: int, profit: Decimal, lose_flag: bool
    ) -> None:
        """The old realtime path: ConsumePower's transaction, then the flag update - lost."""
        amount = charge_of(profit)
        user = account.user_id

        def consume(cur: Cursor) -> str:
            cur.execute(
                "SELECT 1 FROM hg_toogo_power_consume WHERE user_id = %s AND order_id = %s",
                (user, order_id),
            )
            if cur.fetchone():
                return "charged already"
            cur.execute("SELECT power FROM hg_toogo_wallet WHERE user_id = %s FOR UPDATE", (user,))
            hit = cur.fetchone()
            if hit is None:
                return "no wallet"
            before = Decimal(hit[0])
            cur.execute("SELECT order_sn FROM hg_trading_order WHERE id = %s", (order_id,))
            (sn,) = cur.fetchone()
            try:
                cur.execute(
                    "INSERT INTO hg_toogo_power_consume (user_id, robot_id, order_id, order_sn,"
                    " profit_amount, consume_rate, consume_power, from_power, vip_level,"
                    " discount_rate, original_power) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 1,"
                    " 0, %s)",
                    (user, account.robot_id, order_id, sn, profit, RATE, amount, amount, amount),
                )
            except pymysql.err.IntegrityError:  # the daemon's row: uk_user_order
                return "refused"
            cur.execute(
                "UPDATE hg_toogo_wallet SET power = power - %s, total_power_consume"
                " = total_power_consume + %s WHERE user_id = %s",
                (amount, amount, user),
            )
            cur.execute(
                "INSERT INTO hg_toogo_wallet_log (user_id, account_type, change_type,"
                " change_amount, before_amount, after_amount, related_id, related_type, order_sn,"
                " remark) VALUES (%s, 'power', 'power_consume', %s, %s, %s, %s, 'trading_order',"
                " %s, %s)",
                (user, -amount, before, before - amount, order_id, sn, LEGACY_REMARK),
            )
            return "charged"

        def found(cur: Cursor) -> str | None:
            cur.execute(
                "SELECT 1 FROM hg_toogo_wallet_log WHERE related_id = %s AND remark = %s",
                (order_id, LEGACY_REMARK),
            )
            return "charged" if cur.fetchone() else None

        outcome = self.sql.transaction(consume, what="legacy ConsumePower", done=found)
        if outcome in ("refused", "charged already"):
            self.counts.legacy_refused += 1
        if outcome != "charged":
            return
        self.counts.legacy += 1
        if lose_flag:
            self.counts.lost_flags += 1
            return

        def flag(cur: Cursor) -> None:
            cur.execute(
                "UPDATE hg_trading_order SET power_consumed = 1, power_amount = %s WHERE id = %s",
                (amount, order_id),
            )

        self.sql.transaction(flag, what="set power_consumed")

    # -- trading -------------------------------------------------------------------------------

    def trade(self, robot: Robot, at: datetime) -> float:
        """One step of a robot: open a position or close it; seconds until its next step."""
        account = robot.account
        if robot.position is None:
            kind = self.rnd.choices([k for k, _ in KINDS], [w for _, w in KINDS])[0]
            direction = self.rnd.choice(("long", "short"))
            position = Position(kind, direction, at)
            if kind != "hand_only":
                position.order_id = self.open(account, direction, at)
            robot.position = position
            return self.rnd.uniform(4, 15)  # holding
        position = robot.position
        if position.late is not None:  # the engine writes a close it was late with
            robot.position = None
            self.record_close(account, position, *position.late)
            return self.rnd.uniform(8, 20)
        profit = self.rnd.randint(1, 40) if self.rnd.random() < 0.7 else -self.rnd.randint(1, 30)
        _, closing_id = self.exchange_close(account, position.kind, position.direction, profit, at)
        if position.kind == "engine" and self.rnd.random() < 0.15:
            # the engine's own write comes seconds late: the history sync may close it first
            position.late = (profit, at, closing_id)
            return self.rnd.uniform(2, 8)
        robot.position = None
        if position.kind == "hand_open":
            self.counts.hand_open += 1
        elif position.kind == "hand_only":
            self.counts.hand_only += 1
        else:
            self.record_close(account, position, profit, at, closing_id)
        # positions of a stream never overlap and are further apart than the match tolerance
        return self.rnd.uniform(8, 20)

    def record_close(
        self, account: Account, position: Position, profit: int, at: datetime, closing_id: str
    ) -> None:
        """The engine's close of its order, then (sometimes) the legacy ConsumePower - which
        runs whether the engine's UPDATE found the order open or not (it never looked)."""
        assert position.order_id is not None
        self.close(position.order_id, position.direction, profit, position.opened, at, closing_id)
        if profit > 0:
            self.hot.append(account.user_id)
            if self.rnd.random() < 0.35:
                lose = self.rnd.random() < 0.6
                self.legacy_charge(account, position.order_id, Decimal(profit), lose)

    def backfill(self, positions: int, now: datetime) -> None:
        """History before the daemons start: ``positions`` per robot over the last hours."""
        for robot in self.robots:
            at = now - timedelta(minutes=40 + self.rnd.uniform(0, 2))
            for _ in range(2 * positions):
                wait = self.trade(robot, at)
                at += timedelta(seconds=wait * 6)

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                now = time.monotonic()
                for robot in self.robots:
                    if robot.due <= now and not stop.is_set():
                        robot.due = now + self.trade(robot, datetime.now(UTC))
                nearest = min(r.due for r in self.robots)
                stop.wait(max(0.0, min(0.25, nearest - time.monotonic())))
        except BaseException as exc:  # reported as a violation by the simulation
            self.error = exc
        finally:
            self.sql.close()


@dataclass
class GoWallet:
    """``ChangeBalance``: read without a lock, write an absolute balance later, log it."""

    port: int
    cast: Cast
    hot: deque[int]
    seed: int
    counts: Counts
    error: BaseException | None = None
    ops: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def write(self, sql: Sql, rnd: random.Random, stop: threading.Event) -> None:
        users = list(self.hot) if self.hot and rnd.random() < 0.7 else self.cast.users
        user = rnd.choice(users)
        change = (
            Decimal(rnd.randint(100, 5000)) / 100
            if rnd.random() < 0.6
            else -Decimal(rnd.randint(10, 500)) / 100
        )
        op = next(self.ops)
        gap = rnd.uniform(0.1, 2.5)

        def read(cur: Cursor) -> Decimal | None:
            cur.execute("SELECT power FROM hg_toogo_wallet WHERE user_id = %s", (user,))
            hit = cur.fetchone()
            return Decimal(hit[0]) if hit else None

        seen = sql.transaction(read, what="read a wallet")
        if seen is None:
            return
        stop.wait(gap)  # the Go handler does other things between its read and its write
        marker = f"{GO_REMARK} {op} "
        after = seen + change

        def write(cur: Cursor) -> bool:
            cur.execute("SELECT power FROM hg_toogo_wallet WHERE user_id = %s FOR UPDATE", (user,))
            (current,) = cur.fetchone()
            cur.execute("UPDATE hg_toogo_wallet SET power = %s WHERE user_id = %s", (after, user))
            cur.execute(
                "INSERT INTO hg_toogo_wallet_log (user_id, account_type, change_type,"
                " change_amount, before_amount, after_amount, related_type, remark)"
                " VALUES (%s, 'power', %s, %s, %s, %s, 'admin', %s)",
                (
                    user,
                    "recharge" if change > 0 else "deduct",
                    change,
                    seen,
                    after,
                    f"{marker}current {Decimal(current)}",
                ),
            )
            return Decimal(current) != seen

        def found(cur: Cursor) -> bool | None:
            cur.execute(
                "SELECT remark, before_amount FROM hg_toogo_wallet_log WHERE remark LIKE %s",
                (marker + "%",),
            )
            hit = cur.fetchone()
            return None if hit is None else Decimal(hit[0].rsplit(" ", 1)[1]) != Decimal(hit[1])

        overwrote = sql.transaction(write, what="ChangeBalance", done=found)
        self.counts.go_writes += 1
        self.counts.go_overwrites += overwrote

    def run(self, stop: threading.Event) -> None:
        rnd = random.Random(f"go-{self.seed}")
        sql = Sql(self.port)
        try:
            while not stop.wait(rnd.uniform(0.3, 1.5)):
                self.write(sql, rnd, stop)
        except BaseException as exc:
            self.error = exc
        finally:
            sql.close()


def remark_fields(remark: str) -> tuple[int, Decimal] | None:
    """(op, the balance it overwrote) of a Go write's ledger remark; None for other rows."""
    if not remark.startswith(GO_REMARK + " "):
        return None
    parts = remark.split(" ")
    return int(parts[2]), Decimal(parts[4])
