"""Real failures injected into the migration: a trigger that makes a statement fail, a second
connection holding a row lock or a metadata lock, a connection killed mid-transaction.

After each, the database is consistent: the failed step left nothing behind, earlier steps are
complete, and re-running finishes the job without refunding anything twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pymysql
import pytest

from reconcile import migration as m
from reconcile.db import Database, RetryPolicy
from reconcile.errors import DatabaseError, LockWaitTimeout
from tests.conftest import mysql_admin
from tests.test_migration import (
    CONSUME,
    Legacy,
    execute,
    fetch,
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


def database_name(db: Database) -> str:
    name = db.settings.sqlalchemy_url().database
    assert name
    return name


@pytest.fixture
def blocker(mysql_url: str) -> Iterator[pymysql.connections.Connection]:
    """A second client session, for holding locks the migration must wait for."""
    conn = mysql_admin()
    name = mysql_url.rsplit("/", 1)[1]
    with conn.cursor() as cur:
        cur.execute(f"USE `{name}`")
    yield conn
    conn.close()


def _fail_on(db_name: str, when: str, row_id: int) -> str:
    return (
        f"CREATE TRIGGER trc_injected_failure {when} ON `{db_name}`.{CONSUME} FOR EACH ROW "
        f"BEGIN IF {'OLD' if 'DELETE' in when else 'NEW'}.id = {row_id} THEN "
        "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'injected failure'; END IF; END"
    )


async def test_a_statement_failing_half_way_through_dedupe_leaves_nothing(mysql_url: str) -> None:
    db = await legacy_database(mysql_url)
    try:
        legacy = await seed_legacy(db)
        start = await wallets(db)
        # the wallet UPDATE comes late in the transaction: the backup rows, the deletes and
        # the ledger rows are all written when it fails
        await execute(
            db,
            f"CREATE TRIGGER trc_injected_failure BEFORE UPDATE ON "
            f"`{database_name(db)}`.hg_toogo_wallet FOR EACH ROW SIGNAL SQLSTATE "
            "'45000' SET MESSAGE_TEXT = 'injected failure'",
        )
        before = await snapshot(db)
        with pytest.raises(DatabaseError, match="injected failure"):
            await m.up(db, refund_overcharge=True, dry_run=False)
        await assert_unchanged(db, before)

        await execute(db, "DROP TRIGGER trc_injected_failure")
        result = await m.up(db, refund_overcharge=True, dry_run=False)
        assert result.ok
        await assert_refunded_once(db, legacy, start)
    finally:
        await db.close()


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


async def test_a_locked_wallet_times_out_the_dedupe_without_a_trace(
    mysql_url: str,
    blocker: pymysql.connections.Connection,
) -> None:
    db = await legacy_database(mysql_url, retry=FEW_RETRIES, lock_wait_timeout=1)
    try:
        legacy = await seed_legacy(db)
        start = await wallets(db)
        before = await snapshot(db)
        victim = min(legacy.over_by_user())
        with blocker.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute(
                "SELECT power FROM hg_toogo_wallet WHERE user_id = %s FOR UPDATE", (victim,)
            )
        with pytest.raises(LockWaitTimeout):
            await m.dedupe(db, refund_overcharge=True, dry_run=False)
        await assert_unchanged(db, before)
        blocker.rollback()
        await m.up(db, refund_overcharge=True, dry_run=False)
        await assert_refunded_once(db, legacy, start)
    finally:
        await db.close()


async def test_a_killed_connection_mid_dedupe_is_retried_and_refunds_once(
    mysql_url: str,
    blocker: pymysql.connections.Connection,
) -> None:
    db = await legacy_database(mysql_url)
    admin = mysql_admin()
    try:
        legacy = await seed_legacy(db)
        start = await wallets(db)
        victim = min(legacy.over_by_user())
        with blocker.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute(
                "SELECT power FROM hg_toogo_wallet WHERE user_id = %s FOR UPDATE", (victim,)
            )
        task = asyncio.create_task(m.dedupe(db, refund_overcharge=True, dry_run=False))
        # the dedupe's connection dies holding locks on the duplicate rows; its retry waits again
        killed = await kill_waiting(admin, database_name(db), "FOR UPDATE", task)
        await waiting(admin, database_name(db), "FOR UPDATE", task, skip=killed)
        blocker.rollback()
        result = await task
        assert result.deleted_rows == len(legacy.extra_ids())
        await assert_refunded_once(db, legacy, start)
        registry = await fetch(db, "SELECT id FROM toogo_reconcile_backup")
        assert len(registry) == 1  # the killed attempt registered nothing
    finally:
        admin.close()
        await db.close()


async def waiting(
    admin: pymysql.connections.Connection,
    db_name: str,
    needle: str,
    task: asyncio.Task[Any],
    skip: int = 0,
    timeout: float = 10.0,
) -> int:
    """The id of a live session of ``db_name`` running a statement on the wallet table that
    contains ``needle`` (other than ``skip``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if task.done():
            raise AssertionError(f"the migration finished before it waited: {task.result()!r}")
        with admin.cursor() as cur:
            cur.execute(
                "SELECT ID, INFO FROM information_schema.PROCESSLIST "
                "WHERE DB = %s AND ID NOT IN (CONNECTION_ID(), %s) AND COMMAND <> 'Killed'",
                (db_name, skip),
            )
            for session_id, info in cur.fetchall():
                if info and needle in info and "hg_toogo_wallet" in info:
                    return int(session_id)
        await asyncio.sleep(0.05)
    raise AssertionError(f"no session waiting on {needle!r}")


async def kill_waiting(
    admin: pymysql.connections.Connection, db_name: str, needle: str, task: asyncio.Task[Any]
) -> int:
    session_id = await waiting(admin, db_name, needle, task)
    with admin.cursor() as cur:
        cur.execute(f"KILL CONNECTION {session_id}")
    return session_id


async def test_a_metadata_lock_failing_the_alter_leaves_the_dedupe_done(
    mysql_url: str,
    blocker: pymysql.connections.Connection,
) -> None:
    """A long transaction that read the table holds its metadata lock: the ALTER gives up after
    --ddl-lock-wait instead of queueing every query on the table behind it."""
    db = await legacy_database(mysql_url, retry=FEW_RETRIES)
    try:
        legacy = await seed_legacy(db)
        start = await wallets(db)
        with blocker.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute(f"SELECT COUNT(*) FROM {CONSUME}")
        options = m.DdlOptions(lock_wait=1)
        with pytest.raises(LockWaitTimeout):
            await m.up(db, refund_overcharge=True, dry_run=False, options=options)
        verdict = await m.verify(db)
        assert not verdict.ok and verdict.duplicate_groups == 0 and not verdict.unique_key
        await assert_refunded_once(db, legacy, start)

        blocker.rollback()
        result = await m.up(db, refund_overcharge=True, dry_run=False, options=options)
        assert result.ok and not any(d.changed for d in result.dedupes)
        await assert_refunded_once(db, legacy, start)
    finally:
        await db.close()


async def test_a_failing_restore_leaves_the_key_dropped_and_nothing_else(mysql_url: str) -> None:
    db = await legacy_database(mysql_url)
    try:
        legacy = await seed_legacy(db)
        await m.up(db, refund_overcharge=True, dry_run=False)
        refunded = await wallets(db)
        await execute(db, _fail_on(database_name(db), "BEFORE INSERT", max(legacy.extra_ids())))
        with pytest.raises(DatabaseError, match="injected failure"):
            await m.rollback(db, dry_run=False, reverse_refunds=True)
        assert not (await m.verify(db)).unique_key  # step 1 (atomic DDL) is done
        remaining = {r[0] for r in await fetch(db, f"SELECT id FROM {CONSUME}")}
        assert remaining == legacy.kept_ids()  # step 2 left nothing
        assert await wallets(db) == refunded
        assert [
            r[0] for r in await fetch(db, "SELECT rolled_back_at FROM toogo_reconcile_backup")
        ] == [None]

        await execute(db, "DROP TRIGGER trc_injected_failure")
        result = await m.rollback(db, dry_run=False, reverse_refunds=True)
        assert not (result.key_drop and result.key_drop.done)
        assert result.restored_rows == len(legacy.extra_ids())
        assert result.reversed_rows == len(legacy.extra_ids())
    finally:
        await db.close()


async def test_a_duplicate_inserted_during_the_alter_fails_it_and_up_dedupes_again(
    mysql_url: str,
) -> None:
    """A legacy writer still inserting duplicates while the key is built online: the ALTER
    fails atomically on them and `up` runs another dedupe round, refunding the new extra row."""
    db = await legacy_database(mysql_url)
    admin = mysql_admin()
    try:
        legacy = await seed_legacy(db)
        # enough distinct rows that building the index takes a moment (no duplicates among them)
        await execute(
            db,
            f"INSERT INTO {CONSUME} (user_id, robot_id, order_id, order_sn, profit_amount, "
            "consume_rate, consume_power, original_power) "
            "SELECT 1000000 + seq, 1, seq, 'bulk', 0.1, 0.1, 0.01, 0.01 FROM seq_1_to_300000",
        )
        user_id, order_id = next(iter(legacy.groups()))
        kept = legacy.groups()[(user_id, order_id)][-1]
        task = asyncio.create_task(m.up(db, refund_overcharge=True, dry_run=False))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with admin.cursor() as cur:
                cur.execute(
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = %s "
                    "AND INFO LIKE 'ALTER TABLE hg_toogo_power_consume ADD UNIQUE%%'",
                    (database_name(db),),
                )
                if cur.fetchone()[0]:
                    break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the ALTER never started")
        await execute(
            db,
            f"INSERT INTO {CONSUME} (user_id, robot_id, order_id, order_sn, profit_amount, "
            "consume_rate, consume_power, original_power) "
            "VALUES (:u, 1, :o, 'late', 5, 0.1, 0.5, 0.5)",
            u=user_id,
            o=order_id,
        )
        result = await task
        assert result.ok
        assert len(result.dedupes) == 2, "the ALTER finished before the late insert"
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
        admin.close()
        await db.close()


async def test_a_long_alter_reports_progress(mysql_url: str, logs: list[dict[str, object]]) -> None:
    db = await legacy_database(mysql_url)
    try:
        await execute(
            db,
            f"INSERT INTO {CONSUME} (user_id, robot_id, order_id, order_sn, profit_amount, "
            "consume_rate, consume_power, original_power) "
            "SELECT seq, 1, seq, 'bulk', 0.1, 0.1, 0.01, 0.01 FROM seq_1_to_300000",
        )
        result = await m.add_unique_key(db, options=m.DdlOptions(progress_every=0.1))
        step = result.step("uk_user_order")
        assert step is not None and step.done and step.seconds > 0.1
        ticks = [
            e for e in logs if e["event"] == "migrate progress" and e.get("step") == "uk_user_order"
        ]
        assert ticks and all("progress_pct" in e and "elapsed_s" in e for e in ticks)
    finally:
        await db.close()
