"""What is PostgreSQL's own: TIMESTAMPTZ columns, hg_toogo_* transferred either way, and
the commands an operator runs first (doctor, demo).

The schema is upstream's PostgreSQL DDL for the trading tables (kits/upstream.py); everything
shared with MariaDB is proved by the parametrized suites (server_db / any_db)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from kits.databases import FAST_RETRY, open_database
from kits.seed import assert_ledger_consistent, insert_order, set_wallet
from kits.upstream import create_upstream_pg_schema
from reconcile.charging.consumer import PowerConsumer
from reconcile.charging.outcomes import Outcome, Source
from reconcile.charging.pricing import PowerRules
from reconcile.storage.db import Database, DatabaseSettings
from reconcile.storage.schema import trading_order
from reconcile.views.audit import audit
from tests.procs import run_cli, write_config

RULES = PowerRules(Decimal("0.10"), Decimal("0.01"))


async def test_timestamptz_holds_the_instant_whatever_database_timezone_says(
    pg_url: str,
) -> None:
    """hotgo's TIMESTAMPTZ columns hold instants: an order written by a daemon configured for
    Asia/Shanghai reads back, in a UTC-configured daemon, 8 h earlier on the wall clock - the
    same instant - and the server agrees."""
    shanghai = await open_database(pg_url, timezone="Asia/Shanghai")
    closed_local = datetime(2026, 11, 30, 20, 0, 0)  # 12:00 UTC
    try:
        order_id = await insert_order(shanghai, close_time=closed_local)
    finally:
        await shanghai.close()
    utc = Database(DatabaseSettings(url=pg_url, retry=FAST_RETRY, timezone="UTC"))
    await utc.open()
    try:

        async def read(conn: AsyncConnection) -> tuple[datetime, datetime]:
            ours = (
                await conn.execute(
                    select(trading_order.c.close_time).where(trading_order.c.id == order_id)
                )
            ).scalar_one()
            server = (
                await conn.execute(
                    text(
                        "SELECT close_time AT TIME ZONE 'UTC' FROM hg_trading_order WHERE id = :i"
                    ),
                    {"i": order_id},
                )
            ).scalar_one()
            return ours, server

        ours, server = await utc.transaction(read, what="read close_time")
    finally:
        await utc.close()
    assert ours == server == datetime(2026, 11, 30, 12, 0, 0)


async def test_charges_on_hg_toogo_tables_transferred_as_timestamptz(pg_url: str) -> None:
    """A MySQL -> PostgreSQL transfer may give DATETIME as TIMESTAMPTZ (or TIMESTAMP, the
    default fixture): the charge, its ledger and the audit work the same."""
    db = Database(DatabaseSettings(url=pg_url, retry=FAST_RETRY, timezone="Asia/Shanghai"))
    await db.open()
    try:

        async def create(conn: AsyncConnection) -> None:
            await create_upstream_pg_schema(conn, tz_columns=True)

        await db.transaction(create, what="create schema")
        await set_wallet(db, 3, Decimal("10"))
        order_id = await insert_order(db, user_id=3, realized_profit=Decimal("12.5"))
        result = await PowerConsumer(db, RULES).charge(order_id, Source.REALTIME)
        assert (result.outcome, result.consume_power) == (Outcome.CHARGED, Decimal("1.25"))
        await assert_ledger_consistent(db, {3: Decimal("10")})
        report = await audit(db, backlog_after=timedelta(hours=1))
        assert report.ok, [c for c in report.checks if not c.ok]

        async def created(conn: AsyncConnection) -> datetime:
            stmt = text("SELECT created_at FROM hg_toogo_power_consume WHERE order_id = :i")
            return (await conn.execute(stmt, {"i": order_id})).scalar_one()

        stamp = await db.transaction(created, what="read created_at")
        now = datetime.now(UTC).astimezone(db.tz).replace(tzinfo=None)
        assert abs(stamp - now) < timedelta(minutes=1)  # local time, not shifted by 8 h
    finally:
        await db.close()


async def test_doctor_and_demo_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", pg_url)
    code, out, err = await run_cli(cfg, "demo", "--db", pg_url, "--force")
    assert code == 0, (out, err)
    assert "✓ wallet_vs_ledger" in out and "Demo complete." in out
    code, out, err = await run_cli(cfg, "doctor")
    assert "✓ database     postgresql" in out and "✓ schema       ready" in out, (out, err)
    assert "✗" not in out
