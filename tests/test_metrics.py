"""The Prometheus metrics of `run`, read over HTTP, with logging.level: error.

The charge counters are derived from the audit events; the bound logger used to drop INFO events
before the counting processor saw them, so with `logging.level: warning` toogo_charges_total
stayed 0. Our own data (a seeded backlog) on upstream's DDL; the daemon and its HTTP server are
the real ones.
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.consumer import PowerConsumer, Source
from reconcile.db import Database
from reconcile.schema import trading_order
from tests.history_kit import RULES
from tests.private_mariadb import free_port
from tests.procs import start_cli, write_config
from tests.seed import assert_ledger_consistent, eligible_ids, insert_order, seed_backlog

pytestmark = pytest.mark.mysql


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
        metrics={"listen": f"127.0.0.1:{port}"},
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
    last = sample(text, "toogo_last_success_timestamp_seconds", job="compensation_sweep")
    assert last is not None and last > time.time() - 120
    assert sample(text, "toogo_cycle_duration_seconds", job="compensation_sweep") is not None
    # the level still applies to the output: no INFO audit line was printed
    assert b'"power consumed"' not in out and b'"sweep summary"' not in out, out[:300]
    initial = dict(seeded.initial_power)
    initial[3] = initial.get(3, Decimal(0))
    await assert_ledger_consistent(mysql_db, initial)
