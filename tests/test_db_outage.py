"""The database server - a private MariaDB, then a private PostgreSQL - crashes (SIGKILL) or
hangs (SIGSTOP) in the middle of a sweep under ``run`` and comes back (issues 14, 12): run stays
up, says it is unhealthy within 2 s (/healthz 503, no WATCHDOG=1, STATUS= says why) with one
line per change of state, the jobs wait instead of failing every interval, and once the server
answers again every eligible order is charged exactly once. A hung server cannot hold a
transaction forever either (``attempt_timeout``)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from kits import private_postgres
from kits.databases import SERVERS, open_database
from kits.private_mariadb import PrivateMariaDB, free_port, install_template
from kits.private_postgres import PrivatePostgres
from kits.seed import assert_ledger_consistent, consume_count, eligible_ids, seed_backlog
from reconcile.errors import ConnectionLost
from reconcile.storage.db import Database, DatabaseSettings
from reconcile.storage.retries import RetryPolicy
from tests.history_kit import NOW, add_account, add_robot, position, write_replay
from tests.procs import POWER, start_cli, write_config

# seconds the server stays down: the 20 s, shortened for the suite (TOOGO_TEST_OUTAGE=20)
OUTAGE = float(os.environ.get("TOOGO_TEST_OUTAGE", "8"))


Server = PrivateMariaDB | PrivatePostgres


@pytest.fixture(scope="module")
def mariadb_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    datadir = tmp_path_factory.mktemp("mariadb-template") / "data"
    install_template(datadir)
    return datadir


@pytest.fixture(scope="module")
def postgres_template() -> Iterator[Path]:
    root = private_postgres.work_dir()
    try:
        private_postgres.install_template(root / "data")
        yield root / "data"
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=SERVERS)
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    """A private server of the test's own: MariaDB, then PostgreSQL."""
    srv: Server
    if request.param == "mysql":
        datadir = tmp_path / "data"
        shutil.copytree(request.getfixturevalue("mariadb_template"), datadir)
        srv = PrivateMariaDB(datadir)
        root = None
    else:
        root = private_postgres.work_dir()
        private_postgres.copy_template(request.getfixturevalue("postgres_template"), root / "data")
        srv = PrivatePostgres(root / "data")
    srv.start()
    try:
        yield srv
    finally:
        srv.terminate()
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def private_db(server: Server) -> AsyncIterator[tuple[Database, str]]:
    url = server.create_database("toogo")
    db = await open_database(url)
    yield db, url
    await db.close()


class Watch:
    """What an operator watches: /healthz, the notify socket and the log, with arrival times."""

    def __init__(self, health_url: str, sock: socket.socket) -> None:
        self.health_url = health_url
        self.sock = sock
        self.health: list[tuple[float, int]] = []
        self.notes: list[tuple[float, str]] = []
        self.lines: list[tuple[float, bytes]] = []

    def status_since(self, moment: float) -> int | None:
        for at, code in self.health:
            if at >= moment:
                return code
        return None

    def first(self, code: int, after: float) -> float | None:
        return next((at for at, c in self.health if at >= after and c == code), None)

    async def poll_health(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as http:
            while True:
                try:
                    async with http.get(self.health_url) as resp:
                        self.health.append((time.monotonic(), resp.status))
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.1)

    async def read_notes(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 4096)
            self.notes.append((time.monotonic(), data.decode()))

    async def read_log(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.lines.append((time.monotonic(), line))

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for _, line in self.lines]


