"""Benchmark of the history sync (issue 5): many robots over the five fake exchanges and MariaDB.

Run from the repository root::

    .venv/bin/python -m bench.bench_history [--robots 1000] [--accounts 300] [--per-day 20]
        [--days 7] [--symbols 2] [--concurrency 8] [--profile cold.prof] [--sql-stats]

What it does, on a fresh uniquely named MariaDB database (created, then dropped; needs the
local server 127.0.0.1:3306 root, no password; env TOOGO_BENCH_MYSQL overrides):

1. creates hotgo's schema (with ``uk_user_order``) and the daemon's own tables;
2. seeds ``--accounts`` API accounts spread round-robin over binance/okx/gate/bitget/bybit, each
   its own user with a wallet, ``base_url`` pointing at that platform's fake exchange and its
   own API key/secret/passphrase; and ``--robots`` running robots (status 2): robot i is on
   account i mod A with symbol (i div A) mod S, so several robots share one (account, symbol)
   stream;
3. fills each fake with every stream's closed positions in the exchange's wire format:
   (robots on the stream) x ``--per-day`` x ``--days`` records, close times spread at random
   over the last ``--days`` days relative to real now (the oldest 6 hours inside the look-back,
   so a stream synced late in a long cold cycle still sees all of them; the newest 15 minutes
   back, outside the sync's 10-minute overlap, so the quiet cycle is quiet), ~70 % profitable
   (``--win-rate``), longs and shorts;
4. runs the real ``HistorySync`` (real ``PowerConsumer``, real ``ExchangeRegistry`` with real
   ccxt clients and each exchange's real ccxt rate limit, production option defaults) once cold
   and once more (the quiet cycle), and prints both cycles' figures;
5. verifies: one local order per exchange record (right account, ``order_sn``), one consume row
   and one ledger row per profitable order and none for a losing one, wallets debited exactly,
   one ``power consumed`` audit line per charge;
6. writes the same rows again with a handful of multi-row statements (the set-based reference,
   ``set_based_reference``), verifies them the same way and prints both rates.

The fakes serve one host per platform (as production has), and tell accounts apart by the API
key each request carries: each account sees only its own records, and markets are fetched once
per platform. Audit logs go (JSON, as in production) to a temporary file, not the terminal.
The fakes run in this process: its CPU figure includes serving the requests (small next to the
database work: the exchange side is ~2 % of the cold cycle's profile). The MariaDB CPU figure
is the whole server's, so it includes anyone else's load on it.

``--profile FILE`` runs the cold cycle under cProfile (about 2x slower) and prints the top
functions; ``--sql-stats`` prints statement counts and client-side wall time per statement kind.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import random
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pymysql
from aiohttp import web
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from bench.drain_servers import charge_set_based
from daemon.logs import configure_logging
from exchange_adapters.options import CCXT_PLATFORMS, AdapterOptions
from exchange_adapters.registry import ExchangeRegistry
from kits.fake_exchanges import FAKES, FakeExchange
from kits.fake_exchanges.harness import DAY_MS, closed_record, record_key_of
from kits.upstream import create_upstream_schema
from reconcile.charging.consumer import PowerConsumer
from reconcile.charging.pricing import PowerRules
from reconcile.records import ApiAccount, ClosedPositionSource, ClosedWindow
from reconcile.storage.db import Database, DatabaseSettings
from reconcile.storage.schema import (
    toogo_user,
    trading_api_config,
    trading_robot,
    wallet,
)
from reconcile.sync.history import HistorySync
from reconcile.sync.record_rows import order_sn_for
from reconcile.sync.settings import SyncSettings
from reconcile.sync.window import SyncSummary

SERVER = os.environ.get("TOOGO_BENCH_MYSQL", "mysql+aiomysql://root@127.0.0.1:3306")
PLATFORMS = CCXT_PLATFORMS
#: (base coin for the fake's records, the robot's symbol as hotgo spells it)
MARKETS = (("BTC", "BTC_USDT"), ("ETH", "ETHUSDT"), ("1000PEPE", "1000PEPE-USDT"))
#: the header each exchange carries the API key in (how the fake tells accounts apart)
KEY_HEADERS = {
    "binance": "X-MBX-APIKEY",
    "okx": "OK-ACCESS-KEY",
    "gate": "KEY",
    "bitget": "ACCESS-KEY",
    "bybit": "X-BAPI-API-KEY",
}
RULES = PowerRules(Decimal("0.10"), Decimal("0.01"))
START_POWER = Decimal("100000")
MINUTE_MS = 60_000


# -- fakes that serve many accounts ---------------------------------------------------------------


@dataclass
class Book:
    """One API account on a fake: its credentials and its closed positions (wire format)."""

    api_key: str
    secret: str
    passphrase: str
    records: list[dict[str, Any]] = field(default_factory=list)


class AccountBooks:
    """Makes one fake exchange serve many accounts, told apart by the request's API key.

    Before each request the fake's credentials and record list are switched to the account's.
    Safe under concurrency: a fake checks the signature and builds its answer synchronously
    (nothing in between awaits), so no other request can switch them meanwhile.
    """

    def __init__(self, fake: FakeExchange) -> None:
        self.fake = fake
        self.header = KEY_HEADERS[fake.platform]
        self.books: dict[str, Book] = {}
        inner = fake._answer

        async def answer(route: Any, request: web.Request) -> web.StreamResponse:
            book = self.books.get(request.headers.get(self.header, ""))
            if book is None:  # a public call (markets), or an unknown key: the fake refuses it
                fake.api_key, fake.records = "-no-such-key-", []
            else:
                fake.api_key, fake.secret, fake.passphrase = (
                    book.api_key,
                    book.secret,
                    book.passphrase,
                )
                fake.records = book.records
            return await inner(route, request)

        fake._answer = answer  # type: ignore[method-assign]

    def add(self, account_id: int) -> Book:
        book = Book(
            f"bench-key-{self.fake.platform}-{account_id}",
            f"bench-secret-{account_id}-{uuid.uuid4().hex[:8]}",
            f"bench-pass-{account_id}",
        )
        self.books[book.api_key] = book
        return book


# -- timing the exchange side -------------------------------------------------------------------


@dataclass
class FetchStats:
    calls: int = 0
    seconds: float = 0.0
    records: int = 0


class TimedSource:
    """A source that adds its fetch time to ``stats`` (the sync's time outside the database)."""

    def __init__(self, inner: ClosedPositionSource, stats: FetchStats) -> None:
        self.inner = inner
        self.stats = stats
        self.platform = inner.platform
        self.account_id = inner.account_id

    async def fetch_closed(self, symbol: str, since: datetime, until: datetime) -> ClosedWindow:
        started = time.perf_counter()
        try:
            window = await self.inner.fetch_closed(symbol, since, until)
        finally:
            self.stats.calls += 1
            self.stats.seconds += time.perf_counter() - started
        self.stats.records += len(window.records)
        return window

    async def close(self) -> None:
        await self.inner.close()


class TimedProvider:
    def __init__(self, inner: ExchangeRegistry) -> None:
        self.inner = inner
        self.stats = FetchStats()

    def source_for(self, account: ApiAccount) -> ClosedPositionSource:
        return TimedSource(self.inner.source_for(account), self.stats)

    def profit_basis(self, account: ApiAccount) -> str:
        return self.inner.profit_basis(account)

    def requests(self) -> int:
        return self.inner.requests()


# -- statement statistics -------------------------------------------------------------------------


class SqlStats:
    """Statement count and client-side wall time (includes waiting for the event loop)."""

    _LIST = re.compile(r"%s(?:,\s*%s)+")
    _SPACE = re.compile(r"\s+")

    def __init__(self, db: Database) -> None:
        self.count: Counter[str] = Counter()
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.enabled = False
        engine = db.engine.sync_engine
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    def _kind(self, statement: str) -> str:
        text = self._LIST.sub("%s…", self._SPACE.sub(" ", statement)).strip()
        head, where, rest = text.partition(" WHERE ")
        if not where:
            return text[:120]
        return f"{head[:40]}… WHERE {rest[:190]}"

    def _before(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        conn.info.setdefault("bench_started", []).append(time.perf_counter())

    def _after(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        started = conn.info["bench_started"].pop()
        if self.enabled:
            kind = self._kind(statement)
            self.count[kind] += 1
            self.seconds[kind] += time.perf_counter() - started

    def report(self, records: int, top: int = 14) -> list[str]:
        total = sum(self.count.values())
        lines = [f"  statements: {total} ({total / max(records, 1):.1f} per record)"]
        for kind, secs in sorted(self.seconds.items(), key=lambda kv: -kv[1])[:top]:
            n = self.count[kind]
            lines.append(f"  {secs:7.1f} s {n:7d} x {1000 * secs / n:6.2f} ms  {kind}")
        return lines


# -- the scenario ---------------------------------------------------------------------------------


@dataclass
class Scenario:
    robots: int
    accounts: int
    per_day: int
    days: int
    symbols: int
    win_rate: float
    seed: int
    #: (account_id, record_key) -> profitable?
    expected: dict[tuple[int, str], bool] = field(default_factory=dict)
    streams: int = 0
    shared_streams: int = 0

    def platform_of(self, account_id: int) -> str:
        return PLATFORMS[(account_id - 1) % len(PLATFORMS)]

    def user_of(self, account_id: int) -> int:
        return 10_000 + account_id

    def robot_rows(self) -> list[dict[str, Any]]:
        rows = []
        for i in range(self.robots):
            account_id = i % self.accounts + 1
            _, symbol = MARKETS[(i // self.accounts) % self.symbols]
            rows.append(
                {
                    "id": i + 1,
                    "tenant_id": 3,
                    "user_id": self.user_of(account_id),
                    "api_config_id": account_id,
                    "robot_name": f"bench robot {i + 1}",
                    "exchange": self.platform_of(account_id),
                    "symbol": symbol,
                    "leverage": 10,
                    "status": 2,
                }
            )
        return rows

    def fill(self, books: dict[int, Book], now_ms: int) -> None:
        """Every stream's closed positions, spread over the last ``days`` days."""
        rng = random.Random(self.seed)
        per_stream: Counter[tuple[int, str]] = Counter(
            (r["api_config_id"], r["symbol"]) for r in self.robot_rows()
        )
        self.streams = len(per_stream)
        self.shared_streams = sum(1 for n in per_stream.values() if n > 1)
        newest = now_ms - 15 * MINUTE_MS  # outside the 10-minute overlap: the quiet cycle is quiet
        # 6 hours inside the look-back: a stream synced late in a long cold cycle still sees all
        oldest = now_ms - self.days * DAY_MS + 360 * MINUTE_MS
        base_of = {symbol: base for base, symbol in MARKETS}
        for (account_id, symbol), robots in sorted(per_stream.items()):
            platform = self.platform_of(account_id)
            for _ in range(robots * self.per_day * self.days):
                win = rng.random() < self.win_rate
                profit = rng.randint(1, 40) if win else rng.randint(-30, -1)
                [raw] = closed_record(
                    platform,
                    close_ms=rng.randint(oldest, newest),
                    symbol=base_of[symbol],
                    profit=str(profit),
                    long=rng.random() < 0.5,
                )
                books[account_id].records.append(raw)
                self.expected[(account_id, record_key_of(platform, raw))] = win


# -- database ---------------------------------------------------------------------------------


def admin(name: str | None = None) -> pymysql.connections.Connection:
    url = make_url(SERVER)
    return pymysql.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 3306,
        user=url.username or "root",
        password=url.password or "",
        database=name,
        autocommit=True,
    )


async def seed(
    db: Database, scenario: Scenario, books: dict[int, Book], fakes: dict[str, FakeExchange]
) -> None:
    async def create(conn: AsyncConnection) -> None:
        # hotgo's tables from upstream's own DDL, plus what `migrate up` adds
        await create_upstream_schema(conn, with_unique_key=True)

    await db.transaction(create, what="create schema")
    accounts = []
    for account_id, book in sorted(books.items()):
        platform = scenario.platform_of(account_id)
        accounts.append(
            {
                "id": account_id,
                "user_id": scenario.user_of(account_id),
                "api_name": f"bench {platform} {account_id}",
                "platform": platform,
                "base_url": fakes[platform].url,
                "api_key": book.api_key,
                "secret_key": book.secret,
                "passphrase": book.passphrase,
                "status": 1,
            }
        )
    users = [scenario.user_of(a) for a in books]
    now = db.now()

    async def insert(conn: AsyncConnection) -> None:
        await conn.execute(trading_api_config.insert(), accounts)
        await conn.execute(trading_robot.insert(), scenario.robot_rows())
        await conn.execute(
            wallet.insert(),
            [
                {
                    "user_id": u,
                    "power": START_POWER,
                    "gift_power": Decimal(5),
                    "total_power_consume": Decimal(0),
                    "created_at": now,
                    "updated_at": now,
                }
                for u in users
            ],
        )
        await conn.execute(
            toogo_user.insert(),
            [  # every 4th user has a VIP discount
                {
                    "member_id": u,
                    "vip_level": 3,
                    "power_discount": Decimal("12.50"),
                    "invite_code": f"B{u}",
                }
                for u in users
                if u % 4 == 0
            ],
        )

    await db.transaction(insert, what="seed accounts and robots")


def verify(name: str, scenario: Scenario, log_path: Path) -> dict[str, int]:
    """Exactly the expected orders, consume rows, ledger rows and wallets; raises if not."""
    conn = admin(name)
    expected = scenario.expected
    winners = sum(expected.values())
    with conn.cursor() as cur:
        cur.execute("""SELECT r.api_config_id, b.record_key, o.order_sn, o.realized_profit,
                o.power_consumed, o.power_amount, o.status
            FROM hg_trading_order o JOIN hg_trading_robot r ON r.id = o.robot_id
            JOIN toogo_reconcile_binding b ON b.primary_order_id = o.id
                AND b.account_id = r.api_config_id""")
        orders = cur.fetchall()
        keys = [(int(acct), str(key)) for acct, key, *_ in orders]
        assert len(orders) == len(expected), (len(orders), len(expected))
        assert set(keys) == set(expected), "local orders differ from the exchange records"
        for acct, key, sn, profit, consumed, amount, status in orders:
            assert status == 2 and sn == order_sn_for(scenario.platform_of(acct), acct, key)
            assert (profit > 0) == expected[(acct, key)], (acct, key, profit)
            assert bool(consumed) == (profit > 0) and (amount > 0) == (profit > 0)
        cur.execute(
            "SELECT COUNT(*), COUNT(DISTINCT user_id, order_id), SUM(consume_power)"
            " FROM hg_toogo_power_consume"
        )
        consume_rows, distinct, total = cur.fetchone()
        assert consume_rows == distinct == winners, (consume_rows, distinct, winners)
        cur.execute("""SELECT COUNT(*) FROM hg_toogo_power_consume c JOIN hg_trading_order o
            ON o.id = c.order_id AND o.user_id = c.user_id
            WHERE o.realized_profit > 0 AND o.power_consumed = 1
              AND o.power_amount = c.consume_power""")
        assert cur.fetchone()[0] == winners
        cur.execute(
            "SELECT COUNT(*), -SUM(change_amount) FROM hg_toogo_wallet_log"
            " WHERE change_type = 'power_consume'"
        )
        ledger, logged = cur.fetchone()
        assert ledger == winners and logged == total, (ledger, logged, total)
        cur.execute(
            "SELECT SUM(%s - power), SUM(total_power_consume), SUM(gift_power)"
            " FROM hg_toogo_wallet",
            (START_POWER,),
        )
        debited, consumed_total, gift = cur.fetchone()
        assert debited == consumed_total == total, (debited, consumed_total, total)
        assert gift == 5 * scenario.accounts, gift  # gift power is never touched
    conn.close()
    audit = sum(
        1
        for line in log_path.read_bytes().splitlines()
        if orjson.loads(line).get("event") == "power consumed"
    )
    assert audit == winners, (audit, winners)
    return {
        "orders": len(orders),
        "consume_rows": consume_rows,
        "ledger_rows": ledger,
        "audit_lines": audit,
    }


# -- the set-based reference ----------------------------------------------------------------------

ORDER_COLUMNS = (
    "tenant_id",
    "user_id",
    "robot_id",
    "order_sn",
    "exchange_order_id",
    "symbol",
    "direction",
    "open_price",
    "close_price",
    "close_order_id",
    "quantity",
    "leverage",
    "margin",
    "realized_profit",
    "open_time",
    "close_time",
    "hold_duration",
    "status",
    "close_reason",
    "remark",
    "created_at",
    "updated_at",
)


def set_based_reference(name: str, expected: int) -> float:
    """The rows the cold cycle wrote, written again by a handful of multi-row statements.

    Untimed: the cycle's orders and bindings are read back into the client, and the tables are
    returned to their state before the cycle (orders, bindings, consume and ledger rows gone,
    wallets at their start). Timed, in one transaction: multi-row INSERTs of the orders (1,000
    rows a statement, as the client sends them), one INSERT ... SELECT of the bindings, and
    the four set-based charging statements of bench/drain.py (same formula and rounding)."""
    conn = admin(name)
    cols = ", ".join(ORDER_COLUMNS)
    with conn.cursor() as cur:
        cur.execute(f"SELECT {cols} FROM hg_trading_order ORDER BY id")
        orders = cur.fetchall()
        cur.execute(
            "SELECT b.platform, b.account_id, b.record_key, o.order_sn, b.kind, b.rule"
            " FROM toogo_reconcile_binding b JOIN hg_trading_order o"
            " ON o.id = b.order_id"
        )
        bindings = cur.fetchall()
        assert len(orders) == len(bindings) == expected
        cur.execute(
            "CREATE TEMPORARY TABLE ref_binding (platform VARCHAR(20), account_id BIGINT,"
            " record_key VARCHAR(128), order_sn VARCHAR(64) PRIMARY KEY, kind VARCHAR(10),"
            " rule VARCHAR(20))"
        )
        cur.executemany("INSERT INTO ref_binding VALUES (%s, %s, %s, %s, %s, %s)", bindings)
        for table in (
            "toogo_reconcile_binding",
            "hg_toogo_wallet_log",
            "hg_toogo_power_consume",
            "hg_trading_order",
        ):
            cur.execute(f"DELETE FROM {table}")
        cur.execute(
            "UPDATE hg_toogo_wallet SET power = %s, total_power_consume = 0", (START_POWER,)
        )
    marks = "(" + ", ".join(["%s"] * len(ORDER_COLUMNS)) + ")"
    started = time.perf_counter()
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        for start in range(0, len(orders), 1000):
            chunk = orders[start : start + 1000]
            cur.execute(
                f"INSERT INTO hg_trading_order ({cols}) VALUES " + ", ".join([marks] * len(chunk)),
                [v for row in chunk for v in row],
            )
        cur.execute("""INSERT INTO toogo_reconcile_binding (platform, account_id, record_key,
            order_id, primary_order_id, kind, rule, created_at)
            SELECT r.platform, r.account_id, r.record_key, o.id, o.id, r.kind, r.rule, NOW()
            FROM ref_binding r JOIN hg_trading_order o ON o.order_sn = r.order_sn""")
        charge_set_based(cur)  # bench/drain.py's four set-based statements
        cur.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


# -- the run ------------------------------------------------------------------------------------


def code_version() -> str:
    """The commit the measured code is at (and whether the library code differs from it)."""
    git = shutil.which("git")
    if git is None:
        return "unknown commit"
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            [git, "rev-parse", "--short", "HEAD"],
            cwd=root,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        dirty = subprocess.run(
            [git, "status", "--porcelain", "--", "reconcile", "exchange_adapters"],
            cwd=root,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit"
    return f"commit {head}" + (
        " + uncommitted changes in reconcile/exchange_adapters" if dirty else ""
    )


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"


def server_pid() -> int | None:
    """The MariaDB server's pid (to read its CPU time), if it runs on this machine."""
    try:
        conn = admin()
        with conn.cursor() as cur:
            cur.execute("SELECT @@pid_file")
            pid_file = Path(cur.fetchone()[0])
        conn.close()
        return int(pid_file.read_text().strip())
    except (OSError, ValueError, pymysql.MySQLError):
        return None


def cpu_seconds(pid: int | None) -> float | None:
    """utime + stime of a process, from /proc (None when unreadable)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Cycle:
    summary: SyncSummary
    wall: float
    requests: Counter[str]
    fetch: FetchStats
    client_cpu: float
    server_cpu: float | None


async def run_cycle(
    sync: HistorySync,
    provider: TimedProvider,
    fakes: dict[str, FakeExchange],
    profile: cProfile.Profile | None,
    server: int | None,
) -> Cycle:
    for fake in fakes.values():
        fake.reset_counts()
    provider.stats = FetchStats()
    server_before = cpu_seconds(server)
    cpu_before = time.process_time()
    started = time.perf_counter()
    if profile is not None:
        profile.enable()
    try:
        summary = await sync.run_cycle()
    finally:
        if profile is not None:
            profile.disable()
    wall = time.perf_counter() - started
    client_cpu = time.process_time() - cpu_before
    server_after = cpu_seconds(server)
    server_cpu = (
        None if server_before is None or server_after is None else server_after - server_before
    )
    requests: Counter[str] = Counter()
    for platform, fake in fakes.items():
        requests[platform] = fake.count("closed")
        requests["markets"] += fake.count("markets")
    return Cycle(summary, wall, requests, provider.stats, client_cpu, server_cpu)


def describe(label: str, c: Cycle) -> list[str]:
    s, wall, requests, fetch = c.summary, c.wall, c.requests, c.fetch
    closed = sum(n for k, n in requests.items() if k != "markets")
    upserted = s.inserted + s.closed + s.matched
    by_platform = ", ".join(f"{p} {requests[p]}" for p in PLATFORMS)
    per_record = max(s.records, 1) / 1000
    server = "n/a" if c.server_cpu is None else f"{c.server_cpu:.1f} s"
    lines = [
        f"{label} cycle: {wall:.2f} s wall (summary.elapsed {s.elapsed:.2f} s), "
        f"streams {s.streams}, records {s.records}",
        f"  inserted {s.inserted}, closed {s.closed}, matched {s.matched}, parts {s.parts}, "
        f"ambiguous {s.ambiguous}, charged {s.charged}, "
        f"skipped_duplicate {s.skipped_duplicate}, failed_streams {s.failed_streams}, "
        f"skipped_streams {s.skipped_streams}",
        f"  requests: {closed} closed-position requests = {closed / max(s.streams, 1):.2f} per "
        f"stream ({by_platform}); + {requests['markets']} markets; summary.requests "
        f"{s.requests}",
        f"  rows upserted {upserted} = {upserted / wall:.0f} rows/s; charged "
        f"{s.charged / wall:.0f}/s",
        f"  exchange fetches: {fetch.calls} calls, {fetch.seconds:.1f} s summed over streams "
        f"(mean {fetch.seconds / max(fetch.calls, 1):.2f} s)",
        f"  CPU: this process {c.client_cpu:.1f} s, MariaDB server {server} (whole server: "
        "includes anyone else's load)",
    ]
    if s.records:
        server_ms = "" if c.server_cpu is None else f", server {c.server_cpu / per_record:.2f}"
        lines.append(f"  CPU ms per record: client {c.client_cpu / per_record:.2f}{server_ms}")
    return lines


async def bench(args: argparse.Namespace, log_stream: Any, log_path: Path) -> None:
    scenario = Scenario(
        args.robots, args.accounts, args.per_day, args.days, args.symbols, args.win_rate, args.seed
    )
    name = f"trc_bench_hist_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin().cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    fakes = {p: FAKES[p]() for p in PLATFORMS}
    try:
        for fake in fakes.values():
            await fake.start()
        books_by_platform = {p: AccountBooks(f) for p, f in fakes.items()}
        books = {
            a: books_by_platform[scenario.platform_of(a)].add(a)
            for a in range(1, args.accounts + 1)
        }
        db = Database(DatabaseSettings(url=f"{SERVER}/{name}", pool_size=args.pool_size))
        await db.open()
        try:
            await seed(db, scenario, books, fakes)
            started = time.perf_counter()
            scenario.fill(books, int(time.time() * 1000))
            fill_s = time.perf_counter() - started
            winners = sum(scenario.expected.values())
            print(f"database {name}; code at {code_version()}; {load()}")
            print(
                f"{args.robots} robots on {args.accounts} accounts (5 exchanges), "
                f"{scenario.streams} streams ({scenario.shared_streams} shared by several "
                f"robots), {len(scenario.expected)} closed positions ({winners} profitable) "
                f"over {args.days} days; fakes filled in {fill_s:.1f} s"
            )
            # the accounts' base_url points each at its fake
            if args.rate_limit_ms is None:
                options = AdapterOptions(timeout=10.0, account_base_url=True)
                print("budgets: each exchange's real one (production defaults)")
            else:
                options = AdapterOptions(
                    timeout=10.0, rate_limit_ms=args.rate_limit_ms, account_base_url=True
                )
                print(f"ccxt rate limits: ADDED at {args.rate_limit_ms} ms for every exchange")
            sql = SqlStats(db) if args.sql_stats else None
            async with ExchangeRegistry({p: options for p in PLATFORMS}) as registry:
                provider = TimedProvider(registry)
                sync = HistorySync(
                    db,
                    PowerConsumer(db, RULES),
                    provider,
                    SyncSettings(concurrency=args.concurrency, platforms=frozenset(PLATFORMS)),
                )
                profile = cProfile.Profile() if args.profile else None
                server = server_pid()
                if sql is not None:
                    sql.enabled = True
                cold_cycle = await run_cycle(sync, provider, fakes, profile, server)
                if sql is not None:
                    sql.enabled = False
                print(f"cold cycle finished; {load()}")
                for line in describe("cold", cold_cycle):
                    print(line)
                quiet_cycle = await run_cycle(sync, provider, fakes, None, server)
                for line in describe("quiet", quiet_cycle):
                    print(line)
                cold, quiet = cold_cycle.summary, quiet_cycle.summary
                assert cold.ok and quiet.ok, "a stream failed: see the log " + str(log_path)
                assert cold.records == len(scenario.expected) and cold.charged == winners
                assert cold.inserted == len(scenario.expected)
                assert quiet.records == quiet.inserted == quiet.charged == 0
            log_stream.flush()
            figures = verify(name, scenario, log_path)
            print(
                "verified: "
                + ", ".join(f"{k} {v}" for k, v in figures.items())
                + " - one local order per record, one consume row, ledger row and audit line"
                " per profitable order, none for losing ones, wallets exact"
            )
            ref_seconds = set_based_reference(name, len(scenario.expected))
            verify(name, scenario, log_path)
            rows = len(scenario.expected)
            print(
                f"set-based reference: the same {rows} orders, their bindings, consume rows, "
                f"ledger rows and wallets in {ref_seconds:.2f} s = {rows / ref_seconds:.0f} "
                f"rows/s; the cold cycle reached {rows / cold.elapsed / (rows / ref_seconds):.2f}"
                " of it (verified the same way)"
            )
            if sql is not None:
                print("cold cycle SQL (client-side wall time per statement kind):")
                for line in sql.report(cold.records):
                    print(line)
            if profile is not None:
                profile.dump_stats(args.profile)
                out = io.StringIO()
                stats = pstats.Stats(profile, stream=out).strip_dirs()
                stats.sort_stats("tottime").print_stats(args.profile_top)
                stats.sort_stats("cumulative").print_stats(args.profile_top)
                print(f"cProfile of the cold cycle (saved to {args.profile}):")
                print(out.getvalue())
        finally:
            await db.close()
    finally:
        for fake in fakes.values():
            await fake.stop()
        if args.keep:
            print(f"kept database {name}")
        else:
            with admin().cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--robots", type=int, default=1000)
    parser.add_argument("--accounts", type=int, default=300)
    parser.add_argument("--per-day", type=int, default=20, help="closes per robot per day")
    parser.add_argument(
        "--days",
        type=int,
        default=7,
        choices=range(1, 8),
        metavar="1..7",
        help="days of history (the sync looks back 7)",
    )
    parser.add_argument("--symbols", type=int, default=2, choices=(1, 2, 3))
    parser.add_argument("--win-rate", type=float, default=0.7, help="share of profitable closes")
    parser.add_argument("--concurrency", type=int, default=8, help="accounts synced at once")
    parser.add_argument("--pool-size", type=int, default=5, help="database.pool_size")
    parser.add_argument(
        "--rate-limit-ms",
        type=int,
        default=None,
        help="override ccxt's rate limit (default: each exchange's real one)",
    )
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--profile", metavar="FILE", help="cProfile the cold cycle into FILE")
    parser.add_argument("--profile-top", type=int, default=30)
    parser.add_argument("--sql-stats", action="store_true", help="per-statement counts and time")
    parser.add_argument("--keep", action="store_true", help="keep the database (to inspect)")
    parser.add_argument("--log", type=Path, help="keep the JSON audit log in this file")
    args = parser.parse_args()
    if args.robots < args.accounts:
        parser.error("--robots must be at least --accounts (every account has a robot)")
    with tempfile.TemporaryDirectory() as tmp:
        log_path = args.log or Path(tmp) / "history.log"
        with log_path.open("wb") as log_stream:
            configure_logging("json", "info", log_stream)
            asyncio.run(bench(args, log_stream, log_path))


if __name__ == "__main__":
    main()
