"""The audit finds each planted violation, and passes a clean ledger."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from kits.databases import open_database
from kits.seed import insert_order, seed_backlog
from reconcile.charging.consumer import PowerConsumer
from reconcile.charging.corrections import Corrector, Sighting
from reconcile.charging.pricing import PowerRules
from reconcile.charging.sweep import SweepSettings, sweep
from reconcile.storage.db import Database
from reconcile.storage.schema import correction, power_consume, trading_order, wallet, wallet_log
from reconcile.views.audit import audit
from tests.procs import run_cli, write_config

RULES = PowerRules(Decimal("0.10"), Decimal("0.01"))


async def charged_ledger(db: Database) -> None:
    await seed_backlog(db, orders=60, users=6)
    await sweep(PowerConsumer(db, RULES), SweepSettings(page_size=25))


async def execute(db: Database, stmt: object) -> None:
    async def run(conn: AsyncConnection) -> None:
        await conn.execute(stmt)  # type: ignore[call-overload]

    await db.transaction(run, what="plant a violation")


async def first(db: Database, stmt: object) -> object:
    async def run(conn: AsyncConnection) -> object:
        return (await conn.execute(stmt)).first()  # type: ignore[call-overload]

    return await db.transaction(run, what="read")


async def duplicate_consume(db: Database) -> None:
    row = await first(db, select(power_consume).limit(1))
    values = {k: v for k, v in row._mapping.items() if k != "id"}  # type: ignore[attr-defined]
    await execute(db, power_consume.insert().values(**values))


async def flag_without_consume(db: Database) -> None:
    await insert_order(db, user_id=1, power_consumed=1, power_amount=Decimal("0.5"))


async def consume_without_flag(db: Database) -> None:
    row = await first(db, select(power_consume.c.order_id).limit(1))
    await execute(
        db,
        update(trading_order).where(trading_order.c.id == row[0]).values(power_consumed=0),  # type: ignore[index]
    )


async def ledger_row_missing(db: Database) -> None:
    row = await first(db, select(wallet_log.c.id).order_by(wallet_log.c.id.desc()).limit(1))
    await execute(db, wallet_log.delete().where(wallet_log.c.id == row[0]))  # type: ignore[index]


async def broken_chain(db: Database) -> None:
    row = await first(db, select(wallet_log.c.id, wallet_log.c.before_amount).limit(1))
    await execute(
        db,
        update(wallet_log)
        .where(wallet_log.c.id == row[0])  # type: ignore[index]
        .values(before_amount=row[1] + 1, after_amount=wallet_log.c.after_amount + 1),  # type: ignore[index]
    )


async def wallet_moved(db: Database) -> None:
    row = await first(db, select(wallet.c.user_id, wallet.c.power).limit(1))
    await execute(
        db,
        update(wallet).where(wallet.c.user_id == row[0]).values(power=row[1] - 1),  # type: ignore[index]
    )


async def backlog(db: Database) -> None:
    await insert_order(db, user_id=2, close_time=db.now() - timedelta(hours=3))


async def corrected(db: Database) -> int:
    """Correct one charged order (the exchange says 5 more profit); the correction's id."""
    row = await first(db, select(power_consume.c.order_id, power_consume.c.profit_amount).limit(1))
    order_id, profit = row  # type: ignore[misc]
    [done] = await Corrector(db, RULES).apply([Sighting(order_id, profit + 5, "record-1")])
    k = await first(db, select(correction.c.id).where(correction.c.order_id == done.order_id))
    return int(k[0])  # type: ignore[index]


async def correction_without_ledger_row(db: Database) -> None:
    k = await corrected(db)
    row = await first(db, select(correction.c.wallet_log_id).where(correction.c.id == k))
    await execute(db, wallet_log.delete().where(wallet_log.c.id == row[0]))  # type: ignore[index]


