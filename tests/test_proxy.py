"""Every exchange request through the engine's proxy, end to end: real microsocks (SOCKS5) and
real tinyproxy (HTTP) with authentication (tests/proxy_kit.py), real ccxt, the fake exchanges
under a host name that only the proxy resolves, upstream's own DDL on the real MariaDB and
PostgreSQL.

- ``load_proxy`` reads ``hg_trading_proxy_config`` as the engine does (upstream
  ``server/internal/logic/toogo/exchange_manager.go`` 130-170): the global row (user_id 0,
  tenant_id 0) that is enabled; credentials only with ``auth_enabled`` 1, the password decrypted.
- A history sync (in this process, and the ``sync`` command) with the proxy from the database,
  or from config.yaml over a database row that points at a dead proxy: closes reconciled, and
  every request the fake exchange answered came from the proxy's egress address.
- ``proxy: {source: none}``: the proxied-only host does not resolve - requests never bypass.
- ``doctor`` names the proxy and its reachability and never prints its password or the AES key.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange_adapters.registry import ExchangeRegistry
from kits.databases import open_database
from kits.fake_exchanges import FakeExchange
from kits.fake_exchanges.harness import account_for, closed_record, fast_options
from reconcile.charging.consumer import PowerConsumer
from reconcile.errors import ConfigError, TemporaryError
from reconcile.storage.db import Database
from reconcile.storage.schema import power_consume, trading_order, trading_proxy_config
from reconcile.sync.accounts import load_proxy
from reconcile.sync.credentials import AesKey, encrypt_value
from reconcile.sync.history import HistorySync
from reconcile.sync.settings import SyncSettings
from tests.history_kit import RULES, add_account, add_robot
from tests.procs import run_cli, write_config
from tests.proxy_kit import (
    Kind,
    RunningProxy,
    fake_with_peers,
    free_port,
    peers,
    proxied_name,
    proxied_url,
    proxy_of,
    resolves,
)

AES = "proxy-test-aes-key-0123"
KINDS: tuple[Kind, ...] = ("socks5", "http")
HOUR_MS = 3_600_000
NOW = datetime.now(UTC)
DAY = timedelta(days=1)
FAST = {"timeout": "3s", "retry": {"attempts": 2, "initial": "10ms", "max": "20ms"}}


def now_ms() -> int:
    return int(time.time() * 1000)


def enc(value: str) -> str:
    return encrypt_value(value, AesKey(AES))


async def add_proxy_row(db: Database, **fields: Any) -> int:
    """A row of upstream's ``hg_trading_proxy_config`` (the global one unless told); its id."""
    values: dict[str, Any] = {
        "tenant_id": 0,
        "user_id": 0,
        "enabled": 1,
        "proxy_type": "socks5",
        "proxy_address": "127.0.0.1:10808",
        "auth_enabled": 0,
        "username": "",
        "password": "",
    }
    values.update(fields)

    async def ins(conn: AsyncConnection) -> int:
        result = await conn.execute(trading_proxy_config.insert().values(**values))
        return int(result.inserted_primary_key[0])

    return await db.transaction(ins, what="seed proxy row")


async def update_proxy_row(db: Database, row_id: int, **fields: Any) -> None:
    async def upd(conn: AsyncConnection) -> None:
        t = trading_proxy_config
        await conn.execute(t.update().where(t.c.id == row_id).values(**fields))

    await db.transaction(upd, what="update proxy row")


async def add_kit_proxy_row(db: Database, proxy: RunningProxy) -> int:
    """The engine's global proxy row for a kit proxy: auth enabled, password ENC: with AES."""
    return await add_proxy_row(
        db,
        proxy_type=proxy.kind,
        proxy_address=proxy.address,
        auth_enabled=1,
        username=proxy.username,
        password=enc(proxy.password),
    )


# --- (a) load_proxy: the engine's rule on upstream's DDL ------------------------------------------


