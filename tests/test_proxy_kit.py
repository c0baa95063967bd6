"""The proxy kit itself (tests/proxy_kit.py), with plain aiohttp / aiohttp_socks clients: a real
microsocks and a real tinyproxy with authentication carry a request to a fake exchange under a
name only they resolve; a wrong password is refused; without them the name does not resolve."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp_socks import ProxyConnector, ProxyError

from kits.fake_exchanges import FakeExchange
from tests.proxy_kit import (
    EGRESS,
    Kind,
    RunningProxy,
    fake_with_peers,
    peers,
    proxied_name,
    proxied_url,
    proxy_of,
    resolves,
)

KINDS: tuple[Kind, ...] = ("socks5", "http")
NAME = proxied_name("okx")
#: the fake OKX's public instruments endpoint (its ``markets``)
PATH = "/api/v5/public/instruments?instType=SWAP"


@pytest.fixture
async def fake() -> AsyncIterator[FakeExchange]:
    async with fake_with_peers("okx") as server:
        yield server


def socks_connector(url: str) -> ProxyConnector:
    """aiohttp_socks for a ``socks5h://`` URL: ``socks5://`` with the proxy resolving names
    (``rdns``), as ccxt itself does."""
    return ProxyConnector.from_url(url.replace("socks5h://", "socks5://", 1), rdns=True)


async def get(proxy: RunningProxy | None, url: str, **auth: str) -> int:
    """GET ``url`` through ``proxy`` (None: directly); the status."""
    timeout = aiohttp.ClientTimeout(total=5)
    if proxy is not None and proxy.kind == "socks5":
        connector = socks_connector(proxy.url(**auth))
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
            session.get(url) as response,
        ):
            await response.read()
            return response.status
    async with aiohttp.ClientSession(timeout=timeout) as session:
        proxy_url = proxy.url(**auth) if proxy is not None else None
        async with session.get(url, proxy=proxy_url) as response:
            await response.read()
            return response.status


@pytest.mark.parametrize("kind", KINDS)
async def test_request_reaches_the_fake_only_through_the_proxy(
    kind: Kind, fake: FakeExchange, tmp_path: Path
) -> None:
    hosts_before = Path("/etc/hosts").read_bytes()
    url = proxied_url(fake, NAME) + PATH
    with proxy_of(kind, tmp_path, NAME) as proxy:
        assert not resolves(NAME)  # the name is the proxy's alone ...
        assert Path("/etc/hosts").read_bytes() == hosts_before  # ... its hosts file did not leak

        assert await get(proxy, url) == 200
        assert await get(proxy, url) == 200
        assert fake.count("markets") == 2
        assert peers(fake) == [EGRESS[kind]] * 2  # both came from the proxy's egress address
        if kind == "http":  # tinyproxy: one upstream connection per request
            assert proxy.relayed(NAME) == [f"GET http://{NAME}:{fake.port}{PATH} HTTP/1.1"] * 2
        else:  # microsocks: one line per client connection, each to the fake
            assert 1 <= proxy.count(NAME) <= 2
            assert set(proxy.relayed()) == {f"{NAME}:{fake.port}"}

        # without the proxy the name does not resolve: nothing reaches the fake
        with pytest.raises(aiohttp.ClientConnectorDNSError):
            await get(None, url)
        assert fake.count("markets") == 2
        # the fake's own address works directly, from 127.0.0.1 - not the proxy's egress
        assert await get(None, fake.url + PATH) == 200
        assert peers(fake)[-1] == "127.0.0.1"
        process, log = proxy.process, proxy.log
    assert process.returncode is not None  # stopped and reaped
    assert log.is_file() and log.resolve().is_relative_to(tmp_path.resolve())


@pytest.mark.parametrize("kind", KINDS)
async def test_wrong_or_missing_credentials_are_refused(
    kind: Kind, fake: FakeExchange, tmp_path: Path
) -> None:
    url = proxied_url(fake, NAME) + PATH
    with proxy_of(kind, tmp_path, NAME) as proxy:
        if kind == "socks5":
            with pytest.raises(ProxyError):
                await get(proxy, url, password="not-the-password")
            with pytest.raises(ProxyError):
                await get(proxy, url, username="someone-else")
        else:
            assert await get(proxy, url, password="not-the-password") in (401, 407)
            assert await get(proxy, url, username="someone-else") in (401, 407)
            assert proxy.requests_seen() == 2  # tinyproxy did see them, and refused them
        assert fake.count("*") == 0 and proxy.count() == 0
        assert await get(proxy, url) == 200  # the right ones still work
        assert fake.count("*") == 1 and proxy.count(NAME) == 1


async def test_without_authentication_is_refused(fake: FakeExchange, tmp_path: Path) -> None:
    url = proxied_url(fake, NAME) + PATH
    with proxy_of("http", tmp_path, NAME) as http:
        timeout = aiohttp.ClientTimeout(total=5)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, proxy=http.url(auth=False)) as response,
        ):
            assert response.status in (401, 407)
    with proxy_of("socks5", tmp_path, NAME) as socks:
        connector = socks_connector(socks.url(auth=False))
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            with pytest.raises(ProxyError):
                async with session.get(url):
                    pass
    assert fake.count("*") == 0


def test_both_proxies_at_once_files_in_tmp_path_and_nothing_left(tmp_path: Path) -> None:
    """Both kinds side by side on their own ports; every file in tmp_path; after exit neither
    process runs and their ports are closed; the name never resolves outside."""
    names = (proxied_name("a"), proxied_name("b"))
    with proxy_of("socks5", tmp_path, *names) as socks, proxy_of("http", tmp_path, *names) as http:
        assert socks.port != http.port
        pids = (socks.process.pid, http.process.pid)
        for pid in pids:
            assert Path(f"/proc/{pid}").exists()
        for name in names:
            assert not resolves(name)
            probe = subprocess.run(["getent", "hosts", name], capture_output=True, check=False)
            assert probe.returncode != 0, probe.stdout
        # the password is not shown in the process list (microsocks blanks its argv)
        cmdline = Path(f"/proc/{socks.process.pid}/cmdline").read_bytes()
        assert socks.password.encode() not in cmdline
        ports = (socks.port, http.port)
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists()  # stopped and reaped
    for port in ports:
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert "http/tinyproxy.conf" in written and "http/tinyproxy.log" in written
    assert "socks5/microsocks.log" in written and "socks5/hosts" in written
