"""``toogo-reconcile doctor`` against the real MariaDB and real ccxt talking to the fake exchanges:
one line per check, exit 1 when one fails, and never a secret in the output."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
import yaml

from daemon.config import load_config
from daemon.doctor import Doctor
from kits.databases import mysql_admin, open_database
from kits.fake_exchanges import FAKES, FakeExchange
from reconcile.storage.db import Database
from reconcile.sync.credentials import AesKey, encrypt_value
from tests.history_kit import add_account, add_robot, write_replay
from tests.procs import run_cli, write_config

AES = "doctor-test-aes-key"
FAST = {"timeout": "2s", "retry": {"attempts": 2, "initial": "10ms", "max": "20ms"}}


class Diagnose(Protocol):
    async def __call__(self, config: Path, *, all_accounts: bool = ..., **env: str) -> Report: ...


@dataclass
class Report:
    code: int
    out: str
    err: str

    def line(self, name: str) -> str:
        """The line of one check (names are padded to 12 characters after the mark)."""
        found = [ln for ln in self.out.splitlines() if ln[2:14].strip() == name]
        assert len(found) == 1, (name, self.out, self.err)
        return found[0]

    def ok(self, name: str) -> bool:
        return self.line(name).startswith("✓")

    def failed(self, name: str) -> bool:
        return self.line(name).startswith("✗")

    def assert_no_secret(self, *secrets: str) -> None:
        for secret in secrets:
            assert secret not in self.out and secret not in self.err, secret
        assert "Traceback" not in self.err, self.err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def doctor(config: Path, *args: str, **env: str) -> Report:
    """The real command in a subprocess."""
    code, out, err = await run_cli(config, "doctor", *args, **env)
    return Report(code, out, err)


@pytest.fixture
def diagnose(monkeypatch: pytest.MonkeyPatch) -> Diagnose:
    """The checks in this process (a subprocess costs ~2 s of imports): exit code 0/1 and the
    lines without the config line."""

    async def run(config: Path, *, all_accounts: bool = False, **env: str) -> Report:
        for name in (
            "TOOGO_DATABASE_URL",
            "TOOGO_DATABASE_PASSWORD",
            "TOOGO_AES_KEY",
            "CREDENTIALS_DIRECTORY",
        ):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        lines: list[str] = []
        doc = Doctor(
            load_config(config), lambda line: lines.append(line.render()), all_accounts=all_accounts
        )
        healthy = await doc.run()
        return Report(0 if healthy else 1, "\n".join(lines), "")

    return run


@pytest.fixture
async def binance() -> AsyncIterator[FakeExchange]:
    async with FAKES["binance"]() as fake:
        yield fake


@pytest.fixture
async def okx() -> AsyncIterator[FakeExchange]:
    async with FAKES["okx"]() as fake:
        yield fake


async def wire(
    db: Database, fake: FakeExchange, account_id: int, *, key: str | None = AES, **fields: Any
) -> None:
    """An account on ``fake`` (credentials ENC: with ``key``, plaintext when None) and a
    running robot on it."""

    def stored(value: str) -> str:
        return encrypt_value(value, AesKey(key)) if key is not None else value

    values: dict[str, Any] = {
        "base_url": fake.url,
        "api_key": stored(fake.api_key),
        "secret_key": stored(fake.secret),
        "passphrase": stored(fake.passphrase),
    }
    values.update(fields)
    await add_account(db, account_id, user_id=account_id, platform=fake.platform, **values)
    await add_robot(
        db,
        account_id * 10,
        user_id=account_id,
        account_id=account_id,
        symbol="BTCUSDT",
        exchange=fake.platform,
    )


def config_for(tmp_path: Path, url: str, *platforms: str, **database: Any) -> Path:
    exchanges: dict[str, Any] = {p: FAST for p in platforms}
    replay = write_replay(tmp_path / "replay.jsonl", [])
    exchanges["replay"] = {"path": str(replay)}
    path = write_config(tmp_path / "c.yaml", url, exchanges=exchanges)
    if database:
        data = yaml.safe_load(path.read_text())
        data["database"].update(database)
        path.write_text(yaml.safe_dump(data))
    return path


async def test_healthy_setup_passes(
    mysql_db: Database,
    mysql_url: str,
    tmp_path: Path,
    binance: FakeExchange,
    okx: FakeExchange,
    diagnose: Diagnose,
) -> None:
    await wire(mysql_db, binance, 10)
    await wire(mysql_db, okx, 20)
    await add_account(mysql_db, 30, user_id=30, platform="gate")  # no robot: not examined
    cfg = config_for(tmp_path, mysql_url, "binance", "okx")
    report = await doctor(cfg, TOOGO_AES_KEY=AES)
    assert report.code == 0, (report.out, report.err)
    for name in (
        "config",
        "database",
        "schema",
        "time zone",
        "credentials",
        "binance",
        "okx",
        "replay",
    ):
        assert report.ok(name), report.out
    database = mysql_url.rsplit("/", 1)[1]
    assert f"127.0.0.1:3306/{database}" in report.line("database")
    assert "decrypts all 6 ENC: value(s)" in report.line("credentials")
    assert "2 account(s) of running robots" in report.line("credentials")
    assert f"via {binance.url}" in report.line("binance")
    assert "BTCUSDT listed" in report.line("binance")
    assert binance.count("markets") >= 1 and okx.count("markets") >= 1
    assert binance.count("closed") == 0  # public calls only
    report.assert_no_secret(AES, binance.secret, okx.secret, okx.passphrase)

    # --all-accounts takes in the enabled account without robots; gate is not enabled and
    # replay serves it
    every = await diagnose(cfg, all_accounts=True, TOOGO_AES_KEY=AES)
    assert every.code == 0, every.out
    assert "3 enabled account(s)" in every.line("credentials")
    assert "serves account(s) 30" in every.line("replay")


async def test_aes_key_missing_wrong_or_from_credentials_directory(
    mysql_db: Database, mysql_url: str, tmp_path: Path, binance: FakeExchange, diagnose: Diagnose
) -> None:
    await wire(mysql_db, binance, 10)
    cfg = config_for(tmp_path, mysql_url, "binance")

    missing = await diagnose(cfg)
    assert missing.code == 1
    assert missing.failed("credentials") and "TOOGO_AES_KEY" in missing.line("credentials")
    assert "account(s) 10" in missing.line("credentials")
    assert missing.ok("database") and missing.ok("binance")  # markets are public

    wrong = await diagnose(cfg, TOOGO_AES_KEY="not-the-key")
    assert wrong.code == 1 and wrong.failed("credentials")
    assert "cannot decrypt" in wrong.line("credentials")
    wrong.assert_no_secret("not-the-key", binance.secret, binance.api_key)

    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "aes_key").write_text(AES + "\n")
    systemd = await diagnose(cfg, CREDENTIALS_DIRECTORY=str(creds))
    assert systemd.code == 0, systemd.out
    assert "$CREDENTIALS_DIRECTORY/aes_key" in systemd.line("credentials")


async def test_plaintext_credentials_need_no_key(
    mysql_db: Database, mysql_url: str, tmp_path: Path, binance: FakeExchange, diagnose: Diagnose
) -> None:
    await wire(mysql_db, binance, 10, key=None)
    report = await diagnose(config_for(tmp_path, mysql_url, "binance"))
    assert report.code == 0, report.out
    assert "AES key not needed" in report.line("credentials")


async def test_unreachable_exchange_and_unlisted_symbol_fail_their_line(
    mysql_db: Database,
    mysql_url: str,
    tmp_path: Path,
    binance: FakeExchange,
    okx: FakeExchange,
    diagnose: Diagnose,
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    await wire(mysql_db, binance, 10, base_url=dead)
    await wire(mysql_db, okx, 20)
    await add_robot(mysql_db, 201, user_id=20, account_id=20, symbol="XRP_USDT", exchange="okx")
    report = await diagnose(config_for(tmp_path, mysql_url, "binance", "okx"), TOOGO_AES_KEY=AES)
    assert report.code == 1
    assert report.failed("binance") and f"account 10 via {dead}" in report.line("binance")
    assert report.failed("okx") and "XRP_USDT" in report.line("okx")
    assert "BTCUSDT" not in report.line("okx").split("XRP_USDT")[1]
    assert report.ok("credentials") and report.ok("database") and report.ok("replay")


async def test_database_down_fails_clearly(tmp_path: Path) -> None:
    port = free_port()
    url = f"mysql+aiomysql://toogo@127.0.0.1:{port}/hotgo"
    report = await doctor(
        config_for(tmp_path, url), TOOGO_DATABASE_PASSWORD="pw-never-shown", TOOGO_AES_KEY=AES
    )
    assert report.code == 1
    line = report.line("database")
    assert line.startswith("✗") and f"127.0.0.1:{port}/hotgo as toogo: cannot connect" in line
    for name in ("schema", "time zone", "credentials"):
        assert report.line(name).startswith("-"), report.out
    assert report.ok("replay")  # needs no database
    report.assert_no_secret("pw-never-shown", AES)
    assert report.err.count("toogo-reconcile:") == 0  # the lines say it all


async def test_unmigrated_schema_fails(mysql_url: str, tmp_path: Path, diagnose: Diagnose) -> None:
    empty = await diagnose(config_for(tmp_path, mysql_url))  # the wrong database, say
    assert empty.code == 1 and empty.ok("database")
    assert empty.failed("schema") and "missing hotgo tables" in empty.line("schema")
    assert empty.line("credentials").startswith("-")

    db = await open_database(mysql_url, unique_key=False)
    await db.close()
    report = await diagnose(config_for(tmp_path, mysql_url))
    assert report.code == 1
    assert report.failed("schema") and "migrate up" in report.line("schema")
    assert "uk_user_order" in report.line("schema")


def _server_utc_offset_minutes() -> int:
    admin = mysql_admin()
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT TIMESTAMPDIFF(MINUTE, UTC_TIMESTAMP(), NOW())")
            row = cur.fetchone()
    finally:
        admin.close()
    assert row is not None
    return int(row[0])


async def test_time_zone_mismatch_fails(
    mysql_db: Database, mysql_url: str, tmp_path: Path, diagnose: Diagnose
) -> None:
    offset = _server_utc_offset_minutes()
    zone = "Asia/Shanghai" if offset != 480 else "America/Sao_Paulo"  # never the server's zone
    report = await diagnose(config_for(tmp_path, mysql_url, timezone=zone))
    assert report.code == 1
    line = report.line("time zone")
    assert line.startswith("✗") and zone in line and "clocks agree" in line

    right = "UTC" if offset == 0 else None
    if right is not None:
        good = await diagnose(config_for(tmp_path, mysql_url, timezone=right))
        assert good.ok("time zone"), good.out


async def test_invalid_config_exits_2_with_a_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("database:\n  urll: x\n")
    report = await doctor(cfg)
    assert report.code == 2
    assert report.failed("config") and "database.urll: unknown key" in report.line("config")


async def test_a_base_url_naming_another_api_of_the_exchange_is_warned(
    mysql_db: Database, mysql_url: str, tmp_path: Path, binance: FakeExchange
) -> None:
    """Upstream's platform list offers https://api.binance.com, Binance's spot host, for binance
    (server/internal/logic/trading/api_config.go 484-490). The engine ignores base_url, and so
    does the daemon by default, but doctor says which account names another API. The platform
    is pointed at the fake (exchanges.binance.base_url): nothing leaves 127.0.0.1."""
    await wire(mysql_db, binance, 10, base_url="https://api.binance.com")
    await wire(mysql_db, binance, 11, base_url="https://fapi.binance.com")  # the futures host
    exchanges = {"binance": {**FAST, "base_url": binance.url}}
    cfg = write_config(tmp_path / "c.yaml", mysql_url, exchanges=exchanges)
    report = await doctor(cfg, TOOGO_AES_KEY=AES)
    assert report.code == 0, report.out
    lines = [ln for ln in report.out.splitlines() if ln[2:14].strip() == "binance"]
    assert [ln[0] for ln in lines] == ["✓", "!", "✓"], report.out
    assert lines[1] == (
        "! binance      account 10: base_url https://api.binance.com is not a binance futures "
        "host (fapi.binance.com); ignored, as the engine ignores it (ccxt's host is called)"
    )
    assert all(f"via {binance.url}" in ln for ln in (lines[0], lines[2]))
