"""A sweep whose stdout is a pipe nobody reads (issue 14): the event loop never blocks on output
while a transaction is open. The sweep pauses between transactions, holding no row lock, so the
engine's own writes and a realtime charge of an order of the page go through within their
lock-wait budget; once the reader resumes, every audit line is there, in order."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text

from daemon.logs import SOFT_LIMIT
from kits.seed import assert_ledger_consistent, consume_count, eligible_ids, seed_backlog
from reconcile.storage.db import Database
from tests.procs import POWER, run_cli, start_cli, write_config

STALL = 30.0  # seconds nobody reads the sweep's stdout
LOCK_WAIT = 5  # the engine's lock-wait budget, seconds


async def engine_touches_unconsumed_orders(db: Database) -> tuple[int, float]:
    """What hotgo's engine does to orders: an UPDATE that needs their row locks. Raises on a
    lock-wait timeout (1205)."""
    started = time.monotonic()
    async with db.engine.connect() as conn:
        await conn.execute(text(f"SET SESSION innodb_lock_wait_timeout = {LOCK_WAIT}"))
        await conn.commit()
        async with conn.begin():
            result = await conn.execute(
                text(
                    "UPDATE hg_trading_order SET updated_at = NOW()"
                    " WHERE power_consumed = 0 AND status = 2"
                )
            )
    return int(result.rowcount), time.monotonic() - started


async def unconsumed_eligible(db: Database) -> int:
    async with db.engine.connect() as conn:
        row = await conn.execute(
            text(
                "SELECT MIN(id) FROM hg_trading_order"
                " WHERE power_consumed = 0 AND status = 2 AND realized_profit > 0"
            )
        )
        return int(row.scalar_one())


async def test_sweep_with_stdout_nobody_reads(
    mysql_db: Database, mysql_url: str, tmp_path: Path
) -> None:
    seeded = await seed_backlog(mysql_db, orders=20000, users=400, seed=14)
    eligible = await eligible_ids(mysql_db)
    cfg = write_config(
        tmp_path / "c.yaml",
        mysql_url,
        power=POWER,
        database={"url": mysql_url, "lock_wait_timeout": f"{LOCK_WAIT}s"},
        sweep={"page_size": 100, "workers": 2},
    )
    sweep = await start_cli(cfg, "sweep")
    assert sweep.stdout is not None and sweep.stderr is not None
    stderr = asyncio.create_task(sweep.stderr.read())  # stderr is read; stdout is not
    try:
        # the sweep charges until the pipe and the queue are full, then pauses
        # (no pause before SOFT_LIMIT lines are queued: a slow page is not a pause)
        last, still_since = -1, time.monotonic()
        while time.monotonic() - still_since < 3.0 or last < SOFT_LIMIT:
            await asyncio.sleep(0.25)
            assert sweep.returncode is None, "the sweep ended before its output filled up"
            now = await consume_count(mysql_db)
            if now != last:
                last, still_since = now, time.monotonic()
        paused_at = last
        assert 0 < paused_at < len(eligible)

        # while nobody reads: the engine updates orders of the next pages, and the realtime
        # path charges one of them; neither waits out its lock-wait budget
        stall_started = time.monotonic()
        target = await unconsumed_eligible(mysql_db)
        code, out, err = await run_cli(cfg, "consume", "--order-id", str(target))
        assert code == 0, err
        [result] = [e for e in map(json.loads, out.splitlines()) if e["event"] == "consume result"]
        assert result["outcome"] == "charged"
        assert not [e for e in map(json.loads, out.splitlines()) if e["event"] == "db retry"]
        updates: list[float] = []
        while time.monotonic() - stall_started < STALL:
            rows, took = await engine_touches_unconsumed_orders(mysql_db)
            assert rows > 0
            updates.append(took)
            await asyncio.sleep(2.0)
        # the sweep did not move while its output was stalled; only the realtime charge did
        assert await consume_count(mysql_db) == paused_at + 1
        assert sweep.returncode is None
        print(f"paused at {paused_at} charges; engine updates took {max(updates):.3f} s at most")

        # the reader resumes: the sweep finishes and every line is there
        out_bytes = await asyncio.wait_for(sweep.stdout.read(), 120)
        await asyncio.wait_for(sweep.wait(), 30)
    finally:
        if sweep.returncode is None:
            sweep.kill()
            await sweep.communicate()
    assert sweep.returncode == 0, (await stderr).decode()
    assert (await stderr) == b""
    events: list[dict[str, Any]] = [json.loads(line) for line in out_bytes.decode().splitlines()]
    names = [e["event"] for e in events]
    assert "log output stalled" in names and "log output resumed" in names
    charged = [e["order_id"] for e in events if e["event"] == "power consumed"]
    assert len(charged) == len(set(charged))
    assert set(charged) == eligible - {target}
    stamps = [e["timestamp"] for e in events]
    assert stamps == sorted(stamps), "lines out of order"
    assert names[-1] == "sweep summary"
    assert events[-1]["charged"] == len(charged)
    counts = await assert_ledger_consistent(mysql_db, seeded.initial_power)
    assert counts["consumes"] == len(eligible)
