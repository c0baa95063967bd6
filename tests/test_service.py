"""The daemon as systemd runs it: notify protocol, watchdog, SIGTERM with a sweep in flight,
and several instances sharing one database and the exchanges."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kits.fake_exchanges import FAKES, FakeExchange
from kits.fake_exchanges.harness import closed_record
from kits.seed import assert_ledger_consistent, consume_count, eligible_ids, seed_backlog
from reconcile.storage.db import Database
from tests.history_kit import add_account, add_robot
from tests.procs import POWER, start_cli, write_config


@pytest.fixture
async def notify_socket(tmp_path: Path) -> AsyncIterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    yield path, sock
    sock.close()


async def receive(sock: socket.socket, until: str, timeout: float = 30) -> list[str]:
    """Notify messages until one contains ``until``."""
    loop = asyncio.get_running_loop()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, 4096), deadline - time.monotonic())
        except TimeoutError:
            break
        seen.append(data.decode())
        if until in seen[-1]:
            return seen
    raise AssertionError(f"no {until!r} in {seen}")


async def test_notify_watchdog_and_sigterm_during_a_sweep(
    mysql_db: Database, mysql_url: str, tmp_path: Path, notify_socket: tuple[str, socket.socket]
) -> None:
    seeded = await seed_backlog(mysql_db, orders=20000, users=500, seed=3)
    cfg = write_config(
        tmp_path / "c.yaml",
        mysql_url,
        power=POWER,
        sweep={"page_size": 10, "workers": 1},
        schedule={"realtime_sweep": "1h", "history_sync": "1h"},
    )
    path, sock = notify_socket
    proc = await start_cli(cfg, "run", NOTIFY_SOCKET=path, WATCHDOG_USEC="300000")
    assert proc.stdout is not None
    try:
        ready = await receive(sock, "READY=1")
        beats = await receive(sock, "WATCHDOG=1")
        beats += await receive(sock, "WATCHDOG=1")
        assert sum("WATCHDOG=1" in m for m in beats) >= 2
        # wait until the compensation sweep is charging, then stop the service mid-sweep
        while b'"power consumed"' not in await proc.stdout.readline():
            assert proc.returncode is None
        proc.send_signal(signal.SIGTERM)
        stopping = await receive(sock, "STOPPING=1")
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()
    assert any("STATUS=" in m for m in ready + beats + stopping)
    events = [json.loads(x) for x in out.decode().splitlines() if x.startswith("{")]
    names = [e["event"] for e in events]
    assert "shutdown requested" in names and names[-1] == "daemon stopped"
    [summary] = [
        e for e in events if e["event"] == "sweep summary" and e["job"] == "compensation_sweep"
    ]
    assert summary["interrupted"] is True
    counts = await assert_ledger_consistent(mysql_db, seeded.initial_power)
    assert 0 < counts["consumes"] < len(await eligible_ids(mysql_db))  # stopped mid-way


async def test_three_daemons_share_the_work(
    server_db: Database, server_url: str, tmp_path: Path
) -> None:
    seeded = await seed_backlog(server_db, orders=3000, users=200, seed=9)
    async with FAKES["binance"]() as binance, FAKES["okx"]() as okx:
        fakes: dict[int, FakeExchange] = {}
        now_ms = int(time.time() * 1000)
        for i, fake in enumerate([binance, binance, okx, okx]):
            account = 50 + i
            fakes[account] = fake
            await add_account(
                server_db,
                account,
                user_id=900 + i,
                platform=fake.platform,
                base_url=fake.url,
                api_key=fake.api_key,
                secret_key=fake.secret,
                passphrase=fake.passphrase,
            )
            await add_robot(
                server_db, account * 10, user_id=900 + i, account_id=account, exchange=fake.platform
            )
        for fake in (binance, okx):
            for n in range(6):
                fake.records += closed_record(
                    fake.platform, close_ms=now_ms - (n + 1) * 600_000, profit=str(5 + n)
                )
        exchange = {"timeout": "2s", "retry": {"attempts": 2, "initial": "10ms", "max": "20ms"}}
        cfg = write_config(
            tmp_path / "c.yaml",
            server_url,
            power=POWER,
            exchanges={"binance": exchange, "okx": exchange},
            schedule={"history_sync": "2s", "realtime_sweep": "1s", "compensation_sweep": "3s"},
        )
        binance.reset_counts()
        okx.reset_counts()
        started = time.monotonic()
        procs = [await start_cli(cfg, "run") for _ in range(3)]
        try:
            # a few history cycles at least, and until the backlog is charged (a loaded CI
            # machine may need longer than an idle one)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                await asyncio.sleep(1)
                if time.monotonic() - started >= 7 and await consume_count(server_db) >= len(
                    await eligible_ids(server_db)
                ):
                    break
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            results = [await asyncio.wait_for(p.communicate(), 60) for p in procs]
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
        elapsed = time.monotonic() - started
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err.decode()
    counts = await assert_ledger_consistent(server_db, seeded.initial_power)
    assert counts["consumes"] == len(await eligible_ids(server_db))
    # 2 streams per exchange; polled at most once per history interval between the three
    cycles = elapsed / 2
    for fake in (binance, okx):
        per_stream = fake.count("closed") / 2
        assert 1 <= per_stream <= cycles + 2, (fake.platform, per_stream, cycles)
    _: Any = None
