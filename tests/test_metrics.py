"""The Prometheus metrics of `run`, read over HTTP, with logging.level: error.

The charge counters are derived from the audit events; the bound logger used to drop INFO events
before the counting processor saw them, so with `logging.level: warning` toogo_charges_total
stayed 0. Our own data (a seeded backlog) on upstream's DDL; the daemon and its HTTP server are
the real ones.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from kits.fake_exchanges import FAKES, Fault
from kits.private_mariadb import free_port
from kits.seed import assert_ledger_consistent, eligible_ids, insert_order, seed_backlog
from reconcile.charging.consumer import PowerConsumer
from reconcile.charging.outcomes import Source
from reconcile.storage.db import Database
from reconcile.storage.schema import stream_cursor, trading_order
from reconcile.views.status import read_gauges
from tests.history_kit import RULES
from tests.metrics_kit import ACCOUNT, live_daemon, sample, scrape, seed_stream
from tests.procs import start_cli, write_config

pytestmark = pytest.mark.mysql


async def test_metrics_count_what_happened_at_logging_level_error(
    mysql_db: Database, mysql_url: str, tmp_path: Path
) -> None:
    seeded = await seed_backlog(mysql_db, orders=300, users=30, seed=5, losing_ratio=0.0)
    eligible = len(await eligible_ids(mysql_db))
    # a legacy charge whose flag update was lost: the sweep finds its consume row (a duplicate)
    already = await insert_order(mysql_db, user_id=3, realized_profit=Decimal("2"))
    await PowerConsumer(mysql_db, RULES).charge(already, Source.REALTIME)

    async def lose_flag(conn: AsyncConnection) -> None:
        await conn.execute(
            trading_order.update().where(trading_order.c.id == already).values(power_consumed=0)
        )

    await mysql_db.transaction(lose_flag, what="the legacy path lost its flag update")
    port = free_port()
    cfg = write_config(
        tmp_path / "c.yaml",
        mysql_url,
        power={"consume_rate": "0.10", "min_consume": "0.01"},
        metrics={"listen": f"127.0.0.1:{port}", "refresh": "500ms"},
        logging={"format": "json", "level": "error"},
        schedule={"realtime_sweep": "1h", "history_sync": "1h", "compensation_sweep": "1s"},
    )
    proc = await start_cli(cfg, "run")
    text = ""
    try:
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                try:
                    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                        text = await resp.text()
                except aiohttp.ClientError:
                    continue
                charged = sample(text, "toogo_charges_total", source="sweep") or 0
                backlog = sample(text, "toogo_backlog_orders")
                skipped = sample(text, "toogo_skipped_duplicates_total", source="sweep") or 0
                if charged >= eligible and skipped >= 1 and backlog == 0:
                    break
            async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                assert resp.status == 200
    finally:
        proc.terminate()
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert sample(text, "toogo_charges_total", source="sweep") == eligible, text
    # at least the one planted; sweeps one second apart can overlap and both meet it before
    # the first one's repair commits (each skips it: still one consume row, checked below)
    assert (sample(text, "toogo_skipped_duplicates_total", source="sweep") or 0) >= 1
    assert sample(text, "toogo_backlog_orders") == 0
    assert sample(text, "toogo_quarantined_records") == 0
    last = sample(text, "toogo_last_success_timestamp_seconds", job_name="compensation_sweep")
    assert last is not None and last > time.time() - 120
    assert sample(text, "toogo_cycle_duration_seconds", job_name="compensation_sweep") is not None
    # the level still applies to the output: no INFO audit line was printed
    assert b'"power consumed"' not in out and b'"sweep summary"' not in out, out[:300]
    initial = dict(seeded.initial_power)
    initial[3] = initial.get(3, Decimal(0))
    await assert_ledger_consistent(mysql_db, initial)


JOBS = ("history_sync", "realtime_sweep", "compensation_sweep", "audit")


async def test_the_metrics_the_alert_rules_read(
    mysql_db: Database, mysql_url: str, tmp_path: Path
) -> None:
    """Every series deploy/prometheus/ reads, with its value: job intervals, the database up,
    the backlog's oldest order (0 when none, its age when one waits), the audit's checks, the
    cursor lag of the polled stream only (a stopped robot's day-old cursor is not lag), the
    counters at 0 from the start, and the process start time."""
    started = time.time()
    schedule = {"history_sync": "2s", "realtime_sweep": "1h", "compensation_sweep": "1h"}
    async with (
        live_daemon(mysql_db, mysql_url, tmp_path, **schedule, audit="1s") as port,
        aiohttp.ClientSession() as http,
    ):
        # the first compensation sweep (at start; the next is an hour away) charged the
        # backlog, the stream was synced, and an audit has seen it all charged
        clean = await scrape_until(
            http,
            port,
            lambda t: (
                sample(t, "toogo_backlog_orders") == 0
                and sample(t, "toogo_backlog_oldest_age_seconds") == 0
                and sample(t, "toogo_cursor_lag_seconds", platform="binance") is not None
                and sample(t, "toogo_audit_violations", check="backlog") == 0
                and all(sample(t, "toogo_last_success_timestamp_seconds", job_name=j) for j in JOBS)
            ),
        )
        # an order that closed 2 h ago and was never charged: older than one
        # compensation interval, waiting for the next sweep
        waiting = await insert_order(
            mysql_db, user_id=5, close_time=mysql_db.now() - timedelta(hours=2)
        )
        late = await scrape_until(
            http,
            port,
            lambda t: (
                sample(t, "toogo_backlog_orders") == 1
                and sample(t, "toogo_audit_violations", check="backlog") == 1
            ),
        )
    assert waiting in await eligible_ids(mysql_db)
    intervals = {"history_sync": 2, "realtime_sweep": 3600, "compensation_sweep": 3600, "audit": 1}
    for job, every in intervals.items():
        assert sample(clean, "toogo_job_interval_seconds", job_name=job) == every
    assert sample(clean, "toogo_database_up") == 1
    assert sample(clean, "toogo_charging") == 1  # power.mode: charge (the default)
    lag = sample(clean, "toogo_cursor_lag_seconds", platform="binance")
    assert lag is not None and 0 <= lag < 60, lag  # the polled stream, not the stopped one
    audit_checks = {
        line.split('"')[1]
        for line in clean.splitlines()
        if line.startswith("toogo_audit_violations{")
    }
    assert len(audit_checks) == 11, audit_checks  # the ledger checks, held, charged_legs
    assert all(sample(clean, "toogo_audit_violations", check=c) == 0 for c in audit_checks)
    for kind in ("charge_failed", "stream_failed", "job_failed", "sweep_aborted"):
        assert sample(clean, "toogo_failures_total", kind=kind) == 0, clean
    assert sample(clean, "toogo_exchange_errors_total", platform="binance") == 0
    # the egress budget: its series at 0 from the start (a first 418 is an increase), and the
    # weight the sync spent (markets 1, userTrades 5 each)
    direct = {"platform": "binance", "egress": "direct"}
    for status in ("403", "418", "429"):
        assert sample(clean, "toogo_exchange_rate_limited_total", **direct, status=status) == 0
    assert sample(clean, "toogo_exchange_banned", **direct) == 0
    assert (sample(clean, "toogo_exchange_weight_used_total", **direct) or 0) >= 6
    # the synced stream's requests (it was 0 for ever: nothing incremented it)
    assert (sample(clean, "toogo_exchange_requests_total", platform="binance") or 0) >= 1
    # the stream's profitable close reached the history path's charge: charged there, or found
    # charged by the start's compensation sweep, which runs beside the first sync (exactly once)
    by_history = sum(
        sample(clean, name, source="history") or 0
        for name in ("toogo_charges_total", "toogo_skipped_duplicates_total")
    )
    assert by_history >= 1
    assert sample(clean, "toogo_charges_total", source="realtime") == 0
    start = sample(clean, "process_start_time_seconds")
    assert start is not None and started - 5 < start < started + 30
    age = sample(late, "toogo_backlog_oldest_age_seconds")
    assert age is not None and 7200 - 5 < age < 7200 + 60, age


async def scrape_until(
    http: aiohttp.ClientSession, port: int, done: Callable[[str], bool], timeout: float = 60
) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = await scrape(http, port)
        if text and done(text):
            return text
        await asyncio.sleep(0.3)
    raise AssertionError(f"not seen within {timeout}s:\n{text}")


async def test_gauges_read_the_oldest_eligible_order_and_polled_cursors_only(
    server_db: Database,
) -> None:
    """reconcile.status.read_gauges on both servers: the oldest eligible close inside the
    look-back (one outside it is not the backlog's), and the oldest cursor per platform among
    streams the sync still polls."""
    async with FAKES["binance"]() as binance:
        await seed_stream(server_db, binance)
    now = server_db.now()
    await insert_order(server_db, user_id=1, close_time=now - timedelta(days=9))  # outside
    await insert_order(server_db, user_id=1, close_time=now - timedelta(hours=3))
    await insert_order(server_db, user_id=2, close_time=now - timedelta(minutes=1))

    async def polled_cursor(conn: AsyncConnection) -> None:
        await conn.execute(
            stream_cursor.insert().values(
                platform="binance",
                account_id=ACCOUNT,
                symbol="BTCUSDT",
                complete_until=(datetime.now(UTC) - timedelta(minutes=5)).replace(tzinfo=None),
                keys_at_cursor="[]",
                updated_at=now,
            )
        )

    gauges = await read_gauges(server_db, lookback=timedelta(days=7), running_status=2)
    assert gauges.backlog == 2
    assert gauges.oldest_eligible is not None
    age = datetime.now(UTC) - gauges.oldest_eligible
    assert timedelta(hours=3) <= age < timedelta(hours=3, minutes=1), age
    assert gauges.oldest_cursor == {}  # only the stopped robot's stream has a cursor
    await server_db.transaction(polled_cursor, what="the running robot's cursor")
    gauges = await read_gauges(server_db, lookback=timedelta(days=7), running_status=2)
    lag = datetime.now(UTC) - gauges.oldest_cursor["binance"]
    assert timedelta(minutes=5) <= lag < timedelta(minutes=6), lag
    assert gauges.quarantined == 0


async def test_shadow_mode_counts_would_be_charges_and_says_it_charges_nothing(
    mysql_db: Database, mysql_url: str, tmp_path: Path
) -> None:
    """`run` with power.mode: shadow: every eligible order a would-be charge in
    toogo_would_charges_total, none in toogo_charges_total, toogo_charging 0 (which keeps
    ToogoBacklogOverdue silent)."""
    await seed_backlog(mysql_db, orders=60, users=6, seed=9, losing_ratio=0.0)
    eligible = len(await eligible_ids(mysql_db))
    port = free_port()
    cfg = write_config(
        tmp_path / "c.yaml",
        mysql_url,
        power={"consume_rate": "0.10", "min_consume": "0.01", "mode": "shadow"},
        metrics={"listen": f"127.0.0.1:{port}", "refresh": "500ms"},
        schedule={"realtime_sweep": "1h", "history_sync": "1h", "compensation_sweep": "1s"},
    )
    proc = await start_cli(cfg, "run")
    try:
        async with aiohttp.ClientSession() as http:
            text = await scrape_until(
                http,
                port,
                # and the gauges refreshed at least once (0 until the first refresh, which
                # waits for the health loop's first verdict)
                lambda t: (
                    (sample(t, "toogo_would_charges_total", source="sweep") or 0) >= eligible
                    and bool(sample(t, "toogo_backlog_orders"))
                ),
            )
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.communicate(), 60)
    assert sample(text, "toogo_would_charges_total", source="sweep") == eligible
    assert sample(text, "toogo_charges_total", source="sweep") == 0
    assert sample(text, "toogo_charging") == 0
    assert sample(text, "toogo_backlog_orders") == eligible  # hotgo has charged none of them


async def test_a_ban_shows_at_once_and_nothing_is_sent_during_it(
    mysql_db: Database, mysql_url: str, tmp_path: Path
) -> None:
    """The fake bans the IP (418, Retry-After one hour) at the first closed-position request:
    the counter and the ban gauge show it while the ban lasts, and the sync sends nothing more
    (its streams fail at once, cursors held) - what ToogoExchangeBanned fires on."""
    schedule = {"history_sync": "1s", "realtime_sweep": "1h", "compensation_sweep": "1h"}
    async with (
        live_daemon(mysql_db, mysql_url, tmp_path, faults=[Fault.ban("3600")], **schedule) as port,
        aiohttp.ClientSession() as http,
    ):
        direct = {"platform": "binance", "egress": "direct"}
        banned = await scrape_until(
            http,
            port,
            lambda t: sample(t, "toogo_exchange_rate_limited_total", **direct, status="418") == 1,
        )
        assert sample(banned, "toogo_exchange_banned", **direct) == 1
        used = sample(banned, "toogo_exchange_weight_used_total", **direct)
        await asyncio.sleep(3)  # three more runs of the sync
        later = await scrape(http, port)
    assert sample(later, "toogo_exchange_weight_used_total", **direct) == used  # nothing sent
    assert sample(later, "toogo_exchange_rate_limited_total", **direct, status="418") == 1
    assert (sample(later, "toogo_failures_total", kind="stream_failed") or 0) >= 2
