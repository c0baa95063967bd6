"""`toogo-reconcile migrate ...` as an operator runs it: subprocesses, a YAML config, on MariaDB
and on PostgreSQL (``server_url``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

from reconcile import migration as m
from reconcile.storage.db import Database
from tests.migration_kit import (
    CONSUME,
    Legacy,
    fail_trigger,
    fetch,
    legacy_database,
    refund_ledger,
    seed_legacy,
    snapshot,
    wallets,
)
from tests.procs import run_cli, write_config

pytestmark = pytest.mark.mysql


@dataclass
class Setup:
    db: Database
    legacy: Legacy
    config: Path


@pytest.fixture
async def setup(server_url: str, tmp_path: Path) -> AsyncIterator[Setup]:
    db = await legacy_database(server_url)
    try:
        legacy = await seed_legacy(db)
        yield Setup(db, legacy, write_config(tmp_path / "config.yaml", server_url))
    finally:
        await db.close()


def stderr_events(err: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


async def test_check_json_prints_exactly_one_object_with_the_exact_figures(setup: Setup) -> None:
    code, out, err = await run_cli(setup.config, "migrate", "check", "--json")
    assert code == 1, err  # the daemon would refuse this schema: uk_user_order, own tables
    doc = json.loads(out)  # the whole of stdout is one JSON object: logs went to stderr
    assert isinstance(doc, dict) and out.count("\n") == 1
    legacy = setup.legacy
    over = legacy.over_by_user()
    assert doc["duplicate_groups"] == len(legacy.groups())
    assert doc["extra_rows"] == len(legacy.extra_ids())
    assert Decimal(doc["over_charged_total"]) == sum(over.values())
    assert {u["user_id"]: Decimal(u["over_charged"]) for u in doc["users"]} == over
    assert {
        (g["user_id"], g["order_id"]): (g["keep_id"], sorted(g["delete_ids"]))
        for g in doc["groups"]
    } == {k: (rs[-1]["id"], sorted(r["id"] for r in rs[:-1])) for k, rs in legacy.groups().items()}
    assert doc["unique_key"] is False and doc["ready"] is False
    assert doc["trading_order"] == {
        "power_consumed": True,
        "power_amount": True,
        "idx_power_consumed": True,
    }
    assert doc["own_tables"] == {
        "toogo_reconcile_backup": False,
        "toogo_reconcile_binding": False,
        "toogo_reconcile_correction": False,
        "toogo_reconcile_cursor": False,
        "toogo_reconcile_poll": False,
        "toogo_reconcile_quarantine": False,
        "toogo_reconcile_record": False,
        "toogo_reconcile_record_order": False,
        "toogo_reconcile_refund": False,
        "toogo_reconcile_shadow": False,
        "toogo_reconcile_skip": False,
        "toogo_reconcile_verdict": False,
    }
    assert doc["charged_legs"] == [] and doc["charged_legs_amount"] == "0"
    assert any(e.get("event") == "migrate check" for e in stderr_events(err))

    code, out, _ = await run_cli(setup.config, "migrate", "check")
    assert code == 1
    assert "✗ hg_toogo_power_consume unique key uk_user_order missing" in out
    assert f"{len(legacy.groups())} groups, {len(legacy.extra_ids())} extra rows" in out
    assert "uk_user_order".ljust(20) in out or "MISSING" in out


async def test_without_yes_every_destructive_command_only_prints_its_plan(setup: Setup) -> None:
    before = await snapshot(setup.db)
    for args in (
        ("dedupe", "--refund"),
        ("dedupe",),
        ("up", "--refund"),
        ("add-unique-key",),
        ("rollback", "--reverse-refunds"),
    ):
        code, out, err = await run_cli(setup.config, "migrate", *args)
        assert code == 0, (args, err)
        assert "PLAN" in out and "dry run" in out, args
    code, out, _ = await run_cli(setup.config, "migrate", "dedupe")
    assert "WARNING: without --refund" in out
    code, out, _ = await run_cli(setup.config, "migrate", "add-unique-key")
    assert ONLINE_DDL[setup.db.dialect.name] in out and "BLOCKED" in out
    assert await snapshot(setup.db) == before


async def test_up_verify_second_up_and_rollback(setup: Setup) -> None:
    db, legacy = setup.db, setup.legacy
    original = await fetch(db, f"SELECT * FROM {CONSUME} ORDER BY id")
    start = await wallets(db)
    code, out, _ = await run_cli(setup.config, "migrate", "verify")
    assert code == 1 and "duplicate" in out and "no unique key uk_user_order" in out

    code, out, err = await run_cli(setup.config, "migrate", "up", "--refund", "--yes")
    assert code == 0, err
    assert "verify: OK" in out and "refunded" in out and "uk_user_order: done" in out
    events = stderr_events(err)
    assert any(
        e.get("event") == "migrate step"
        and e.get("step") == "uk_user_order"
        and e.get("status") == "done"
        for e in events
    )
    assert {r[0] for r in await fetch(db, f"SELECT id FROM {CONSUME}")} == legacy.kept_ids()
    over = legacy.over_by_user()
    after = await wallets(db)
    assert {u: after[u][0] - start.get(u, (Decimal(0),))[0] for u in over} == over
    code, out, _ = await run_cli(setup.config, "migrate", "verify")
    assert code == 0 and "verify: OK" in out

    before_second = await snapshot(db)
    code, out, _ = await run_cli(setup.config, "migrate", "up", "--refund", "--yes")
    assert code == 0 and "up: nothing to do" in out
    assert await snapshot(db) == before_second

    code, out, err = await run_cli(setup.config, "migrate", "rollback", "--yes")
    assert code == 0, err
    assert "uk_user_order dropped" in out and "refunds stay" in out
    assert await fetch(db, f"SELECT * FROM {CONSUME} ORDER BY id") == original
    code, out, _ = await run_cli(setup.config, "migrate", "verify")
    assert code == 1
    assert len(await refund_ledger(db)) == len(legacy.over_by_order())


async def test_add_unique_key_refuses_while_duplicates_remain(setup: Setup) -> None:
    before = await snapshot(setup.db)
    code, _, err = await run_cli(setup.config, "migrate", "add-unique-key", "--yes")
    assert code == 1
    assert "duplicate" in err and "migrate dedupe --yes" in err and "Traceback" not in err
    assert await snapshot(setup.db) == before


async def test_dedupe_then_add_unique_key_step_by_step(setup: Setup) -> None:
    code, out, err = await run_cli(setup.config, "migrate", "backup")
    assert code == 0, err
    assert "toogo_reconcile_bak_consume_" in out and "INSERT INTO hg_toogo_power_consume" in out
    code, out, err = await run_cli(setup.config, "migrate", "dedupe", "--yes")
    assert code == 0, err
    assert "WARNING" in out and "NOT refunded" in out
    assert any(e.get("event") == "over-charge not refunded" for e in stderr_events(err))
    assert await refund_ledger(setup.db) == []
    code, out, err = await run_cli(setup.config, "migrate", "add-unique-key", "--yes")
    assert code == 0, err
    assert "online" in out and "total" in out
    assert (await run_cli(setup.config, "migrate", "verify"))[0] == 0


async def test_a_failure_inside_up_exits_1_and_changes_nothing(setup: Setup) -> None:
    await fail_trigger(setup.db, CONSUME, "BEFORE DELETE")
    before = await snapshot(setup.db)
    code, _, err = await run_cli(setup.config, "migrate", "up", "--refund", "--yes")
    assert code == 1 and "injected failure" in err and "Traceback" not in err
    after = await snapshot(setup.db)
    assert after[CONSUME] == before[CONSUME]
    assert after["hg_toogo_wallet"] == before["hg_toogo_wallet"]
    assert after["hg_toogo_wallet_log"] == before["hg_toogo_wallet_log"]
    assert after.get("toogo_reconcile_refund", []) == []
    assert not [t for t in after["tables"] if t.startswith("toogo_reconcile_bak_")]


#: the online form of the DDL, as the plan prints it
ONLINE_DDL = {"mysql": "ALGORITHM=INPLACE, LOCK=NONE", "postgresql": "CONCURRENTLY"}
#: how each dump tool writes a table and its rows
DUMPED = {
    "mysql": ("CREATE TABLE `{t}`", "INSERT INTO `{t}`"),
    "postgresql": ("CREATE TABLE public.{t} (", "COPY public.{t} ("),
}


async def test_backup_dump_writes_both_tables(setup: Setup, tmp_path: Path) -> None:
    if m.dump_tool(setup.db.dialect) is None:
        pytest.skip("the dump tool is not on PATH")
    dump = tmp_path / "before-migration.sql"
    code, out, err = await run_cli(setup.config, "migrate", "backup", "--dump", str(dump))
    assert code == 0, err
    body = dump.read_text()
    for table in (CONSUME, "hg_toogo_wallet"):
        for marker in DUMPED[setup.db.dialect.name]:
            assert marker.format(t=table) in body
    assert dump.stat().st_mode & 0o777 == 0o600
    assert f"dump: {dump}" in out


async def test_sqlite_is_refused_as_a_configuration_error(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", f"sqlite+aiosqlite:///{tmp_path}/x.db")
    code, _, err = await run_cli(config, "migrate", "check")
    assert code == 2 and "MySQL/MariaDB" in err


async def test_rollback_of_an_unknown_backup_exits_1(setup: Setup) -> None:
    assert (await run_cli(setup.config, "migrate", "up", "--refund", "--yes"))[0] == 0
    code, _, err = await run_cli(setup.config, "migrate", "rollback", "--backup-id", "99")
    assert code == 1 and "no dedupe or legs backup #99" in err
    code, out, _ = await run_cli(setup.config, "migrate", "rollback", "--backup-id", "1")
    assert code == 0 and "backup #1" in out


async def test_check_exits_0_once_up_has_run(setup: Setup) -> None:
    assert (await run_cli(setup.config, "migrate", "up", "--refund", "--yes"))[0] == 0
    code, out, err = await run_cli(setup.config, "migrate", "check", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["schema_problems"] == [] and doc["ready"] is True
