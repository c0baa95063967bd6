"""The bad-input contract, for every command: a bad configuration exits 2 naming the field; a
database that is down exits 1 with one line naming it - no traceback, no password."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.procs import run_cli, write_config

COMMANDS: list[list[str]] = [
    ["sweep"],
    ["consume", "--order-id", "1"],
    ["sync"],
    ["run", "--once"],
    ["audit"],
    ["exchange", "closed", "--account", "1", "--symbol", "BTCUSDT"],
    ["migrate", "check"],
    ["migrate", "verify"],
]
IDS = [" ".join(c[:2]) for c in COMMANDS]


@pytest.mark.parametrize("args", COMMANDS, ids=IDS)
async def test_unknown_key_exits_2(tmp_path: Path, args: list[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("database:\n  url: sqlite+aiosqlite:///x.db\nsweep:\n  lookbak: 7d\n")
    code, _, err = await run_cli(cfg, *args)
    assert code == 2, err
    assert "sweep.lookbak: unknown key" in err and "Traceback" not in err


@pytest.mark.parametrize("args", COMMANDS, ids=IDS)
async def test_database_down_exits_1_naming_it(tmp_path: Path, args: list[str]) -> None:
    url = "mysql+aiomysql://toogo:hunter2-pw@127.0.0.1:9/hotgo"  # nothing listens on port 9
    cfg = write_config(
        tmp_path / "c.yaml",
        url,
        database={"url": url, "retry": {"attempts": 1, "initial": "10ms", "max": "10ms"}},
    )
    code, out, err = await run_cli(cfg, *args, TOOGO_DATABASE_PASSWORD="env-hunter3")
    assert code == 1, (out, err)
    assert "hunter2" not in out + err and "hunter3" not in out + err
    assert "127.0.0.1" in err and "Traceback" not in err + out
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    "args",
    [
        ["consume", "--order-id", "twelve"],
        ["exchange", "closed", "--account", "x", "--symbol", "B"],
        ["audit", "--backlog-after", "-5m"],
        ["sweep", "--page-size", "0"],
    ],
)
async def test_bad_arguments_exit_2(tmp_path: Path, args: list[str]) -> None:
    cfg = write_config(tmp_path / "c.yaml", f"sqlite+aiosqlite:///{tmp_path}/x.db")
    code, _, err = await run_cli(cfg, *args)
    assert code == 2 and "Traceback" not in err
