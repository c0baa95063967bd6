"""The runbook's PostgreSQL-only cases: an invalid index a failed CONCURRENTLY build left,
upstream's raw PostgreSQL schema (no power columns), and the dump through pg_dump."""

from __future__ import annotations

import asyncio
import random
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from kits.databases import pg_admin, pg_dsn
from reconcile import migration as m
from reconcile.storage.db import Database, DatabaseSettings
from tests.migration_kit import (
    CONSUME,
    database_name,
    fetch,
    indexes,
    legacy_database,
    seed_legacy,
)

pytestmark = pytest.mark.mysql


@pytest.fixture
async def pg_legacy(pg_url: str) -> AsyncIterator[Database]:
    db = await legacy_database(pg_url)
    yield db
    await db.close()


async def catalog(db: Database, index: str) -> tuple[bool, bool] | None:
    """(valid, is a constraint) of the index ``index``, None when absent."""
    rows = await fetch(
        db,
        "SELECT x.indisvalid, EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = "
        "x.indexrelid) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
        "WHERE i.relname = :n",
        n=index,
    )
    return (bool(rows[0][0]), bool(rows[0][1])) if rows else None


async def test_an_invalid_key_left_by_a_failed_concurrent_build_is_reported_and_rebuilt(
    pg_legacy: Database,
) -> None:
    db = pg_legacy
    await seed_legacy(db)
    conn = await asyncpg.connect(pg_dsn(database_name(db)))
    try:  # what a build interrupted by a duplicate (or a cancel, a lock timeout) leaves
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                f"CREATE UNIQUE INDEX CONCURRENTLY uk_user_order ON {CONSUME} (user_id, order_id)"
            )
    finally:
        await conn.close()
    assert await catalog(db, "uk_user_order") == (False, False)

    report = await m.check(db)
    assert report.schema.invalid_indexes == ("uk_user_order",)
    assert not report.schema.unique_key and "uk_user_order" in report.pending_ddl
    assert any("unique key uk_user_order missing" in p for p in report.problems)
    assert report.to_dict()["invalid_indexes"] == ["uk_user_order"]
    assert not (await m.verify(db)).ok
    plan = await m.add_unique_key(db, dry_run=True)
    key = plan.step("uk_user_order")
    assert key is not None and key.sql.startswith("DROP INDEX CONCURRENTLY IF EXISTS uk_user_order")

    result = await m.up(db, refund_overcharge=True, dry_run=False)
    assert result.ok
    assert await catalog(db, "uk_user_order") == (True, True)  # rebuilt, and a constraint
    after = await m.check(db)
    assert after.schema.invalid_indexes == () and after.ready and after.schema.key_constraint


async def test_a_failed_build_drops_the_invalid_index_it_left(pg_legacy: Database) -> None:
    """add-unique-key meets a duplicate inserted behind its back: the build fails, and the
    invalid index (which would refuse the legacy writer's next duplicate) is gone again."""
    db = pg_legacy
    await seed_legacy(db)
    from reconcile.errors import DuplicateKey
    from reconcile.migration._alter import DdlOptions
    from reconcile.migration._ddl import _pg_step

    with pytest.raises(DuplicateKey):  # add_unique_key turns it into DuplicatesRemain
        await _pg_step(db, "uk_user_order", DdlOptions())
    assert await catalog(db, "uk_user_order") is None
    assert (await m.check(db)).schema.invalid_indexes == ()