async def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("mode", ["kill", "hang"])
async def test_server_lost_mid_sweep_and_back(
    server: Server, private_db: tuple[Database, str], tmp_path: Path, mode: str
) -> None:
    """``kill``: SIGKILL, restart after OUTAGE. ``hang``: SIGSTOP, SIGCONT after OUTAGE - the
    connections stay open and nothing answers; the 1 s ping timeout finds it."""
    db, url = private_db
    seeded = await seed_backlog(db, orders=12000, users=300, seed=31)
    eligible = await eligible_ids(db)
    listen = f"127.0.0.1:{free_port()}"
    cfg = write_config(
        tmp_path / "c.yaml",
        url,
        power=POWER,
        metrics={"listen": listen},
        sweep={"page_size": 20, "workers": 2},
        schedule={"compensation_sweep": "3s", "realtime_sweep": "2s", "history_sync": "1h"},
    )
    notify_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(notify_path)
    sock.setblocking(False)
    proc = await start_cli(cfg, "run", NOTIFY_SOCKET=notify_path, WATCHDOG_USEC="1000000")
    assert proc.stdout is not None and proc.stderr is not None
    watch = Watch(f"http://{listen}/healthz", sock)
    tasks = [
        asyncio.create_task(watch.poll_health()),
        asyncio.create_task(watch.read_notes()),
        asyncio.create_task(watch.read_log(proc.stdout)),
    ]
    stderr = asyncio.create_task(proc.stderr.read())
    try:

        async def charging() -> bool:
            assert proc.returncode is None
            return any(b'"power consumed"' in line for _, line in watch.lines)

        await wait_for(charging, 60, "the sweep to charge")
        await wait_for(lambda: _true(bool(watch.health) and watch.health[-1][1] == 200), 10, "200")
        killed_at = time.monotonic()
        if mode == "kill":
            server.kill()  # mid-sweep: pages in flight lose their connection
        else:
            server.pause()  # mid-sweep: pages in flight wait for an answer
        await asyncio.sleep(OUTAGE)
        down_seen = watch.first(503, killed_at)
        if mode == "kill":
            server.start()
        else:
            server.resume()
        restarted_at = time.monotonic()

        async def healthy_again() -> bool:
            return watch.first(200, restarted_at) is not None

        await wait_for(healthy_again, 30, "/healthz 200 after the restart")

        async def all_charged() -> bool:
            return await consume_count(db) >= len(eligible)

        await wait_for(all_charged, 120, "every eligible order charged")
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 60)
        await asyncio.sleep(0.2)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        sock.close()
    err = await stderr
    assert proc.returncode == 0, err.decode()
    assert err == b""

    # unhealthy within 2 s, and throughout the outage
    assert down_seen is not None, "no 503 during the outage"
    print(f"/healthz 503 {down_seen - killed_at:.2f} s after the kill")
    assert down_seen - killed_at <= 2.0
    during = [c for at, c in watch.health if down_seen <= at < restarted_at]
    assert during and set(during) == {503}
    # no watchdog ping while the database was down; STATUS= says why
    reported = next(at for at, n in watch.notes if "database unavailable" in n)
    assert reported - killed_at <= 2.0
    assert not [n for at, n in watch.notes if reported <= at < restarted_at and "WATCHDOG=1" in n]
    assert [n for at, n in watch.notes if at > restarted_at and "WATCHDOG=1" in n]

    # one line per change of state, no storm of retries or aborted sweeps: once the outage is
    # reported, nothing more until the server is back
    quiet = [line for at, line in watch.lines if reported + 1.0 <= at < restarted_at]
    assert not quiet, quiet
    events = watch.events()
    names = [e["event"] for e in events]
    counts = {name: names.count(name) for name in set(names)}
    print({k: v for k, v in counts.items() if k != "power consumed"})
    assert 1 <= counts.get("database down", 0) <= 2
    assert counts.get("database back", 0) == counts.get("database down", 0)
    assert counts.get("db retry", 0) <= 6
    assert counts.get("sweep aborted", 0) == 0 and counts.get("job failed", 0) == 0
    # every eligible order charged exactly once; wallets = initial - sum of consumes
    ledger = await assert_ledger_consistent(db, seeded.initial_power)
    assert ledger["consumes"] == len(eligible)
    charged = [e["order_id"] for e in events if e["event"] == "power consumed"]
    assert set(charged) <= eligible


async def _true(value: bool) -> bool:
    return value


async def test_a_hung_server_cannot_hold_a_transaction_forever(
    server: Server, private_db: tuple[Database, str], logs: list[dict[str, Any]]
) -> None:
    """SIGSTOP in the middle of a transaction: nothing answers, the connection stays open.
    With ``attempt_timeout`` the socket is closed past the limit and the attempt fails as a
    lost connection; the retries are bounded the same way; once the server answers again the
    same Database works."""
    _, url = private_db
    settings = DatabaseSettings(url=url, retry=RetryPolicy(attempts=2, initial=0.01))
    db = Database(settings, attempt_timeout=2.0)
    await db.open()
    paused: list[bool] = []

    async def work(conn: AsyncConnection) -> int:
        await conn.execute(text("SELECT 1"))
        if not paused:
            server.pause()
            paused.append(True)
        return int((await conn.execute(text("SELECT COUNT(*) FROM hg_trading_order"))).scalar_one())

    try:
        started = time.monotonic()
        with pytest.raises(ConnectionLost):
            await db.transaction(work, what="read while the server hangs")
        bounded = time.monotonic() - started
        server.resume()
        assert await db.transaction(work, what="read after the hang") == 0
    finally:
        server.resume()
        await db.close()
    print(f"gave up after {bounded:.2f} s (2 attempts, 2 s limit)")
    assert bounded < 15, "the attempts are bounded by attempt_timeout"
    assert [e for e in logs if e["event"] == "db transaction timed out"]