async def correction_edited(db: Database) -> None:
    k = await corrected(db)
    await execute(
        db, update(correction).where(correction.c.id == k).values(delta=correction.c.delta + 1)
    )


PLANTS: list[tuple[Callable[[Database], Awaitable[None]], set[str]]] = [
    (duplicate_consume, {"duplicate_consume", "consume_vs_ledger"}),
    (flag_without_consume, {"consume_flag"}),
    (consume_without_flag, {"consume_flag", "backlog"}),
    # the wallet no longer ends where its ledger does: what a lost update looks like
    (ledger_row_missing, {"consume_vs_ledger", "wallet_vs_ledger"}),
    (broken_chain, {"ledger_chain"}),
    (wallet_moved, {"wallet_vs_ledger"}),
    (backlog, {"backlog"}),
    (
        correction_without_ledger_row,
        {"correction_entries", "consume_vs_ledger", "wallet_vs_ledger"},
    ),
    (correction_edited, {"correction_entries", "consume_vs_ledger"}),
]


async def test_a_clean_ledger_passes(any_db: Database) -> None:
    await charged_ledger(any_db)
    report = await audit(any_db, backlog_after=timedelta(hours=1))
    assert [c.name for c in report.checks if not c.ok] == []


@pytest.mark.parametrize(("plant", "failing"), PLANTS, ids=[p.__name__ for p, _ in PLANTS])
async def test_each_planted_violation_is_found(
    request: pytest.FixtureRequest,
    plant: Callable[[Database], Awaitable[None]],
    failing: set[str],
    backend: str,
) -> None:
    url = request.getfixturevalue("mysql_url" if backend == "mysql" else "sqlite_url")
    db = await open_database(url, unique_key=False)  # the legacy shape allows duplicates
    try:
        await charged_ledger(db)
        await plant(db)
        report = await audit(db, backlog_after=timedelta(hours=1))
        assert {c.name for c in report.checks if not c.ok} == failing
        assert all(c.examples for c in report.checks if not c.ok)
    finally:
        await db.close()


@pytest.fixture(params=["mysql", "sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_audit_command(mysql_url: str, tmp_path: Path) -> None:
    db = await open_database(mysql_url)
    try:
        await charged_ledger(db)
        cfg = write_config(tmp_path / "c.yaml", mysql_url)
        code, out, err = await run_cli(cfg, "audit")
        assert code == 0, err
        assert out.count("✓") == 11  # the nine ledger checks, held rows, charged legs
        await flag_without_consume(db)
        code, out, _ = await run_cli(cfg, "audit", "--json")
        assert code == 1
        report = json.loads(out)
        assert report["ok"] is False
        [bad] = [c for c in report["checks"] if not c["ok"]]
        assert bad["name"] == "consume_flag" and bad["violations"] == 1
        async with db.engine.connect() as conn:  # the audit changed nothing
            assert (
                await conn.execute(text("SELECT COUNT(*) FROM hg_toogo_power_consume"))
            ).scalar()
    finally:
        await db.close()


@pytest.mark.parametrize("snapshot", [True, False])
async def test_a_snapshot_transaction_reads_one_moment(server_db: Database, snapshot: bool) -> None:
    """The audit reads in one snapshot (``Database.transaction(snapshot=True)``): a charge that
    commits between two of its reads must not look like a sum or a wallet that disagrees with
    its ledger. The sessions' READ COMMITTED alone would show the second read the new row."""

    async def count(conn: AsyncConnection) -> int:
        return int(
            (await conn.execute(select(func.count()).select_from(trading_order))).scalar_one()
        )

    async def two_reads(conn: AsyncConnection) -> tuple[int, int]:
        before = await count(conn)
        await insert_order(server_db, user_id=7)  # its own transaction, committed meanwhile
        return before, await count(conn)

    before, after = await server_db.transaction(two_reads, what="two reads", snapshot=snapshot)
    assert after == (before if snapshot else before + 1)
