"""The command line as an operator meets it: exit codes, one-line errors, no secrets."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from kits.databases import open_database
from kits.seed import insert_order
from reconcile.storage.db import Database
from tests.procs import run_cli, write_config


def events(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


@pytest.mark.parametrize(
    ("yaml_text", "field"),
    [
        ("database:\n  urll: x\n", "database.urll: unknown key"),
        ("sweep:\n  lookback: -3d\n", "sweep.lookback"),
        ("sweep:\n  lookback: 0s\n", "sweep.lookback"),
        ("sweep:\n  page_size: many\n", "sweep.page_size"),
        ("power:\n  consume_rate: abc\n", "power.consume_rate"),
        ("power:\n  min_consume: -1\n", "power.min_consume"),
        ("power:\n  mode: dry-run\n", "power.mode"),
        ("database:\n  timezone: Mars/Olympus\n", "database.timezone"),
        ("database:\n  url: postgresql://x/y\n", "database.url"),
        ("logging: [1, 2]\n", "logging"),
        ("database: {url: [\n", "not valid YAML"),
    ],
)
async def test_bad_config_exits_2_naming_the_field(
    tmp_path: Path, yaml_text: str, field: str
) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml_text)
    code, out, err = await run_cli(cfg, "sweep")
    assert code == 2, (out, err)
    assert field in err and err.count("\n") == 1 and "Traceback" not in err


async def test_missing_and_unreadable_config_files(tmp_path: Path) -> None:
    code, _, err = await run_cli(tmp_path / "nope.yaml", "sweep")
    assert code == 2 and "nope.yaml not found" in err
    locked = tmp_path / "locked.yaml"
    locked.mkdir()  # a directory cannot be read as a file, even by root
    code, _, err = await run_cli(locked, "sweep")
    assert code == 2 and "cannot be read" in err


async def test_usage_errors_exit_2(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", f"sqlite+aiosqlite:///{tmp_path}/x.db")
    assert (await run_cli(cfg, "consume", "--order-id", "abc"))[0] == 2
    assert (await run_cli(cfg, "consume"))[0] == 2
    assert (await run_cli(cfg, "sweep", "--lookback", "-1d"))[0] == 2
    assert (await run_cli(cfg, "nonsense"))[0] == 2


async def test_database_down_is_one_line_without_the_password(tmp_path: Path) -> None:
    url = "mysql+aiomysql://toogo:s3cr3t-pw@127.0.0.1:1/hotgo"  # nothing listens on port 1
    cfg = write_config(
        tmp_path / "c.yaml",
        url,
        database={"url": url, "retry": {"attempts": 2, "initial": "10ms", "max": "20ms"}},
    )
    code, out, err = await run_cli(cfg, "sweep", TOOGO_DATABASE_PASSWORD="env-s3cr3t")
    assert code == 1, err
    assert "s3cr3t" not in out + err
    assert "connect to the database" in err and "127.0.0.1" in err
    assert "Traceback" not in err and err.count("\n") == 1


async def test_consume_exit_codes(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/x.db"
    cfg = write_config(tmp_path / "c.yaml", url)
    code, out, err = await run_cli(cfg, "consume", "--order-id", "77")
    assert code == 1 and "order 77 not found" in err

    db = await open_database(url)
    try:
        profitable = await insert_order(db, realized_profit=Decimal("2"))
        still_open = await insert_order(db, status=1, close_time=None)
    finally:
        await db.close()
    code, out, _ = await run_cli(cfg, "consume", "--order-id", str(profitable))
    assert code == 0
    assert [e["event"] for e in events(out)] == ["power consumed", "consume result"]
    code, out, _ = await run_cli(cfg, "consume", "--order-id", str(profitable))
    assert code == 0 and "skip duplicate" in [e["event"] for e in events(out)]
    code, out, _ = await run_cli(cfg, "consume", "--order-id", str(still_open))
    [result] = [e for e in events(out) if e["event"] == "consume result"]
    assert code == 0 and result["outcome"] == "not_eligible" and "open" in str(result["reason"])


async def test_sweep_refuses_without_the_unique_key(mysql_url: str, tmp_path: Path) -> None:
    db: Database = await open_database(mysql_url, unique_key=False)
    await db.close()
    cfg = write_config(tmp_path / "c.yaml", mysql_url)
    code, _, err = await run_cli(cfg, "sweep")
    assert code == 1
    assert "uk_user_order" in err and "toogo-reconcile migrate up" in err


async def test_environment_overrides_the_database_url(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", "sqlite+aiosqlite:////nonexistent/dir/x.db")
    code, out, err = await run_cli(
        cfg, "sweep", TOOGO_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/env.db"
    )
    assert code == 0, err
    assert (tmp_path / "env.db").exists()
    [summary] = [e for e in events(out) if e["event"] == "sweep summary"]
    assert summary["charged"] == 0
