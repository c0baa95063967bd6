"""A live `run` with every metric the alert rules read: a fake exchange stream, a stopped
robot's stale cursor, a backlog; and reading its /metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
from sqlalchemy.ext.asyncio import AsyncConnection

from kits.fake_exchanges import FAKES, FakeExchange, Fault
from kits.fake_exchanges.harness import closed_record
from kits.private_mariadb import free_port
from kits.seed import seed_backlog
from reconcile.storage.db import Database
from reconcile.storage.schema import stream_cursor
from tests.history_kit import add_account, add_robot
from tests.procs import start_cli, write_config

ACCOUNT = 70
STALE_CURSOR_AGE = timedelta(days=1)


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus's text format."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        series, _, rest = head.partition("{")
        if series == name and rest.rstrip("}") == want:
            return float(value)
    return None


async def seed_stream(db: Database, fake: FakeExchange) -> None:
    """A running robot on ``fake`` with one closed position to sync, and a stopped robot on the
    same account whose stream's cursor is a day old (never polled again: no lag)."""
    await add_account(
        db,
        ACCOUNT,
        user_id=970,
        platform=fake.platform,
        base_url=fake.url,
        api_key=fake.api_key,
        secret_key=fake.secret,
        passphrase=fake.passphrase,
    )
    await add_robot(db, 700, user_id=970, account_id=ACCOUNT, exchange=fake.platform)
    await add_robot(
        db, 701, user_id=970, account_id=ACCOUNT, symbol="ETHUSDT", exchange=fake.platform, status=4
    )
    stale = (datetime.now(UTC) - STALE_CURSOR_AGE).replace(tzinfo=None)

    async def cursor(conn: AsyncConnection) -> None:
        await conn.execute(
            stream_cursor.insert().values(
                platform=fake.platform,
                account_id=ACCOUNT,
                symbol="ETHUSDT",
                complete_until=stale,
                keys_at_cursor="[]",
                updated_at=db.now() - STALE_CURSOR_AGE,
            )
        )

    await db.transaction(cursor, what="a stopped robot's cursor")
    fake.records += closed_record(
        fake.platform, close_ms=int(time.time() * 1000) - 600_000, profit="7"
    )


@asynccontextmanager
async def live_daemon(
    db: Database, url: str, tmp_path: Path, *, faults: Sequence[Fault] = (), **schedule: str
) -> AsyncIterator[int]:
    """`run` on a seeded backlog and a fake Binance stream (``seed_stream``) with ``schedule``,
    its gauges refreshed every 500 ms; the port of its /metrics. Stopped with SIGTERM. The
    fake serves ``faults`` to the first closed-position requests."""
    await seed_backlog(db, orders=40, users=8, seed=11, losing_ratio=0.0)
    port = free_port()
    async with FAKES["binance"]() as binance:
        for fault in faults:
            binance.fail(fault)
        await seed_stream(db, binance)
        config = daemon_config(tmp_path / "c.yaml", url, port, binance, **schedule)
        proc = await start_cli(config, "run")
        try:
            yield port
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.communicate(), 60)


def daemon_config(path: Path, url: str, port: int, fake: FakeExchange, **schedule: str) -> Path:
    exchange = {"timeout": "2s", "retry": {"attempts": 2, "initial": "10ms", "max": "20ms"}}
    return write_config(
        path,
        url,
        power={"consume_rate": "0.10", "min_consume": "0.01"},
        exchanges={fake.platform: exchange},
        metrics={"listen": f"127.0.0.1:{port}", "refresh": "500ms"},
        schedule=schedule,
    )


async def scrape(http: aiohttp.ClientSession, port: int) -> str:
    """/metrics, or "" while the server is not up yet."""
    try:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            return await resp.text()
    except aiohttp.ClientError:
        await asyncio.sleep(0.2)
        return ""