async def test_load_proxy_reads_only_the_enabled_global_row(server_db: Database) -> None:
    """MySQL (as applied, with uk_tenant_user) and PostgreSQL (upstream's PG DDL)."""
    key = AesKey(AES)
    assert await load_proxy(server_db, aes_key=key) is None  # no row: no proxy

    # a user's and a tenant's own rows are not the engine's global proxy
    await add_proxy_row(server_db, user_id=5, proxy_address="10.0.0.5:1080")
    await add_proxy_row(server_db, tenant_id=3, proxy_address="10.0.0.3:1080")
    assert await load_proxy(server_db, aes_key=key) is None
    # the global row, disabled
    row = await add_proxy_row(
        server_db,
        enabled=0,
        proxy_address="10.9.9.9:1080",
        auth_enabled=1,
        username="trader",
        password=enc("s3cret-pw"),
    )
    assert await load_proxy(server_db, aes_key=key) is None

    await update_proxy_row(server_db, row, enabled=1)
    proxy = await load_proxy(server_db, aes_key=key)
    assert proxy is not None
    assert (proxy.kind, proxy.host, proxy.port) == ("socks5", "10.9.9.9", 1080)
    assert proxy.username == "trader"
    assert proxy.password is not None and proxy.password.get() == "s3cret-pw"
    assert proxy.origin == f"hg_trading_proxy_config {row}"
    assert "10.9.9.9:1080" in proxy.label and f"hg_trading_proxy_config {row}" in proxy.label
    for shown in (proxy.label, repr(proxy), str(proxy)):
        assert "s3cret-pw" not in shown and "ENC:" not in shown

    # auth_enabled 0: no credentials, whatever the columns hold (the engine ignores them)
    await update_proxy_row(
        server_db, row, auth_enabled=0, proxy_type="http", proxy_address="proxy.internal:3128"
    )
    plain = await load_proxy(server_db, aes_key=key)
    assert plain is not None
    assert (plain.kind, plain.host, plain.port) == ("http", "proxy.internal", 3128)
    assert plain.username is None and plain.password is None

    # auth_enabled 1 but no username: the engine sends no credentials either
    await update_proxy_row(server_db, row, auth_enabled=1, username="")
    nameless = await load_proxy(server_db, aes_key=key)
    assert nameless is not None and nameless.username is None and nameless.password is None

    # a plaintext password (an install that never encrypted it) is used as it is
    await update_proxy_row(server_db, row, username="trader", password="plain-pw")
    stored_plain = await load_proxy(server_db, aes_key=None)
    assert stored_plain is not None and stored_plain.password is not None
    assert stored_plain.password.get() == "plain-pw"


async def test_load_proxy_wrong_key_names_the_row_never_the_secret(server_db: Database) -> None:
    row = await add_proxy_row(
        server_db, auth_enabled=1, username="trader", password=enc("s3cret-pw")
    )
    with pytest.raises(ConfigError) as caught:
        await load_proxy(server_db, aes_key=AesKey("not-the-key"))
    message = str(caught.value)
    assert f"hg_trading_proxy_config {row}" in message
    for secret in ("s3cret-pw", "not-the-key", AES):
        assert secret not in message


async def test_load_proxy_lowest_enabled_global_row_on_postgresql(pg_url: str) -> None:
    """Upstream's PostgreSQL DDL has no unique key on (tenant_id, user_id): several global rows
    can exist; the lowest enabled id wins."""
    db = await open_database(pg_url)
    try:
        await add_proxy_row(db, enabled=0, proxy_address="10.0.0.1:1080")
        second = await add_proxy_row(db, proxy_address="10.0.0.2:1080")
        await add_proxy_row(db, proxy_type="http", proxy_address="10.0.0.3:3128")
        proxy = await load_proxy(db)
        assert proxy is not None and proxy.origin == f"hg_trading_proxy_config {second}"
        assert (proxy.kind, proxy.host, proxy.port) == ("socks5", "10.0.0.2", 1080)
    finally:
        await db.close()


async def test_load_proxy_without_the_table_is_no_proxy(mysql_db: Database) -> None:
    async def drop(conn: AsyncConnection) -> None:
        await conn.execute(text(f"DROP TABLE {trading_proxy_config.name}"))

    await mysql_db.transaction(drop, what="drop proxy table")
    assert await load_proxy(mysql_db) is None


# --- set-up shared by the end-to-end tests --------------------------------------------------------


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> Kind:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def fake() -> AsyncIterator[FakeExchange]:
    async with fake_with_peers("okx") as server:
        yield server


@pytest.fixture
def name() -> str:
    return proxied_name("okx")


@pytest.fixture
def proxy(kind: Kind, tmp_path: Path, name: str) -> Iterator[RunningProxy]:
    with proxy_of(kind, tmp_path, name) as running:
        yield running


async def wire(db: Database, fake: FakeExchange) -> None:
    """User 7's account 10 on ``fake`` (credentials ENC: with AES; its base_url column left
    empty: the engine ignores it) with a running robot, and two closed positions the local
    table lacks: a profitable one to charge and a loss."""
    await add_account(
        db,
        10,
        user_id=7,
        platform=fake.platform,
        api_key=enc(fake.api_key),
        secret_key=enc(fake.secret),
        passphrase=enc(fake.passphrase),
    )
    await add_robot(db, 100, user_id=7, account_id=10, symbol="BTCUSDT", exchange=fake.platform)
    fake.records += closed_record(fake.platform, close_ms=now_ms() - 3 * HOUR_MS, profit="10")
    fake.records += closed_record(
        fake.platform, close_ms=now_ms() - 2 * HOUR_MS, profit="-4", long=False
    )


