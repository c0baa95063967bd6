"""What upstream's engine does that the daemon must live with (docs/architecture.md, facts read from
lilei800/toogo_v2): 2006 placeholder close times, pending and failed orders, a Go wallet writer
that reads without a lock and writes an absolute balance, clocks in Asia/Shanghai, the published
default AES key. Rows are written the way the engine writes them; the writer's interleavings are
ours (no artefact records them)."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from kits.databases import open_database
from kits.seed import insert_order, set_wallet
from reconcile.charging.consumer import PowerConsumer
from reconcile.charging.outcomes import Outcome, Source
from reconcile.storage.db import Database
from reconcile.storage.schema import wallet, wallet_log
from reconcile.sync.credentials import UPSTREAM_DEFAULT_KEY, AesKey, encrypt_value
from reconcile.views.audit import audit
from tests.history_kit import (
    NOW,
    RULES,
    add_account,
    add_robot,
    history_sync,
    position,
    write_replay,
)
from tests.procs import run_cli, write_config

pytestmark = pytest.mark.mysql

PLACEHOLDER = datetime(2006, 1, 2, 15, 4, 5)  # Go's reference time, as the engine leaves it


async def test_a_placeholder_close_time_is_never_charged_and_audit_lists_it(
    server_db: Database,
) -> None:
    order = await insert_order(server_db, user_id=5, close_time=PLACEHOLDER)
    result = await PowerConsumer(server_db, RULES).charge(order, Source.REALTIME)
    assert result.outcome is Outcome.NOT_ELIGIBLE and "not a real close time" in str(result.reason)
    report = await audit(server_db, backlog_after=timedelta(hours=1))
    [check] = [c for c in report.checks if c.name == "placeholder_close_time"]
    assert check.violations == 1 and check.examples[0]["order_id"] == order
    assert not report.ok


async def test_the_sync_never_matches_on_a_placeholder_nor_closes_pending_or_failed(
    server_db: Database, tmp_path: Path
) -> None:
    await add_account(server_db, 10, user_id=7)
    await add_robot(server_db, 100, user_id=7, account_id=10)
    closed = NOW - timedelta(hours=2)
    # a closed order with the placeholder: close-time matching must not pick it ...
    placeholder = await insert_order(
        server_db, user_id=7, robot_id=100, close_time=PLACEHOLDER, quantity=Decimal("0.01")
    )
    # ... pending (0) and failed (4) orders are never closed by the sync
    pending = await insert_order(
        server_db,
        user_id=7,
        robot_id=100,
        status=0,
        close_time=None,
        close_price=None,
        open_time=server_db.to_db_time(closed - timedelta(hours=1)),
        quantity=Decimal("0.01"),
    )
    failed = await insert_order(
        server_db,
        user_id=7,
        robot_id=100,
        status=4,
        close_time=None,
        close_price=None,
        open_time=server_db.to_db_time(closed - timedelta(hours=1)),
        quantity=Decimal("0.01"),
    )
    replay = write_replay(tmp_path / "r.jsonl", [position(10, "B-1", closed=closed)])
    async with history_sync(server_db, replay) as sync:
        summary = await sync.run_cycle()
    assert (summary.inserted, summary.closed, summary.matched) == (1, 0, 0)

    async def statuses(conn: AsyncConnection) -> dict[int, Any]:
        from reconcile.storage.schema import trading_order as t

        rows = await conn.execute(select(t.c.id, t.c.status, t.c.close_time))
        return {r.id: (r.status, r.close_time) for r in rows}

    rows = await server_db.transaction(statuses, what="read")
    assert rows[placeholder] == (2, PLACEHOLDER)
    assert rows[pending] == (0, None) and rows[failed] == (4, None)


async def go_change_balance_read(db: Database, user_id: int) -> Decimal:
    """hotgo's ChangeBalance, first half: read the wallet, no lock."""

    async def read(conn: AsyncConnection) -> Decimal:
        stmt = select(wallet.c.power).where(wallet.c.user_id == user_id)
        return Decimal((await conn.execute(stmt)).scalar_one())

    return await db.transaction(read, what="go reads the wallet")


async def go_change_balance_write(
    db: Database, user_id: int, read: Decimal, delta: Decimal, *, log_first: bool
) -> None:
    """The second half: an absolute balance written back, with its wallet_log row."""

    async def write(conn: AsyncConnection) -> None:
        entry = wallet_log.insert().values(
            user_id=user_id,
            account_type="power",
            change_type="recharge",
            change_amount=delta,
            before_amount=read,
            after_amount=read + delta,
            remark="go ChangeBalance",
        )
        if log_first:
            await conn.execute(entry)
        await conn.execute(
            update(wallet).where(wallet.c.user_id == user_id).values(power=read + delta)
        )
        if not log_first:
            await conn.execute(entry)

    await db.transaction(write, what="go writes the wallet")