async def test_server_killed_mid_history_sync_holding_account_locks(
    server: Server, private_db: tuple[Database, str], tmp_path: Path
) -> None:
    """SIGKILL while the history sync upserts and charges a stream's records (each account's
    GET_LOCK held on its own connection), restart after OUTAGE: every record gets exactly one
    order, every profitable one is charged exactly once, and no cursor is ahead of the orders
    committed."""
    db, url = private_db
    accounts = range(60, 66)
    records: list[dict[str, Any]] = []
    for account in accounts:
        await add_account(db, account, user_id=700 + account)
        await add_robot(db, account * 10, user_id=700 + account, account_id=account)
        for n in range(700):
            closed = NOW - timedelta(minutes=5 + n * 7, seconds=account)
            net = str(Decimal(1 + n % 9) * (1 if n % 5 else -1))
            records.append(position(account, f"R{account}-{n}", closed=closed, net=net))
    replay = write_replay(tmp_path / "replay.jsonl", records)
    listen = f"127.0.0.1:{free_port()}"
    cfg = write_config(
        tmp_path / "c.yaml",
        url,
        power=POWER,
        metrics={"listen": listen},
        exchanges={"replay": {"path": str(replay)}},
        sync={"concurrency": 3},
        schedule={"history_sync": "15s", "realtime_sweep": "1h", "compensation_sweep": "1h"},
    )
    proc = await start_cli(cfg, "run")
    assert proc.stdout is not None and proc.stderr is not None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    watch = Watch(f"http://{listen}/healthz", sock)
    tasks = [
        asyncio.create_task(watch.poll_health()),
        asyncio.create_task(watch.read_log(proc.stdout)),
    ]
    profitable = sum(1 for r in records if Decimal(r["net_profit"]) > 0)
    per_account = {a: sum(1 for r in records if r["account_id"] == a) for a in accounts}
    cursors = CursorCheck(db, per_account)
    tasks.append(asyncio.create_task(cursors.run()))
    stderr = asyncio.create_task(proc.stderr.read())
    try:

        async def upserting() -> bool:
            assert proc.returncode is None
            return (
                any(b'"history"' in line for _, line in watch.lines)
                or await _order_count(db) > len(records) // 10
            )

        await wait_for(upserting, 60, "the history sync to write orders")
        killed_at = time.monotonic()
        server.kill()
        await asyncio.sleep(OUTAGE)
        down_seen = watch.first(503, killed_at)
        server.start()
        restarted_at = time.monotonic()

        async def all_recorded() -> bool:
            return await _order_count(db) >= len(records) and await consume_count(db) >= profitable

        await wait_for(all_recorded, 120, "every record's order, every profitable one charged")
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 60)
        await asyncio.sleep(0.2)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        sock.close()
        (tmp_path / "run.log").write_bytes(b"".join(line for _, line in watch.lines))
    err = await stderr
    assert proc.returncode == 0, err.decode()
    assert down_seen is not None and down_seen - killed_at <= 2.0
    assert watch.first(200, restarted_at) is not None
    events = watch.events()
    names = [e["event"] for e in events]
    print({k: names.count(k) for k in set(names) if k != "power consumed"})
    assert 1 <= names.count("database down") <= 2
    assert names.count("stream failed") == 0
    # an account lock's connection dies with the server: its lock is gone with it, and that is
    # no failure of the account nor of the cycle
    assert names.count("job failed") == 0 and names.count("account failed") == 0
    # every record has exactly one order; every profitable one charged exactly once
    async with db.engine.connect() as conn:
        orders = (
            await conn.execute(
                text("SELECT COUNT(*), COUNT(DISTINCT order_sn) FROM hg_trading_order")
            )
        ).one()
    assert tuple(orders) == (len(records), len(records))
    async with db.engine.connect() as conn:  # no binding without its order, one per record
        bound = (
            await conn.execute(
                text(
                    "SELECT COUNT(*), COUNT(o.id) FROM toogo_reconcile_binding b "
                    "LEFT JOIN hg_trading_order o ON o.id = b.order_id"
                )
            )
        ).one()
    assert tuple(bound) == (len(records), len(records))
    ledger = await assert_ledger_consistent(db, {})
    assert ledger["consumes"] == profitable
    # a stream's cursor (complete until now) was never written before all its orders were
    assert cursors.checks > 0 and not cursors.ahead, cursors.ahead
    assert cursors.seen == set(accounts)