async def ledger(db: Database) -> tuple[int, int]:
    """(local orders, charges)."""

    async def read(conn: AsyncConnection) -> tuple[int, int]:
        orders = len((await conn.execute(select(trading_order.c.id))).all())
        charges = len((await conn.execute(select(power_consume.c.id))).all())
        return orders, charges

    return await db.transaction(read, what="read ledger")


def assert_all_through(proxy: RunningProxy, fake: FakeExchange, name: str) -> None:
    """Every request the fake answered came through ``proxy``, and the proxy carried them."""
    answered = fake.count("*")
    assert answered > 0
    assert peers(fake) == [proxy.egress] * answered, peers(fake)  # none from 127.0.0.1: direct
    relayed = proxy.count(name)
    if proxy.kind == "http":  # tinyproxy forwards one request per upstream connection
        assert relayed == answered, (relayed, answered, proxy.relayed())
    else:  # microsocks: one line per client connection; keep-alive carries several requests
        assert 0 < relayed <= answered, (relayed, answered)
    assert proxy.count() == relayed  # and nothing else went through it
    assert not resolves(name)


def assert_no_secret(*texts: str, secrets: tuple[str, ...]) -> None:
    for blob in texts:
        for secret in secrets:
            assert secret not in blob, (secret, blob[-2000:])


# --- (b) a history sync through the proxy read from hg_trading_proxy_config -----------------------


