"""The migration runbook on a real server holding a production-shaped (legacy) database.

Every test runs on MariaDB and on PostgreSQL (``server_url``) with the same assertions; the
legacy shape and its seed are in tests/migration_kit.py. PostgreSQL's own cases (invalid
indexes, upstream's raw schema, pg_dump) are in test_migration_pg.py.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile import migration as m
from reconcile.charging.consumer import PowerConsumer
from reconcile.charging.outcomes import Source
from reconcile.charging.pricing import PowerRules
from reconcile.errors import DatabaseError
from reconcile.storage.contract import inspect_live
from reconcile.storage.db import Database, DatabaseSettings
from reconcile.storage.dialect import Dialect
from tests.migration_kit import (
    CONSUME,
    Legacy,
    assert_refund_ledger,
    execute,
    fetch,
    is_pg,
    legacy_database,
    refund_ledger,
    seed_legacy,
    snapshot,
    tables,
    wallets,
)

pytestmark = pytest.mark.mysql


@pytest.fixture
async def legacy_db(server_url: str) -> AsyncIterator[tuple[Database, Legacy]]:
    db = await legacy_database(server_url)
    try:
        yield db, await seed_legacy(db)
    finally:
        await db.close()


# -- check --------------------------------------------------------------------------------------


async def test_check_reports_the_exact_groups_rows_and_overcharge(
    legacy_db: tuple[Database, Legacy],
) -> None:
    db, legacy = legacy_db
    before = await snapshot(db)
    report = await m.check(db)
    groups = legacy.groups()
    assert len(report.duplicates.groups) == len(groups) > 0
    assert {
        (g.user_id, g.order_id): (g.keep.id, set(g.extra_ids)) for g in report.duplicates.groups
    } == {k: (rs[-1]["id"], {r["id"] for r in rs[:-1]}) for k, rs in groups.items()}
    assert {len(rs) for rs in groups.values()} == {2, 3, 4}
    assert report.duplicates.extra_rows == len(legacy.extra_ids())
    assert report.duplicates.over_charged == sum(legacy.over_by_user().values())
    assert {u.user_id: u.over_charged for u in report.duplicates.users} == legacy.over_by_user()
    overs = [u.over_charged for u in report.duplicates.users]
    assert overs == sorted(overs, reverse=True)
    assert not report.schema.unique_key and not any(report.schema.own_tables.values())
    assert report.schema.order_columns == {"power_consumed": True, "power_amount": True}
    assert not report.ready and "uk_user_order" in report.pending_ddl
    doc = report.to_dict()
    assert doc["over_charged_total"] == str(report.duplicates.over_charged)
    assert all(isinstance(u["over_charged"], str) for u in doc["users"])
    assert await snapshot(db) == before  # read-only


# -- up, second up, rollback --------------------------------------------------------------------


async def test_up_with_refund_then_a_second_up_changes_nothing(
    legacy_db: tuple[Database, Legacy],
) -> None:
    db, legacy = legacy_db
    start = await wallets(db)
    result = await m.up(db, refund_overcharge=True, dry_run=False)
    assert result.ok and result.changed and result.verify is not None and result.verify.ok

    remaining = {r[0] for r in await fetch(db, f"SELECT id FROM {CONSUME}")}
    assert remaining == legacy.kept_ids()
    assert (await m.verify(db)).ok

    async def problems(conn: AsyncConnection) -> tuple[str, ...]:
        return (await inspect_live(conn)).problems

    assert await db.transaction(problems, what="t") == ()

    after = await wallets(db)
    over = legacy.over_by_user()
    for uid, amount in over.items():
        power0, total0, gift0 = start.get(uid, (Decimal(0), Decimal(0), Decimal(0)))
        assert after[uid] == (power0 + amount, total0 - amount, gift0), uid
    for uid in set(after) - set(over):
        assert after[uid] == start[uid]
    assert_refund_ledger(await refund_ledger(db), legacy, {u: p for u, (p, _, _) in start.items()})
    refunds = await fetch(
        db,
        "SELECT consume_id, amount, reversed, wallet_log_id, backup_id FROM toogo_reconcile_refund",
    )
    power_of = {r["id"]: r["power"] for r in legacy.rows}
    assert {r.consume_id for r in refunds} == legacy.extra_ids()
    assert all(r.amount == power_of[r.consume_id] and r.reversed == 0 for r in refunds)
    dedupe = result.dedupes[0]
    assert dedupe.backup is not None and dedupe.refunded_amount == sum(over.values())
    assert dedupe.wallets_created == 1  # user 6 had no wallet row
    bak = await fetch(db, f"SELECT id FROM {dedupe.backup.consume_table}")
    assert {r[0] for r in bak} == legacy.extra_ids()
    assert result.add_key is not None
    key_step = result.add_key.step("uk_user_order")
    assert key_step is not None and key_step.done and key_step.online

    before_second = await snapshot(db)
    again = await m.up(db, refund_overcharge=True, dry_run=False)
    assert again.ok and not again.changed
    assert await snapshot(db) == before_second


async def test_rollback_restores_rows_byte_for_byte_and_keeps_refunds(
    legacy_db: tuple[Database, Legacy],
) -> None:
    db, legacy = legacy_db
    original = await fetch(db, f"SELECT * FROM {CONSUME} ORDER BY id")
    await m.up(db, refund_overcharge=True, dry_run=False)
    refunded = await wallets(db)

    plan = await m.rollback(db)
    assert plan.dry_run and plan.key_present and plan.to_restore == len(legacy.extra_ids())
    result = await m.rollback(db, dry_run=False)
    assert result.restored_rows == len(legacy.extra_ids()) and result.key_drop is not None
    assert result.key_drop.done
    assert await fetch(db, f"SELECT * FROM {CONSUME} ORDER BY id") == original
    assert not (await m.verify(db)).unique_key
    assert await wallets(db) == refunded  # refunds stay: they were owed

    assert not (await m.rollback(db, dry_run=False)).changed  # a second rollback: no-op
    # deduping again must not refund a second time
    again = await m.dedupe(db, refund_overcharge=True, dry_run=False)
    assert again.deleted_rows == len(legacy.extra_ids()) and again.refunded_rows == 0
    assert again.already_refunded_rows == len(legacy.extra_ids())
    assert await wallets(db) == refunded
    assert len(await refund_ledger(db)) == len(legacy.over_by_order())


async def test_rollback_reverse_refunds_then_up_refunds_again_once(
    legacy_db: tuple[Database, Legacy],
) -> None:
    db, legacy = legacy_db
    start = await wallets(db)
    await m.up(db, refund_overcharge=True, dry_run=False)
    refunded = await wallets(db)
    result = await m.rollback(db, dry_run=False, reverse_refunds=True)
    assert result.reversed_rows == len(legacy.extra_ids())
    assert result.reversed_amount == sum(legacy.over_by_user().values())
    now = await wallets(db)
    for uid, (power, total, gift) in now.items():
        assert (power, total, gift) == start.get(uid, (Decimal(0),) * 3), uid
    assert_refund_ledger(
        await refund_ledger(db, m.REFUND_REVERSAL),
        legacy,
        {u: p for u, (p, _, _) in refunded.items()},
        m.REFUND_REVERSAL,
        -1,
    )
    rows = await fetch(db, "SELECT reversed, reversal_wallet_log_id FROM toogo_reconcile_refund")
    assert all(r.reversed == 1 and r.reversal_wallet_log_id for r in rows)
    assert not (await m.rollback(db, dry_run=False, reverse_refunds=True)).changed

    # the over-charge is owed again: the next up refunds it once more, exactly once
    await m.up(db, refund_overcharge=True, dry_run=False)
    assert await wallets(db) == refunded
    await m.up(db, refund_overcharge=True, dry_run=False)
    assert await wallets(db) == refunded
    rows = await fetch(db, "SELECT reversed FROM toogo_reconcile_refund")
    assert len(rows) == len(legacy.extra_ids()) and all(r.reversed == 0 for r in rows)


async def test_dry_runs_change_nothing(legacy_db: tuple[Database, Legacy]) -> None:
    db, legacy = legacy_db
    before = await snapshot(db)
    plan = await m.up(db, refund_overcharge=True)
    assert plan.dry_run and plan.dedupes[0].duplicates.extra_rows == len(legacy.extra_ids())
    assert plan.add_key is not None and [s.name for s in plan.add_key.steps] == [
        "uk_user_order",
        "idx_reconcile_sweep",
        "idx_reconcile_robot_close",
        "own tables",
    ]
    await m.dedupe(db, refund_overcharge=True)
    await m.add_unique_key(db, dry_run=True)
    await m.rollback(db)
    assert await snapshot(db) == before


# -- add-unique-key -------------------------------------------------------------------------------


async def test_add_unique_key_refuses_while_duplicates_remain(
    legacy_db: tuple[Database, Legacy],
) -> None:
    db, legacy = legacy_db
    before = await snapshot(db)
    with pytest.raises(m.DuplicatesRemain, match="duplicate") as info:
        await m.add_unique_key(db)
    assert info.value.groups == len(legacy.groups())
    assert await snapshot(db) == before


#: the power columns' types as each server names them (add_power_consumed_field.sql's)
POWER_COLUMN_TYPES = {
    "mysql": {"power_consumed": "tinyint(4)", "power_amount": "decimal(20,8)"},
    "postgresql": {"power_consumed": "smallint", "power_amount": "numeric(20,8)"},
}


async def power_column_types(db: Database) -> dict[str, str]:
    if is_pg(db):
        sql = (
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "WHERE a.attrelid = 'hg_trading_order'::regclass AND a.attname LIKE 'power%' "
            "AND NOT a.attisdropped"
        )
    else:
        sql = (
            "SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'hg_trading_order' "
            "AND COLUMN_NAME LIKE 'power%'"
        )
    return {r[0]: r[1] for r in await fetch(db, sql)}


async def test_add_unique_key_completes_an_older_order_table(server_url: str) -> None:
    """A database without power_consumed/power_amount/idx_power_consumed gets them (on
    PostgreSQL: upstream's own DDL, which never had them)."""
    db = await legacy_database(server_url, power_columns=False)
    try:
        if not is_pg(db):
            await execute(
                db,
                "ALTER TABLE hg_trading_order DROP INDEX idx_power_consumed, "
                "DROP COLUMN power_consumed, DROP COLUMN power_amount",
            )
        plan = await m.add_unique_key(db, dry_run=True)
        assert [s.name for s in plan.steps] == [
            "order columns",
            "idx_power_consumed",
            "uk_user_order",
            "idx_reconcile_sweep",
            "idx_reconcile_robot_close",
            "own tables",
        ]
        result = await m.add_unique_key(db)
        assert all(s.done and s.online for s in result.steps)
        report = await m.check(db)
        assert report.ready and all(report.schema.own_tables.values())
        assert await power_column_types(db) == POWER_COLUMN_TYPES[db.dialect.name]
        assert not (await m.add_unique_key(db)).changed
    finally:
        await db.close()


async def test_server_refusing_online_ddl_falls_back_or_fails_with_online_only(
    mysql_url: str,
) -> None:
    """A MyISAM table (old installs have them) cannot be altered in place."""
    db = await legacy_database(mysql_url)
    try:
        await execute(db, f"ALTER TABLE {CONSUME} ENGINE=MyISAM")
        with pytest.raises(DatabaseError, match="refuses online DDL"):
            await m.add_unique_key(db, options=m.DdlOptions(online_only=True))
        assert not (await m.verify(db)).unique_key
        result = await m.add_unique_key(db)
        step = result.step("uk_user_order")
        assert step is not None and step.done and not step.online
        assert (await m.verify(db)).ok
    finally:
        await db.close()


# -- backup ---------------------------------------------------------------------------------------


async def test_backup_copies_what_the_cleanup_touches_in_one_registered_backup(
    legacy_db: tuple[Database, Legacy],
) -> None:
    db, legacy = legacy_db
    result = await m.backup(db)
    info = result.backup
    assert info is not None and info.kind == "backup"
    assert info.consume_table.startswith("toogo_reconcile_bak_consume_")
    copied = await fetch(db, f"SELECT * FROM {info.consume_table} ORDER BY id")
    live = await fetch(db, f"SELECT * FROM {CONSUME} ORDER BY id")
    assert copied == [r for r in live if r[0] in legacy.extra_ids()]
    wallet_rows = await fetch(db, f"SELECT * FROM {info.wallet_table} ORDER BY id")
    affected = set(legacy.over_by_user())
    assert {r.user_id for r in wallet_rows} == affected & set(legacy.wallets)
    assert info.consume_rows == len(copied) and info.wallet_rows == len(wallet_rows)
    second = await m.backup(db)  # same second: the name gets a suffix, nothing is overwritten
    assert second.backup is not None and second.backup.consume_table != info.consume_table
    assert any(
        "INSERT INTO hg_toogo_power_consume" in s for s in info.restore_statements(db.dialect)
    )


async def test_the_printed_restore_statements_run_and_restore(
    legacy_db: tuple[Database, Legacy],
) -> None:
    """What `migrate backup` prints to restore by hand is valid SQL for this database: run
    after dedupe and add-unique-key, it puts every deleted row back (and the wallets)."""
    db, _ = legacy_db
    original = await fetch(db, f"SELECT * FROM {CONSUME} ORDER BY id")
    wallets_before = await wallets(db)
    info = (await m.backup(db)).backup
    assert info is not None
    await m.dedupe(db, refund_overcharge=True, dry_run=False)
    await m.add_unique_key(db)
    prefix = "-- only if nothing has charged or refunded these users since the backup: "
    for statement in info.restore_statements(db.dialect):
        for part in statement.removeprefix(prefix).split(";"):
            if part.strip():
                assert not part.lstrip().startswith("--"), statement
                await execute(db, part)
    assert await fetch(db, f"SELECT * FROM {CONSUME} ORDER BY id") == original
    restored = await wallets(db)  # the refund made user 6 a wallet row: no backup has it
    assert {u: w for u, w in restored.items() if u in wallets_before} == wallets_before


def test_dump_command_never_puts_the_password_on_the_command_line() -> None:
    secret = "pw-in-url"
    settings = DatabaseSettings(url=f"mysql+aiomysql://toogo:{secret}@db.internal:3307/hotgo")
    argv, env = m.dump_command(settings, "/usr/bin/mysqldump")
    assert not any(secret in a for a in argv)
    assert env["MYSQL_PWD"] == secret
    assert argv[-3:] == ["hotgo", CONSUME, "hg_toogo_wallet"]
    assert "--single-transaction" in argv and "--port=3307" in argv

    settings = DatabaseSettings(url=f"postgresql+asyncpg://toogo:{secret}@db.internal:5433/hotgo")
    argv, env = m.dump_command(settings, "/usr/bin/pg_dump")
    assert not any(secret in a for a in argv)
    assert env["PGPASSWORD"] == secret
    assert argv[-3:] == [f"--table={CONSUME}", "--table=hg_toogo_wallet", "--dbname=hotgo"]
    assert "--port=5433" in argv and "--host=db.internal" in argv and "--no-password" in argv


@pytest.mark.skipif(
    m.dump_tool(Dialect.for_backend("mysql")) is None,
    reason="mysqldump is not on PATH",
)
async def test_dump_with_a_password_user(tmp_path: Any, mysql_url: str) -> None:
    from kits.databases import mysql_admin

    db = await legacy_database(mysql_url)
    await seed_legacy(db)
    await db.close()
    name = db.settings.sqlalchemy_url().database
    user, password = f"trc_dump_{random.getrandbits(24):x}", "p#w'\"d\\x y"
    admin = mysql_admin()
    try:
        with admin.cursor() as cur:
            cur.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (user, password))
            cur.execute(f"GRANT SELECT ON `{name}`.* TO %s@'%%'", (user,))  # all a dump needs
        from sqlalchemy.engine import make_url

        url = make_url(mysql_url).set(username=user, password=password)
        dumper = Database(DatabaseSettings(url=url.render_as_string(hide_password=False)))
        path = tmp_path / "dump.sql"
        result = await m.dump_tables(dumper, path)
        body = path.read_text()
        assert "CREATE TABLE `hg_toogo_power_consume`" in body
        assert "CREATE TABLE `hg_toogo_wallet`" in body and "INSERT INTO" in body
        assert result.bytes == path.stat().st_size and path.stat().st_mode & 0o777 == 0o600
    finally:
        with admin.cursor() as cur:
            cur.execute("DROP USER IF EXISTS %s@'%%'", (user,))
        admin.close()