class CursorCheck:
    """Polls, whenever the server answers: a stream with a cursor must have all its orders."""

    def __init__(self, db: Database, per_account: dict[int, int]) -> None:
        self.db = db
        self.per_account = per_account
        self.checks = 0
        self.seen: set[int] = set()
        self.ahead: list[tuple[int, int, int]] = []

    async def run(self) -> None:
        while True:
            try:
                async with self.db.engine.connect() as conn, conn.begin():
                    await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
                    cursors = {
                        a
                        for (a,) in await conn.execute(
                            text("SELECT account_id FROM toogo_reconcile_cursor")
                        )
                    }
                    per_account = text(
                        "SELECT r.api_config_id, COUNT(*) FROM hg_trading_order o"
                        " JOIN hg_trading_robot r ON r.id = o.robot_id"
                        " GROUP BY r.api_config_id"
                    )
                    counts = dict((await conn.execute(per_account)).all())
                self.checks += 1
                self.seen |= cursors
                for account in cursors:
                    if counts.get(account, 0) < self.per_account[account]:
                        self.ahead.append((account, counts.get(account, 0), self.checks))
            except Exception:  # noqa: S110 - the server is down: nothing to check
                pass
            await asyncio.sleep(0.2)


async def _order_count(db: Database) -> int:
    async with db.engine.connect() as conn:
        return int((await conn.execute(text("SELECT COUNT(*) FROM hg_trading_order"))).scalar_one())


@pytest.mark.parametrize("mode", ["kill", "hang"])
async def test_sigterm_during_an_outage_is_bounded_by_shutdown_timeout(
    server: Server, private_db: tuple[Database, str], tmp_path: Path, mode: str
) -> None:
    """Jobs waiting for the database cannot finish; SIGTERM cancels them after
    ``shutdown_timeout`` (they wait between transactions) and run exits 0."""
    db, url = private_db
    seeded = await seed_backlog(db, orders=6000, users=200, seed=41)
    cfg = write_config(
        tmp_path / "c.yaml",
        url,
        power=POWER,
        shutdown_timeout="2s",
        sweep={"page_size": 20, "workers": 2},
        schedule={"compensation_sweep": "1h", "realtime_sweep": "1h", "history_sync": "1h"},
    )
    proc = await start_cli(cfg, "run")
    assert proc.stdout is not None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    watch = Watch("http://127.0.0.1:1/unused", sock)
    reader = asyncio.create_task(watch.read_log(proc.stdout))
    try:

        async def charging() -> bool:
            assert proc.returncode is None
            return any(b'"power consumed"' in line for _, line in watch.lines)

        async def down() -> bool:
            return any(b'"database down"' in line for _, line in watch.lines)

        await wait_for(charging, 60, "the sweep to charge")
        if mode == "kill":
            server.kill()
        else:
            server.pause()
        await wait_for(down, 5, "database down")
        proc.send_signal(signal.SIGTERM)
        stopping = time.monotonic()
        await asyncio.wait_for(proc.wait(), 60)
        took = time.monotonic() - stopping
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await asyncio.gather(reader, return_exceptions=True)
        sock.close()
        if mode == "kill":
            server.start()
        else:
            server.resume()
    assert proc.returncode == 0
    names = [e["event"] for e in watch.events()]
    # (a hung server's pooled connections may still log SQLAlchemy's failed reset - a warning,
    # "database connection discarded by the pool" - as the pool is disposed, after "daemon
    # stopped")
    assert "jobs cancelled at shutdown" in names and "daemon stopped" in names
    print(f"stopped {took:.2f} s after SIGTERM (shutdown_timeout 2 s)")
    assert took < 20, "bounded by shutdown_timeout, not by the outage"
    await assert_ledger_consistent(db, seeded.initial_power)
