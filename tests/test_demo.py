"""The embedded default and ``toogo-reconcile demo``: a fresh clone runs the whole cycle with no
server and no API keys, and the demo shows the audit-line contract on a story that ends with a
clean audit.

The bundled demo/closed_positions.jsonl is the demo's story at a fixed time; regenerate it with
``python -c "from pathlib import Path; from daemon.demo import BUNDLED_AT, write_replay;
write_replay(Path('demo/closed_positions.jsonl'), BUNDLED_AT)"``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from daemon.config import Config
from daemon.demo import BUNDLED_AT, demo_url, replay_records, reset_sqlite, run_demo
from exchange_adapters.replay import read_file
from reconcile.errors import ConfigError
from tests.procs import cli_env

ROOT = Path(__file__).resolve().parent.parent


async def cli_in(cwd: Path, *args: str, **env: str) -> tuple[int, str, str]:
    """The command line run in ``cwd`` with no --config: ./config.yaml or the defaults."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "daemon",
        *args,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(**env),
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def events(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def assert_story(logged: list[dict[str, Any]]) -> None:
    """What the demo's story must produce, whatever the database."""
    charged = Counter(e["source"] for e in logged if e["event"] == "power consumed")
    assert charged == {"realtime": 2, "history": 2, "sweep": 1}, charged
    [duplicate] = [e for e in logged if e["event"] == "skip duplicate"]
    assert duplicate["source"] == "sweep" and duplicate["repaired_flag"] is True
    assert str(duplicate["consume_power"]) == "0.79200000"
    [sync] = [e for e in logged if e["event"] == "history sync summary"]
    assert (sync["inserted"], sync["closed"], sync["matched"], sync["charged"]) == (1, 1, 4, 2)
    assert sync["failed_streams"] == 0 and sync["streams"] == 4  # robot 105 is stopped
    [sweep] = [e for e in logged if e["event"] == "sweep summary"]
    assert (sweep["charged"], sweep["skipped_duplicate"], sweep["failed"]) == (1, 1, 0)


async def test_embedded_default_and_demo_from_a_fresh_clone(tmp_path: Path) -> None:
    """The shipped config.yaml and demo/ in an empty folder: doctor, demo, sync, audit."""
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    shutil.copytree(ROOT / "demo", tmp_path / "demo")

    code, out, err = await cli_in(tmp_path, "doctor")
    assert code == 0, (out, err)
    assert not (tmp_path / "toogo-reconcile.db").exists()  # doctor writes nothing

    code, out, err = await cli_in(tmp_path, "--log-format", "json", "demo")
    assert code == 0, (out, err)
    assert (tmp_path / "toogo-reconcile.db").is_file()  # the configured database.url
    assert_story(events(out))
    audit = [ln for ln in out.splitlines() if ln[:2] in ("✓ ", "✗ ")]
    assert len(audit) == 11 and all(ln.startswith("✓") for ln in audit), out
    assert "Demo complete." in out and "Traceback" not in err
    summary = out[out.index("== 4. Result") :].splitlines()
    balances = {row.split()[0]: row.split()[1:] for row in summary if row.startswith("  100")}
    assert balances["1002"] == ["50.00000000", "50.00000000", "49.00000000", "1"], summary
    assert balances["1001"][1] == balances["1001"][2]  # order 2 was not charged again

    # the daemon's own commands on what the demo left: the bundled replay file is read, nothing
    # is charged twice, and the audit (a separate command) is clean
    code, out, err = await cli_in(tmp_path, "--log-format", "json", "sync")
    assert code == 0, (out, err)
    assert not [e for e in events(out) if e["event"] == "power consumed"]
    code, out, err = await cli_in(tmp_path, "audit", "--json")
    assert code == 0 and json.loads(out)["ok"] is True, (out, err)


async def test_demo_refuses_a_mysql_url_without_force(tmp_path: Path) -> None:
    url = "mysql+aiomysql://root@127.0.0.1:1/hotgo"  # nothing listens: never contacted
    code, out, err = await cli_in(tmp_path, "demo", "--db", url)
    assert code == 2 and "--force" in err and "127.0.0.1:1/hotgo" in err, (out, err)


async def test_demo_on_mariadb_with_force(mysql_url: str, logs: list[dict[str, Any]]) -> None:
    printed: list[str] = []
    assert await run_demo(Config(), mysql_url, printed.append)
    assert_story(logs)
    assert printed[-1] == "Demo complete." and "mysql 127.0.0.1:" in printed[0]
    # again: the tables are dropped and recreated, the same story charges the same
    logs.clear()
    assert await run_demo(Config(), mysql_url, printed.append)
    assert_story(logs)


async def test_demo_again_starts_fresh(tmp_path: Path, logs: list[dict[str, Any]]) -> None:
    url = demo_url(str(tmp_path / "sub" / "demo.db"), "unused")
    assert await run_demo(Config(), url, lambda _: None)
    logs.clear()
    assert await run_demo(Config(), url, lambda _: None)
    assert_story(logs)


def test_demo_url_and_reset_safety(tmp_path: Path) -> None:
    assert demo_url(None, "sqlite+aiosqlite:///x.db") == "sqlite+aiosqlite:///x.db"
    assert demo_url(str(tmp_path / "d.db"), "x") == f"sqlite+aiosqlite:///{tmp_path}/d.db"
    with pytest.raises(ConfigError):
        demo_url("postgresql://h/db", "x")

    precious = tmp_path / "notes.txt"
    precious.write_text("not a database")
    with pytest.raises(ConfigError, match="not a SQLite database"):
        reset_sqlite(f"sqlite+aiosqlite:///{precious}")
    assert precious.read_text() == "not a database"

    db = tmp_path / "old.db"
    db.write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)
    journal = tmp_path / "old.db-journal"
    journal.write_bytes(b"x")
    reset_sqlite(f"sqlite+aiosqlite:///{db}")
    assert not db.exists() and not journal.exists()


def test_bundled_replay_file_is_the_demo_story() -> None:
    bundled = ROOT / "demo" / "closed_positions.jsonl"
    lines = [json.loads(line) for line in bundled.read_text(encoding="utf-8").splitlines()]
    assert lines == replay_records(BUNDLED_AT)
    assert len(read_file(bundled)) == len(lines)  # and the replay adapter reads every record