async def test_history_sync_in_process_through_the_database_proxy(
    mysql_db: Database,
    fake: FakeExchange,
    proxy: RunningProxy,
    name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """load_proxy -> ExchangeRegistry(proxy=...) -> HistorySync, in this process."""
    monkeypatch.setenv("TOOGO_AES_KEY", AES)  # the accounts' ENC: credentials
    await wire(mysql_db, fake)
    await add_kit_proxy_row(mysql_db, proxy)
    loaded = await load_proxy(mysql_db, aes_key=AesKey(AES))
    assert loaded is not None and (loaded.host, loaded.port) == (proxy.host, proxy.port)
    options = fast_options(base_url=proxied_url(fake, name))
    with structlog.testing.capture_logs() as logs:
        async with ExchangeRegistry({"okx": options}, proxy=loaded) as registry:
            sync = HistorySync(
                mysql_db,
                PowerConsumer(mysql_db, RULES),
                registry,
                SyncSettings(platforms=frozenset({"okx"})),
            )
            summary = await sync.run_cycle()
    assert summary.ok, logs
    assert (summary.records, summary.inserted, summary.charged) == (2, 2, 1)
    assert await ledger(mysql_db) == (2, 1)
    assert_all_through(proxy, fake, name)
    assert_no_secret(repr(logs), secrets=(proxy.password, AES))


def sync_config(tmp_path: Path, url: str, fake: FakeExchange, name: str, **sections: Any) -> Path:
    exchanges = {"okx": {**FAST, "base_url": proxied_url(fake, name)}}
    return write_config(tmp_path / "c.yaml", url, exchanges=exchanges, **sections)


def summary_of(out: str) -> dict[str, Any]:
    [summary] = [json.loads(x) for x in out.splitlines() if "history sync summary" in x]
    return summary  # type: ignore[no-any-return]


async def test_sync_command_through_the_database_proxy(
    mysql_db: Database,
    mysql_url: str,
    tmp_path: Path,
    fake: FakeExchange,
    proxy: RunningProxy,
    name: str,
) -> None:
    """The ``sync`` command, config without a ``proxy:`` section (source: database, as the
    engine): the proxy row's password decrypted with TOOGO_AES_KEY."""
    await wire(mysql_db, fake)
    await add_kit_proxy_row(mysql_db, proxy)
    cfg = sync_config(tmp_path, mysql_url, fake, name)
    code, out, err = await run_cli(cfg, "sync", TOOGO_AES_KEY=AES)
    assert code == 0, (out[-3000:], err)
    summary = summary_of(out)
    assert (summary["records"], summary["inserted"], summary["charged"]) == (2, 2, 1)
    assert summary["failed_streams"] == 0
    assert await ledger(mysql_db) == (2, 1)
    assert_all_through(proxy, fake, name)
    assert_no_secret(out, err, secrets=(proxy.password, AES))


# --- (c) proxy: {source: config} over a database row that points at a dead proxy ----------------


async def test_config_proxy_overrides_a_dead_database_proxy(
    mysql_db: Database,
    mysql_url: str,
    tmp_path: Path,
    fake: FakeExchange,
    proxy: RunningProxy,
    name: str,
) -> None:
    await wire(mysql_db, fake)
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    await add_proxy_row(
        mysql_db,
        proxy_type=proxy.kind,
        proxy_address=dead,
        auth_enabled=1,
        username=proxy.username,
        password=enc(proxy.password),
    )

    # the database's proxy is the one used by default: dead, so the stream fails
    cfg = sync_config(tmp_path, mysql_url, fake, name)
    code, out, err = await run_cli(cfg, "sync", TOOGO_AES_KEY=AES)
    assert code == 1, (out[-3000:], err)
    assert summary_of(out)["failed_streams"] == 1
    assert fake.count("*") == 0 and await ledger(mysql_db) == (0, 0)

    # config.yaml's proxy wins over the row
    section = {
        "source": "config",
        "type": proxy.kind,
        "address": proxy.address,
        "username": proxy.username,
        "password_env": "TOOGO_PROXY_PASSWORD",
    }
    cfg = sync_config(tmp_path, mysql_url, fake, name, proxy=section)
    code, out, err = await run_cli(
        cfg, "sync", TOOGO_AES_KEY=AES, TOOGO_PROXY_PASSWORD=proxy.password
    )
    assert code == 0, (out[-3000:], err)
    summary = summary_of(out)
    assert (summary["inserted"], summary["charged"], summary["failed_streams"]) == (2, 1, 0)
    assert await ledger(mysql_db) == (2, 1)
    assert_all_through(proxy, fake, name)
    assert_no_secret(out, err, secrets=(proxy.password, AES))


async def test_wrong_proxy_password_fails_the_stream_and_shows_no_secret(
    mysql_db: Database,
    mysql_url: str,
    tmp_path: Path,
    fake: FakeExchange,
    proxy: RunningProxy,
    name: str,
) -> None:
    """The row's password is not the proxy's: the proxy refuses, the stream fails (exit 1, no
    crash), nothing reaches the exchange, and neither password is printed."""
    await wire(mysql_db, fake)
    await add_proxy_row(
        mysql_db,
        proxy_type=proxy.kind,
        proxy_address=proxy.address,
        auth_enabled=1,
        username=proxy.username,
        password=enc("not-the-proxy-password"),
    )
    cfg = sync_config(tmp_path, mysql_url, fake, name)
    code, out, err = await run_cli(cfg, "sync", TOOGO_AES_KEY=AES)
    assert code == 1, (out[-3000:], err)
    assert "Traceback" not in out + err, (out[-3000:], err)
    assert summary_of(out)["failed_streams"] == 1
    # the log says the proxy refused, not the exchange (not a revoked API key)
    said = "the HTTP proxy" if proxy.kind == "http" else "the SOCKS5 proxy refused"
    assert said in out, out[-3000:]
    assert fake.count("*") == 0 and proxy.count() == 0
    assert await ledger(mysql_db) == (0, 0)
    assert_no_secret(out, err, secrets=("not-the-proxy-password", proxy.password, AES))


# --- (d) source: none - a proxied-only host does not resolve: nothing bypasses the proxy --------


async def test_registry_without_proxy_cannot_resolve_a_proxied_only_host(
    mysql_db: Database,
    fake: FakeExchange,
    proxy: RunningProxy,
    name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sync above with no proxy given to the registry: the stream fails, at bottom on the
    name not resolving (socket.gaierror), and the fake sees nothing - so the passing runs did
    go through the proxy."""
    monkeypatch.setenv("TOOGO_AES_KEY", AES)
    await wire(mysql_db, fake)
    options = fast_options(base_url=proxied_url(fake, name))
    async with ExchangeRegistry({"okx": options}, proxy=None) as registry:
        sync = HistorySync(
            mysql_db,
            PowerConsumer(mysql_db, RULES),
            registry,
            SyncSettings(platforms=frozenset({"okx"})),
        )
        summary = await sync.run_cycle()
        assert summary.failed_streams == 1 and summary.inserted == 0

        account = account_for(fake, 10, base_url="")
        with pytest.raises(TemporaryError) as caught:
            await registry.source_for(account).fetch_closed("BTCUSDT", NOW - DAY, NOW)
    causes = list(chain(caught.value))
    assert any(isinstance(c, socket.gaierror) for c in causes), causes
    assert name in str(caught.value)
    assert fake.count("*") == 0 and proxy.count() == 0
    assert await ledger(mysql_db) == (0, 0)


def chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its causes (or contexts), outermost first."""
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


async def test_source_none_cannot_reach_a_proxied_only_host(
    mysql_db: Database,
    mysql_url: str,
    tmp_path: Path,
    fake: FakeExchange,
    proxy: RunningProxy,
    name: str,
) -> None:
    await wire(mysql_db, fake)
    await add_kit_proxy_row(mysql_db, proxy)  # a live proxy in the database, not to be used
    cfg = sync_config(tmp_path, mysql_url, fake, name, proxy={"source": "none"})
    code, out, err = await run_cli(cfg, "sync", TOOGO_AES_KEY=AES)
    assert code == 1, (out[-3000:], err)
    assert summary_of(out)["failed_streams"] == 1
    failures = [json.loads(x) for x in out.splitlines() if "exchange request failed" in x]
    assert failures and all(name in f["detail"] for f in failures), out[-3000:]
    assert fake.count("*") == 0 and proxy.count() == 0
    assert await ledger(mysql_db) == (0, 0)


# --- (e) doctor names the proxy, reports reachability, shows no secret -------------------------


def lines_of(out: str, check: str) -> list[str]:
    """doctor's lines of one check (names padded to 12 characters after the mark)."""
    return [ln for ln in out.splitlines() if ln[2:14].strip() == check]


def doctor_config(tmp_path: Path, url: str, fake: FakeExchange, name: str, **sections: Any) -> Path:
    return sync_config(tmp_path, url, fake, name, **sections)


async def test_doctor_names_the_proxy_and_reaches_the_exchange_through_it(
    mysql_db: Database,
    mysql_url: str,
    tmp_path: Path,
    fake: FakeExchange,
    proxy: RunningProxy,
    name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await wire(mysql_db, fake)
    row = await add_kit_proxy_row(mysql_db, proxy)
    cfg = doctor_config(tmp_path, mysql_url, fake, name)

    code, out, err = await run_cli(cfg, "doctor", TOOGO_AES_KEY=AES)
    assert code == 0, (out, err)
    label = f"{proxy.kind}://"
    [line] = lines_of(out, "proxy")
    assert line.startswith("✓"), out
    assert proxy.address in line and label in line, line
    assert f"hg_trading_proxy_config {row}" in line
    [okx] = lines_of(out, "okx")
    assert okx.startswith("✓"), out
    assert fake.count("markets") >= 1
    assert_all_through(proxy, fake, name)
    assert_no_secret(out, err, secrets=(proxy.password, AES, fake.secret, fake.passphrase))

    # in this process too, with the logs captured
    from daemon.config import load_config
    from daemon.doctor import Doctor

    for var in ("TOOGO_DATABASE_URL", "TOOGO_DATABASE_PASSWORD", "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TOOGO_AES_KEY", AES)
    lines: list[str] = []
    with structlog.testing.capture_logs() as logs:
        healthy = await Doctor(load_config(cfg), lambda ln: lines.append(ln.render())).run()
    assert healthy, lines
    [line] = lines_of("\n".join(lines), "proxy")
    assert proxy.address in line and label in line, line
    assert_no_secret("\n".join(lines), repr(logs), secrets=(proxy.password, AES))


async def test_doctor_reports_an_unreachable_proxy(
    mysql_db: Database,
    mysql_url: str,
    tmp_path: Path,
    fake: FakeExchange,
    name: str,
) -> None:
    """The row's proxy is dead: doctor names it, the exchange is unreachable through it (✗, exit
    1), nothing went direct, and no secret is shown."""
    await wire(mysql_db, fake)
    dead_port = free_port()
    row = await add_proxy_row(
        mysql_db,
        proxy_address=f"127.0.0.1:{dead_port}",
        auth_enabled=1,
        username="trader",
        password=enc("dead-proxy-pw"),
    )
    cfg = doctor_config(tmp_path, mysql_url, fake, name)
    code, out, err = await run_cli(cfg, "doctor", TOOGO_AES_KEY=AES)
    assert code == 1, (out, err)
    assert "Traceback" not in out + err, (out, err)
    named = [ln for ln in out.splitlines() if "socks5://" in ln and f"127.0.0.1:{dead_port}" in ln]
    assert named and f"hg_trading_proxy_config {row}" in named[0], out
    okx = lines_of(out, "okx")
    assert okx and all(ln.startswith("✗") for ln in okx), out
    assert fake.count("*") == 0
    assert_no_secret(out, err, secrets=("dead-proxy-pw", AES))