@pytest.mark.parametrize("log_first", [False, True], ids=["wallet_then_log", "log_then_wallet"])
async def test_audit_catches_a_read_then_write_wallet_writer(
    server_db: Database, log_first: bool
) -> None:
    await set_wallet(server_db, 5, Decimal("100"))
    order = await insert_order(server_db, user_id=5, realized_profit=Decimal("10"))
    clean = await audit(server_db, backlog_after=timedelta(hours=1))
    assert clean.ok

    seen = await go_change_balance_read(server_db, 5)  # the Go writer reads 100 ...
    if log_first:  # ... writes its ledger row, then the daemon debits, then it writes 110
        await go_change_balance_write_log_only(server_db, 5, seen, Decimal("10"))
        await PowerConsumer(server_db, RULES).charge(order, Source.REALTIME)
        await go_set_balance(server_db, 5, seen + Decimal("10"))
    else:  # ... the daemon debits 1, then the Go writer writes 110 and its ledger row
        await PowerConsumer(server_db, RULES).charge(order, Source.REALTIME)
        await go_change_balance_write(server_db, 5, seen, Decimal("10"), log_first=False)

    report = await audit(server_db, backlog_after=timedelta(hours=1))
    failing = {c.name: c for c in report.checks if not c.ok}
    assert not report.ok
    assert "ledger_chain" in failing  # somebody's before is not the previous after
    if log_first:
        [lost] = failing["wallet_vs_ledger"].examples
        assert lost["user_id"] == 5
        assert (lost["wallet_power"], lost["last_after"]) == (Decimal("110"), Decimal("99"))
        assert lost["last_ledger_at"] is not None


async def go_change_balance_write_log_only(
    db: Database, user_id: int, read: Decimal, delta: Decimal
) -> None:
    async def write(conn: AsyncConnection) -> None:
        await conn.execute(
            wallet_log.insert().values(
                user_id=user_id,
                account_type="power",
                change_type="recharge",
                change_amount=delta,
                before_amount=read,
                after_amount=read + delta,
            )
        )

    await db.transaction(write, what="go writes its ledger row")


async def go_set_balance(db: Database, user_id: int, power: Decimal) -> None:
    async def write(conn: AsyncConnection) -> None:
        await conn.execute(update(wallet).where(wallet.c.user_id == user_id).values(power=power))

    await db.transaction(write, what="go writes the balance")


async def test_a_utc_timezone_on_shanghai_data_is_refused(mysql_url: str, tmp_path: Path) -> None:
    """The engine writes DATETIMEs in Asia/Shanghai; database.timezone left at UTC would shift
    every window by 8 h. doctor fails and the charging commands refuse, from the data alone.
    (MySQL only: upstream's PostgreSQL trading tables hold TIMESTAMPTZ, absolute instants.)"""
    server_url = mysql_url
    shanghai = await open_database(server_url, timezone="Asia/Shanghai")
    try:
        await insert_order(shanghai, user_id=5)  # created/updated "now" in Shanghai
    finally:
        await shanghai.close()
    utc = write_config(tmp_path / "utc.yaml", server_url)
    for args in (("doctor",), ("sweep",), ("run", "--once")):
        code, out, err = await run_cli(utc, *args)
        assert code == (1 if args == ("doctor",) else 2), (args, out, err)  # 2: a config error
        assert "database.timezone UTC" in out + err and "in the future" in out + err, args
    for setting in ("timezone_check: false", "timezone: Asia/Shanghai"):  # override, or right
        cfg = write_config(tmp_path / "ok.yaml", server_url)
        cfg.write_text(cfg.read_text().replace("database:\n", f"database:\n  {setting}\n", 1))
        code, out, err = await run_cli(cfg, "sweep")
        assert code == 0, (setting, out, err)


async def test_doctor_warns_of_upstreams_published_default_key(
    server_db: Database, server_url: str, tmp_path: Path
) -> None:
    key = AesKey(UPSTREAM_DEFAULT_KEY)
    await add_account(
        server_db,
        10,
        user_id=7,
        api_key=encrypt_value("k-1", key),
        secret_key=encrypt_value("s-1", key),
    )
    cfg = write_config(tmp_path / "c.yaml", server_url)
    _, out, err = await run_cli(cfg, "doctor", TOOGO_AES_KEY=UPSTREAM_DEFAULT_KEY)
    [warning] = [ln for ln in out.splitlines() if ln.startswith("!") and "published" in ln]
    assert "credentials" in warning and "decrypt" in warning
    assert UPSTREAM_DEFAULT_KEY not in out + err  # never printed