async def test_upstreams_raw_schema_gets_the_power_columns_and_nothing_else(pg_url: str) -> None:
    """Upstream's PostgreSQL DDL lacks power_consumed/power_amount (its MySQL install adds them
    with add_power_consumed_field.sql): check reports them, up adds them, the index the script
    adds and the sweep index - and nothing else of hotgo's."""
    db = await legacy_database(pg_url, power_columns=False)
    try:
        columns_sql = (
            "SELECT column_name, data_type, is_nullable, column_default FROM "
            "information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = 'hg_trading_order'"
        )
        before_cols = {r[0]: tuple(r[1:]) for r in await fetch(db, columns_sql)}
        before_ix = await indexes(db)
        report = await m.check(db)
        assert report.schema.order_columns == {"power_consumed": False, "power_amount": False}
        assert not report.schema.power_index
        assert any("hg_trading_order.power_consumed missing" in p for p in report.problems)
        assert any("hg_trading_order.power_amount missing" in p for p in report.problems)
        assert report.pending_ddl[:2] == ("order columns", "idx_power_consumed")

        result = await m.up(db, refund_overcharge=True, dry_run=False)
        assert result.ok
        after_cols = {r[0]: tuple(r[1:]) for r in await fetch(db, columns_sql)}
        assert {k: v for k, v in after_cols.items() if k not in before_cols} == {
            "power_consumed": ("smallint", "NO", "0"),
            "power_amount": ("numeric", "NO", "0"),
        }
        assert {k: after_cols[k] for k in before_cols} == before_cols
        assert "close_order_id" not in after_cols  # not the runbook's to add
        added = {(t, n) for t, n, _ in await indexes(db)} - {(t, n) for t, n, _ in before_ix}
        hotgo_added = {(t, n) for t, n in added if t.startswith("hg_")}
        assert hotgo_added == {
            ("hg_trading_order", "idx_power_consumed"),
            ("hg_trading_order", "idx_reconcile_sweep"),
            ("hg_trading_order", "idx_reconcile_robot_close"),
            (CONSUME, "uk_user_order"),
        }
        power = [d for t, n, d in await indexes(db) if n == "idx_power_consumed"]
        assert power and power[0].endswith("(power_consumed, status, realized_profit)")
        assert (await m.check(db)).ready
    finally:
        await db.close()


@pytest.mark.skipif(shutil.which("pg_dump") is None, reason="pg_dump is not on PATH")
async def test_pg_dump_with_a_password_user_restores_with_the_printed_command(
    pg_legacy: Database, tmp_path: Path
) -> None:
    db = pg_legacy
    await seed_legacy(db)
    original = await fetch(db, f"SELECT * FROM {CONSUME} ORDER BY id")
    name = database_name(db)
    user, password = f"trc_dump_{random.getrandbits(24):x}", "p#w'\"d\\x y"
    quoted = password.replace("'", "''")
    pg_admin(f"CREATE ROLE {user} LOGIN PASSWORD '{quoted}'")
    try:
        conn = await asyncpg.connect(pg_dsn(name))
        try:  # all a dump needs
            await conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {user}")
            await conn.execute(f"GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO {user}")
        finally:
            await conn.close()
        url = db.settings.sqlalchemy_url().set(username=user, password=password)
        dumper = Database(DatabaseSettings(url=url.render_as_string(hide_password=False)))
        path = tmp_path / "dump.sql"
        result = await m.dump_tables(dumper, path)
        body = path.read_text()
        for table in (CONSUME, "hg_toogo_wallet"):
            assert f"CREATE TABLE public.{table} (" in body and f"COPY public.{table} (" in body
        assert result.bytes == path.stat().st_size and path.stat().st_mode & 0o777 == 0o600
        assert result.tool == "pg_dump" and result.restore.startswith("psql ")

        await m.dedupe(db, dry_run=False)
        assert len(await fetch(db, f"SELECT id FROM {CONSUME}")) < len(original)
        # the printed command, run by the operator (a role that may replace the tables)
        argv = [*result.restore.split(), "--host=127.0.0.1", "--username=postgres", "--quiet"]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        _, err = await proc.communicate()
        assert proc.returncode == 0, err
        assert await fetch(db, f"SELECT * FROM {CONSUME} ORDER BY id") == original
    finally:
        conn = await asyncpg.connect(pg_dsn(name))
        try:
            await conn.execute(f"DROP OWNED BY {user}")
        finally:
            await conn.close()
        pg_admin(f"DROP ROLE IF EXISTS {user}")
