"""Real failures injected into the migration: a trigger that makes a statement fail, a second
session holding a row lock or a table lock, a connection killed mid-transaction - on MariaDB and
on PostgreSQL (``server_url``), with the same assertions.

After each, the database is consistent: the failed step left nothing behind, earlier steps are
complete, and re-running finishes the job without refunding anything twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from reconcile import migration as m
from reconcile.errors import DatabaseError, LockWaitTimeout
from reconcile.storage.db import Database
from reconcile.storage.retries import RetryPolicy
from tests.migration_kit import (
    CONSUME,
    KEY_BUILD,
    Legacy,
    Session,
    bulk_consume_rows,
    drop_fail_trigger,
    fail_trigger,
    fetch,
    is_pg,
    legacy_database,
    refund_ledger,
    seed_legacy,
    snapshot,
    wallets,
)

pytestmark = pytest.mark.mysql

OWN = ("toogo_reconcile_refund", "toogo_reconcile_backup")
FEW_RETRIES = RetryPolicy(attempts=2, initial=0.01, maximum=0.05)


def without_own(snap: dict[str, Any]) -> dict[str, Any]:
    """The snapshot minus the (empty) registry tables a dedupe creates before its transaction."""
    return {
        k: (
            [t for t in v if t not in OWN]
            if k == "tables"
            else [i for i in v if i[0] not in OWN]
            if k == "indexes"
            else v
        )
        for k, v in snap.items()
        if k not in OWN
    }


async def assert_unchanged(db: Database, before: dict[str, Any]) -> None:
    after = await snapshot(db)
    assert without_own(after) == without_own(before)
    for table in OWN:
        assert after.get(table, []) == [], f"{table} is not empty"
    assert not [t for t in after["tables"] if t.startswith("toogo_reconcile_bak_")]


@pytest.fixture
async def legacy(server_url: str) -> AsyncIterator[Database]:
    db = await legacy_database(server_url)
    yield db
    await db.close()


async def session(db: Database) -> Session:
    """A second client session of the test database (closed by the test)."""
    return await Session(db).open()


async def test_a_statement_failing_half_way_through_dedupe_leaves_nothing(
    legacy: Database,
) -> None:
    db = legacy
    legacy_rows = await seed_legacy(db)
    start = await wallets(db)
    # the wallet UPDATE comes late in the transaction: the backup rows, the deletes and
    # the ledger rows are all written when it fails
    await fail_trigger(db, "hg_toogo_wallet", "BEFORE UPDATE")
    before = await snapshot(db)
    with pytest.raises(DatabaseError, match="injected failure"):
        await m.up(db, refund_overcharge=True, dry_run=False)
    await assert_unchanged(db, before)

    await drop_fail_trigger(db, "hg_toogo_wallet")
    result = await m.up(db, refund_overcharge=True, dry_run=False)
    assert result.ok
    await assert_refunded_once(db, legacy_rows, start)


async def assert_refunded_once(
    db: Database, legacy: Legacy, start: dict[int, tuple[Decimal, Decimal, Decimal]]
) -> None:
    over = legacy.over_by_user()
    now = await wallets(db)
    for uid, amount in over.items():
        assert now[uid][0] == start.get(uid, (Decimal(0),))[0] + amount, uid
    assert len(await refund_ledger(db)) == len(legacy.over_by_order())
    remaining = {r[0] for r in await fetch(db, f"SELECT id FROM {CONSUME}")}
    assert remaining == legacy.kept_ids()


async def test_a_locked_wallet_times_out_the_dedupe_without_a_trace(server_url: str) -> None:
    db = await legacy_database(server_url, retry=FEW_RETRIES, lock_wait_timeout=1)
    blocker = await session(db)
    try:
        legacy = await seed_legacy(db)
        start = await wallets(db)
        before = await snapshot(db)
        await blocker.lock_wallet(min(legacy.over_by_user()))
        with pytest.raises(LockWaitTimeout):
            await m.dedupe(db, refund_overcharge=True, dry_run=False)
        await assert_unchanged(db, before)
        await blocker.rollback()
        await m.up(db, refund_overcharge=True, dry_run=False)
        await assert_refunded_once(db, legacy, start)
    finally:
        await blocker.close()
        await db.close()


async def test_a_killed_connection_mid_dedupe_is_retried_and_refunds_once(
    legacy: Database,
) -> None:
    db = legacy
    blocker, admin = await session(db), await session(db)
    try:
        legacy_rows = await seed_legacy(db)
        start = await wallets(db)
        await blocker.lock_wallet(min(legacy_rows.over_by_user()))
        task = asyncio.create_task(m.dedupe(db, refund_overcharge=True, dry_run=False))
        # the dedupe's connection dies holding locks on the duplicate rows; its retry waits again
        killed = await admin.waiting("FOR UPDATE", task)
        await admin.kill(killed)
        await admin.waiting("FOR UPDATE", task, skip=killed)
        await blocker.rollback()
        result = await task
        assert result.deleted_rows == len(legacy_rows.extra_ids())
        await assert_refunded_once(db, legacy_rows, start)
        registry = await fetch(db, "SELECT id FROM toogo_reconcile_backup")
        assert len(registry) == 1  # the killed attempt registered nothing
    finally:
        await blocker.close()
        await admin.close()


async def test_a_table_lock_failing_the_key_build_leaves_the_dedupe_done(server_url: str) -> None:
    """A long transaction that read the table holds its lock (MySQL's metadata lock; on
    PostgreSQL the ACCESS SHARE lock that ADD CONSTRAINT / DROP INDEX wait for): the DDL gives
    up after --ddl-lock-wait instead of queueing every query on the table behind it."""
    db = await legacy_database(server_url, retry=FEW_RETRIES)
    blocker = await session(db)
    try:
        legacy = await seed_legacy(db)
        start = await wallets(db)
        await blocker.begin()
        await blocker.run(f"SELECT COUNT(*) FROM {CONSUME}")
        options = m.DdlOptions(lock_wait=1)
        with pytest.raises(LockWaitTimeout):
            await m.up(db, refund_overcharge=True, dry_run=False, options=options)
        verdict = await m.verify(db)
        assert not verdict.ok and verdict.duplicate_groups == 0 and not verdict.unique_key
        await assert_refunded_once(db, legacy, start)

        await blocker.rollback()
        result = await m.up(db, refund_overcharge=True, dry_run=False, options=options)
        assert result.ok and not any(d.changed for d in result.dedupes)
        await assert_refunded_once(db, legacy, start)
    finally:
        await blocker.close()
        await db.close()


async def test_a_failing_restore_leaves_the_key_dropped_and_nothing_else(legacy: Database) -> None:
    db = legacy
    legacy_rows = await seed_legacy(db)
    await m.up(db, refund_overcharge=True, dry_run=False)
    refunded = await wallets(db)
    await fail_trigger(db, CONSUME, "BEFORE INSERT", max(legacy_rows.extra_ids()))
    with pytest.raises(DatabaseError, match="injected failure"):
        await m.rollback(db, dry_run=False, reverse_refunds=True)
    assert not (await m.verify(db)).unique_key  # step 1 (atomic DDL) is done
    remaining = {r[0] for r in await fetch(db, f"SELECT id FROM {CONSUME}")}
    assert remaining == legacy_rows.kept_ids()  # step 2 left nothing
    assert await wallets(db) == refunded
    assert [r[0] for r in await fetch(db, "SELECT rolled_back_at FROM toogo_reconcile_backup")] == [
        None
    ]

    await drop_fail_trigger(db, CONSUME)
    result = await m.rollback(db, dry_run=False, reverse_refunds=True)
    assert not (result.key_drop and result.key_drop.done)
    assert result.restored_rows == len(legacy_rows.extra_ids())
    assert result.reversed_rows == len(legacy_rows.extra_ids())


LATE = (
    f"INSERT INTO {CONSUME} (user_id, robot_id, order_id, order_sn, profit_amount, "
    "consume_rate, consume_power, original_power) VALUES ($1, 1, $2, 'late', 5, 0.1, 0.5, 0.5)"
)


async def test_a_duplicate_inserted_during_the_key_build_fails_it_and_up_dedupes_again(
    legacy: Database,
) -> None:
    """A legacy writer still inserting duplicates while the key is built online: the build
    fails atomically on them and `up` runs another dedupe round, refunding the new extra row.

    MySQL: the row is inserted while the ALTER runs. PostgreSQL: the writer's transaction is
    open when the build starts, which waits for it ("waiting for writers before build") and
    then meets its row - deterministically, where a row inserted after the build's first phase
    would be refused by the half-built key itself."""
    db = legacy
    writer = await session(db)
    try:
        legacy_rows = await seed_legacy(db)
        # enough distinct rows that building the index takes a moment (no duplicates among them)
        await bulk_consume_rows(db, 300_000, user_offset=1_000_000)
        user_id, order_id = next(iter(legacy_rows.groups()))
        kept = legacy_rows.groups()[(user_id, order_id)][-1]
        if is_pg(db):
            await writer.begin()
            await writer.run(LATE, user_id, order_id)
        task = asyncio.create_task(m.up(db, refund_overcharge=True, dry_run=False))
        await writer.waiting(KEY_BUILD[db.dialect.name], task, table=CONSUME, timeout=20)
        if is_pg(db):
            await writer.commit()
        else:
            await writer.run(LATE, user_id, order_id)
        result = await task
        assert result.ok
        assert len(result.dedupes) == 2, "the key build finished before the late insert"
        second = result.dedupes[1]
        assert second.deleted_rows == 1 and second.refunded_amount == kept["power"]
        remaining = await fetch(
            db,
            f"SELECT order_sn FROM {CONSUME} WHERE user_id = :u AND order_id = :o",
            u=user_id,
            o=order_id,
        )
        assert [r[0] for r in remaining] == ["late"]  # the max id is kept
    finally:
        await writer.close()


async def test_a_long_key_build_reports_progress(
    legacy: Database, logs: list[dict[str, object]]
) -> None:
    db = legacy
    await bulk_consume_rows(db, 300_000)
    # a reader's open transaction holds the build back for a second (PostgreSQL's CONCURRENTLY
    # waits for its snapshot, MariaDB's ALTER for its metadata lock): ticks whatever the
    # machine's speed - 300,000 rows alone built in 0.14 s on PostgreSQL, under one tick
    reader = await session(db)
    try:
        await reader.run("BEGIN ISOLATION LEVEL REPEATABLE READ" if is_pg(db) else "BEGIN")
        await reader.run("SELECT COUNT(*) FROM hg_toogo_power_consume")
        build = asyncio.create_task(
            m.add_unique_key(db, options=m.DdlOptions(progress_every=0.1, lock_wait=30))
        )
        await asyncio.sleep(1.0)
        await reader.commit()
        result = await build
    finally:
        await reader.close()
    step = result.step("uk_user_order")
    assert step is not None and step.done and step.seconds > 0.5
    ticks = [
        e for e in logs if e["event"] == "migrate progress" and e.get("step") == "uk_user_order"
    ]
    assert ticks and all("progress_pct" in e and "elapsed_s" in e for e in ticks)
