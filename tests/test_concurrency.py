"""Exactly-once under concurrency and crashes, on the real MariaDB and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import random
import signal
from decimal import Decimal
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from kits.seed import assert_ledger_consistent, eligible_ids, seed_backlog
from reconcile.charging.consumer import PowerConsumer
from reconcile.charging.outcomes import Outcome, Source
from reconcile.charging.pricing import PowerRules
from reconcile.charging.sweep import SweepSettings, backlog_at_least, sweep
from reconcile.storage.db import Database
from reconcile.storage.schema import power_consume
from tests.procs import run_cli, start_cli, write_config

RULES = PowerRules(Decimal("0.10"), Decimal("0.01"))


async def consume_count(db: Database) -> int:
    async def read(conn: AsyncConnection) -> int:
        return int(
            (await conn.execute(select(func.count()).select_from(power_consume))).scalar_one()
        )

    return await db.transaction(read, what="count consumes")


async def test_tasks_and_processes_charge_each_order_once(
    server_db: Database, server_url: str, tmp_path: Path
) -> None:
    seeded = await seed_backlog(server_db, orders=2000, users=150, seed=11)
    eligible = await eligible_ids(server_db)
    config = write_config(
        tmp_path / "c.yaml", server_url, power={"consume_rate": "0.10", "min_consume": "0.01"}
    )
    consumer = PowerConsumer(server_db, RULES)

    async def single_charges(seed: int) -> list[Outcome]:
        ids = list(seeded.order_ids)
        random.Random(seed).shuffle(ids)
        return [(await consumer.charge(i, Source.REALTIME)).outcome for i in ids]

    async def sweeps() -> int:
        charged = 0
        for _ in range(3):
            charged += (await sweep(consumer, SweepSettings(page_size=37))).charged
        return charged

    procs = [await start_cli(config, "sweep", "--page-size", str(size)) for size in (25, 50, 100)]
    singles = [asyncio.create_task(single_charges(seed)) for seed in range(4)]
    sweepers = [asyncio.create_task(sweeps()) for _ in range(4)]
    outcomes = await asyncio.gather(*singles)
    swept = await asyncio.gather(*sweepers)
    proc_charged = 0
    for proc in procs:
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        [summary] = [
            json.loads(line) for line in out.decode().splitlines() if '"sweep summary"' in line
        ]
        proc_charged += summary["charged"]

    in_tasks = sum(o.count(Outcome.CHARGED) for o in outcomes)
    assert in_tasks + sum(swept) + proc_charged == len(eligible), "every charge is counted once"
    assert all(
        o.count(Outcome.CHARGED) + o.count(Outcome.SKIPPED_DUPLICATE) == len(eligible)
        for o in outcomes
    )
    counts = await assert_ledger_consistent(server_db, seeded.initial_power)
    assert counts["consumes"] == counts["ledger"] == len(eligible)


async def test_sweep_killed_at_random_moments(
    server_db: Database, server_url: str, tmp_path: Path
) -> None:
    seeded = await seed_backlog(server_db, orders=12000, users=400, seed=5)
    eligible = await eligible_ids(server_db)
    config = write_config(
        tmp_path / "c.yaml", server_url, power={"consume_rate": "0.10", "min_consume": "0.01"}
    )
    rnd = random.Random(1234)
    progress = []
    for _ in range(10):
        proc = await start_cli(config, "sweep", "--page-size", "10")
        # wait until it has charged something, then kill it at a random moment after that
        assert proc.stdout is not None
        while b'"power consumed"' not in await proc.stdout.readline():
            assert proc.returncode is None
        await asyncio.sleep(rnd.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        # communicate, not wait: wait() also waits for EOF on stdout, which a read transport
        # paused on a full buffer (nobody reading) never sees
        await proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        progress.append(await consume_count(server_db))
        await assert_ledger_consistent(server_db, seeded.initial_power)
    assert progress == sorted(progress) and 0 < progress[-1] < len(eligible), progress

    code, _out, err = await run_cli(config, "sweep")
    assert code == 0, err
    counts = await assert_ledger_consistent(server_db, seeded.initial_power)
    assert counts["consumes"] == len(eligible)


async def test_sweep_split_across_processes(
    server_db: Database, server_url: str, tmp_path: Path
) -> None:
    seeded = await seed_backlog(server_db, orders=3000, users=300, seed=21)
    config = write_config(
        tmp_path / "c.yaml", server_url, power={"consume_rate": "0.10", "min_consume": "0.01"}
    )
    code, out, err = await run_cli(config, "sweep", "--processes", "3", "--page-size", "100")
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    parts = [e for e in events if e["event"] == "sweep partition summary"]
    [total] = [e for e in events if e["event"] == "sweep summary"]
    eligible = len(await eligible_ids(server_db))
    assert len(parts) == 3 and all(p["charged"] > 0 for p in parts)
    assert total["charged"] == sum(p["charged"] for p in parts) == eligible
    assert total["processes"] == 3
    counts = await assert_ledger_consistent(server_db, seeded.initial_power)
    assert counts["consumes"] == eligible


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid``: the workers are the fork server's children."""
    parents: dict[int, int] = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines())
            parents[int(status.parent.name)] = int(fields["PPid"])
        except (OSError, ValueError, KeyError):
            continue
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


async def test_a_killed_split_sweep_leaves_no_worker_behind(
    server_db: Database, server_url: str, tmp_path: Path
) -> None:
    """SIGKILL of `sweep --processes 2` while its workers charge: the workers end with it
    (none charges on as an orphan), and the next sweep finishes the work exactly once."""
    seeded = await seed_backlog(server_db, orders=6000, users=300, seed=8)
    eligible = await eligible_ids(server_db)
    config = write_config(
        tmp_path / "c.yaml", server_url, power={"consume_rate": "0.10", "min_consume": "0.01"}
    )
    proc = await start_cli(config, "sweep", "--processes", "2", "--page-size", "10")
    assert proc.stdout is not None
    while b'"power consumed"' not in await proc.stdout.readline():
        assert proc.returncode is None
    workers = _descendants(proc.pid)
    assert len(workers) >= 2, f"the sweep started no worker processes: {workers}"
    proc.send_signal(signal.SIGKILL)
    await asyncio.wait_for(proc.communicate(), timeout=60)  # EOF: no worker holds stdout
    for _ in range(100):
        alive = {w for w in workers if Path(f"/proc/{w}").exists()}
        if not alive:
            break
        await asyncio.sleep(0.1)
    assert not alive, f"workers outlived the killed sweep: {alive}"
    partial = await consume_count(server_db)
    assert 0 < partial < len(eligible)
    await assert_ledger_consistent(server_db, seeded.initial_power)

    code, out, err = await run_cli(config, "sweep")
    assert code == 0, err
    [summary] = [json.loads(x) for x in out.splitlines() if '"sweep summary"' in x]
    assert "processes" not in summary, "auto stays in one process below its threshold"
    counts = await assert_ledger_consistent(server_db, seeded.initial_power)
    assert counts["consumes"] == len(eligible)


async def test_backlog_at_least_counts_only_eligible_orders_in_the_lookback(
    server_db: Database,
) -> None:
    seeded = await seed_backlog(server_db, orders=400, users=40, seed=3)
    assert seeded.order_ids
    eligible = len(await eligible_ids(server_db))
    consumer = PowerConsumer(server_db, RULES)
    settings = SweepSettings()
    assert await backlog_at_least(consumer, settings, eligible)
    assert not await backlog_at_least(consumer, settings, eligible + 1)
    await sweep(consumer, settings)
    assert not await backlog_at_least(consumer, settings, 1)