# -- charging goes on while the migration runs ----------------------------------------------------


async def test_charges_during_up_stay_exactly_once(legacy_db: tuple[Database, Legacy]) -> None:
    import asyncio

    from kits.seed import insert_order

    db, legacy = legacy_db
    start = await wallets(db)
    fresh = [
        await insert_order(
            db, user_id=1 + i % 6, order_sn=f"FRESH-{i}", realized_profit=Decimal("12.3400")
        )
        for i in range(40)
    ]
    consumer = PowerConsumer(db, PowerRules(Decimal("0.10"), Decimal("0.01"), vip_discount=False))

    async def charge(ids: list[int]) -> None:
        for oid in ids:
            await consumer.charge(oid, Source.REALTIME)
            await asyncio.sleep(0)

    await asyncio.gather(
        charge(fresh[::2]), charge(fresh[1::2]), m.up(db, refund_overcharge=True, dry_run=False)
    )
    for oid in fresh:  # charged once more each, and retried charges are skipped
        await consumer.charge(oid, Source.REALTIME)
    in_fresh = ", ".join(str(i) for i in fresh)
    counts = await fetch(
        db,
        f"SELECT order_id, COUNT(*) FROM {CONSUME} "
        f"WHERE order_id IN ({in_fresh}) GROUP BY order_id",
    )
    assert len(counts) == len(fresh) and all(r[1] == 1 for r in counts)
    charged: dict[int, Decimal] = defaultdict(Decimal)
    for r in await fetch(
        db,
        "SELECT user_id, change_amount FROM hg_toogo_wallet_log "
        "WHERE change_type = 'power_consume'",
    ):
        charged[r.user_id] += r.change_amount
    over = legacy.over_by_user()
    for uid, (power, _, _) in (await wallets(db)).items():
        p0 = start.get(uid, (Decimal(0),))[0]
        assert power == p0 + over.get(uid, Decimal(0)) + charged[uid], uid
    assert (await m.verify(db)).ok
    ledger = await fetch(db, "SELECT * FROM hg_toogo_wallet_log ORDER BY id")
    last: dict[int, Decimal] = {}
    for r in ledger:
        if r.user_id in last:
            assert r.before_amount == last[r.user_id], r.id
        last[r.user_id] = r.after_amount


async def test_backup_tables_are_dropped_only_when_no_commit_registered_them(
    legacy_db: tuple[Database, Legacy],
) -> None:
    """The guard for a COMMIT whose outcome was unknown: registered tables are the backup."""
    from reconcile.migration._backup import create_backup_tables, drop_unregistered

    db, _ = legacy_db
    info = (await m.backup(db)).backup
    assert info is not None
    kept = await drop_unregistered(db, (info.consume_table, info.wallet_table))
    assert kept is not None and kept.id == info.id
    spare = await create_backup_tables(db)
    assert await drop_unregistered(db, spare) is None
    names = await tables(db)
    assert {info.consume_table, info.wallet_table} <= names and not set(spare) & names
