"""Real proxies for the proxy tests: Debian's ``microsocks`` (SOCKS5) and ``tinyproxy`` (HTTP),
each a process of its own on a free 127.0.0.1 port, with username/password authentication.

Each runs in a mount namespace of its own (``unshare --mount``) in which a private hosts file is
bind-mounted over ``/etc/hosts``: the names given to :func:`socks5_proxy` / :func:`http_proxy`
(e.g. ``fake-okx.proxied.test``) resolve to 127.0.0.1 for the proxy, and for nobody else - a
request that bypasses the proxy fails to resolve the name. Each proxy also binds its outgoing
connections to an address of its own (``127.0.0.2`` for SOCKS5, ``127.0.0.3`` for HTTP), so a
server can tell, per request, that a connection came through it (``request.remote``).

Everything a proxy writes (its config, pid file, log, hosts file) is under the directory given,
the test's ``tmp_path``; the process is stopped on exit. Without ``microsocks`` / ``tinyproxy`` /
a usable ``unshare --mount`` the tests are skipped naming the proxy - unless
TOOGO_REQUIRE_PROXIES=1 (CI), which makes that a failure (tests/conftest.py).

Why these: mitmproxy, the maintained PyPI option, cannot be installed beside ccxt 4.5 on Python
3.11 (conflicting pins); pproxy is unmaintained since 2021. Debian's packages are maintained,
small, and speak the authentication the engine's proxies use.
"""

from __future__ import annotations

import contextlib
import functools
import re
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
from aiohttp import web

from kits.fake_exchanges import FAKES, FakeExchange

#: the user and password every kit proxy accepts (tests may pass others)
USER = "trader"
PASSWORD = "pr0xy-s3cret-Pw"
#: where each kind's outgoing connections come from: what a server sees as the client address
EGRESS = {"socks5": "127.0.0.2", "http": "127.0.0.3"}
#: the suffix of the names that resolve only through a kit proxy
SUFFIX = "proxied.test"
STARTUP_TIMEOUT = 10.0

Kind = Literal["socks5", "http"]

#: microsocks prints one line per client connection it relays (to stderr)
_MICROSOCKS_LINE = re.compile(r"client\[\d+\] \S+: connected to (?P<target>\S+)")
#: tinyproxy logs each request line it accepts (CONNECT level) ...
_TINYPROXY_REQUEST = re.compile(r"Request \(file descriptor \d+\): (?P<line>.+)$")
#: ... and each upstream connection it then opens (after authentication)
_TINYPROXY_ESTABLISHED = re.compile(r'Established connection to host "(?P<host>[^"]+)"')


def proxied_name(label: str) -> str:
    """``fake-<label>.proxied.test``: a host name only a kit proxy resolves."""
    return f"fake-{label}.{SUFFIX}"


@dataclass
class RunningProxy:
    """A proxy process of the kit: where it listens, its credentials and what went through it."""

    kind: Kind
    host: str
    port: int
    username: str
    password: str
    #: the address its outgoing connections are bound to
    egress: str
    #: the names (mapped to 127.0.0.1) it alone resolves
    names: tuple[str, ...]
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        """``host:port``, as ``hg_trading_proxy_config.proxy_address`` holds it."""
        return f"{self.host}:{self.port}"

    def url(
        self, *, username: str | None = None, password: str | None = None, auth: bool = True
    ) -> str:
        """The proxy URL for a client: ``socks5h://`` (the proxy resolves names) or ``http://``,
        with the kit's credentials unless others are given or ``auth`` is False."""
        scheme = "socks5h" if self.kind == "socks5" else "http"
        if not auth:
            return f"{scheme}://{self.address}"
        user = self.username if username is None else username
        secret = self.password if password is None else password
        return f"{scheme}://{user}:{secret}@{self.address}"

    def log_text(self, *, quiet: float = 0.05, timeout: float = 2.0) -> str:
        """The proxy's log once it stopped growing for ``quiet`` seconds: a proxy may write a
        request's line after the client already has its answer."""
        deadline = time.monotonic() + timeout
        text = self._read_log()
        while time.monotonic() < deadline:
            time.sleep(quiet)
            again = self._read_log()
            if again == text:
                break
            text = again
        return text

    def _read_log(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""

    def relayed(self, host: str | None = None) -> list[str]:
        """What the proxy relayed, oldest first: for SOCKS5 the ``host:port`` of each client
        connection (a connection may carry several HTTP requests); for HTTP the request line of
        each request it forwarded (tinyproxy opens one upstream connection per request).
        Authentication failures are not counted. ``host``: only those to that host."""
        text = self.log_text()
        if self.kind == "socks5":
            targets = [m["target"] for m in _MICROSOCKS_LINE.finditer(text)]
            return [t for t in targets if host is None or t.rsplit(":", 1)[0] == host]
        relayed: list[str] = []
        pending: str | None = None
        for line in text.splitlines():
            if (request := _TINYPROXY_REQUEST.search(line)) is not None:
                pending = request["line"]
            elif (established := _TINYPROXY_ESTABLISHED.search(line)) is not None:
                if pending is not None and (host is None or established["host"] == host):
                    relayed.append(pending)
                pending = None
        return relayed

    def count(self, host: str | None = None) -> int:
        """How many connections (SOCKS5) / requests (HTTP) went through to ``host`` (any)."""
        return len(self.relayed(host))

    def requests_seen(self) -> int:
        """HTTP only: every request line tinyproxy received, refused ones included."""
        return sum(1 for line in self.log_text().splitlines() if _TINYPROXY_REQUEST.search(line))


# --- availability --------------------------------------------------------------------------------


@functools.cache
def _unshare_problem() -> str | None:
    """Why ``unshare --mount`` with a bind mount cannot be used here (None: it can)."""
    if shutil.which("unshare") is None:
        return "unshare not on PATH (Debian: util-linux)"
    probe = subprocess.run(
        ["unshare", "--mount", "sh", "-c", "mount --bind /etc/hosts /etc/hosts"],
        capture_output=True,
        timeout=10,
        check=False,
    )
    if probe.returncode != 0:
        return f"unshare --mount with a bind mount failed: {probe.stderr.decode().strip()}"
    return None


def require(binary: str, package: str) -> str:
    """The path of ``binary`` - or a skip naming it (a failure under TOOGO_REQUIRE_PROXIES=1)."""
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} not on PATH (Debian: apt-get install {package})")
    problem = _unshare_problem()
    if problem is not None:
        pytest.skip(f"{binary} cannot run with a private /etc/hosts: {problem}")
    return path


# --- processes -----------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
    return port


def write_hosts(path: Path, names: tuple[str, ...]) -> Path:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [f"127.0.0.1\t{name}" for name in names]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _start_isolated(
    argv: list[str], hosts: Path, log: Path, host: str, port: int, what: str
) -> subprocess.Popen[bytes] | None:
    """``argv`` in a mount namespace of its own whose /etc/hosts is ``hosts``, its output
    appended to ``log``; returned once it listens on host:port. None if it exited first (the
    port was taken meanwhile, say); an error if it does not listen in time."""
    command = f"mount --bind {shlex.quote(str(hosts))} /etc/hosts && exec {shlex.join(argv)}"
    with log.open("ab") as out:
        # unshare execs sh, which execs the proxy: the process is the proxy itself
        process = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", command],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not _listening(host, port):
        if process.poll() is not None:
            return None
        if time.monotonic() > deadline:
            _stop(process)
            output = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{what} did not listen on {host}:{port}: {output}")
        time.sleep(0.02)
    return process


@contextlib.contextmanager
def _running(
    make_argv: Callable[[int], list[str]],
    hosts: Path,
    log: Path,
    what: str,
    host: str = "127.0.0.1",
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """The proxy process on a free port (three tries: a free port may be taken between finding
    and binding it); stopped and reaped on exit."""
    for _ in range(3):
        port = free_port(host)
        process = _start_isolated(make_argv(port), hosts, log, host, port, what)
        if process is not None:
            break
    else:
        raise RuntimeError(f"{what} exited at start: {log.read_text(errors='replace')[-2000:]}")
    try:
        yield process, port
    finally:
        _stop(process)


@contextlib.contextmanager
def socks5_proxy(
    directory: Path, *names: str, username: str = USER, password: str = PASSWORD
) -> Iterator[RunningProxy]:
    """microsocks on a free 127.0.0.1 port with ``-u``/``-P`` authentication, resolving
    ``names`` (to 127.0.0.1) through its private hosts file; outgoing connections from
    127.0.0.2. Its files are in ``directory``/socks5."""
    binary = require("microsocks", "microsocks")
    work = directory / "socks5"
    work.mkdir(parents=True, exist_ok=True)
    hosts = write_hosts(work / "hosts", names)
    log = work / "microsocks.log"
    host, egress = "127.0.0.1", EGRESS["socks5"]

    def argv(port: int) -> list[str]:
        return [binary, "-i", host, "-p", str(port), "-u", username, "-P", password, "-b", egress]

    with _running(argv, hosts, log, "microsocks", host) as (process, port):
        yield RunningProxy("socks5", host, port, username, password, egress, names, log, process)


def tinyproxy_config(
    work: Path, *, host: str, port: int, egress: str, username: str, password: str
) -> Path:
    """A config of its own: no system paths (pid file and log under ``work``), no Via header,
    BasicAuth, only 127.0.0.1 as client, outgoing connections bound to ``egress``."""
    config = work / "tinyproxy.conf"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                f"Listen {host}",
                f"Bind {egress}",
                "Timeout 30",
                f'PidFile "{work / "tinyproxy.pid"}"',
                f'LogFile "{work / "tinyproxy.log"}"',
                "LogLevel Info",
                "MaxClients 50",
                "Allow 127.0.0.1",
                "DisableViaHeader Yes",
                f"BasicAuth {username} {password}",
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    return config


@contextlib.contextmanager
def http_proxy(
    directory: Path, *names: str, username: str = USER, password: str = PASSWORD
) -> Iterator[RunningProxy]:
    """tinyproxy in the foreground (``-d``) on a free 127.0.0.1 port with ``BasicAuth``,
    resolving ``names`` through its private hosts file; outgoing connections from 127.0.0.3.
    Its config, pid file and log are in ``directory``/http (never /etc, /run or /var/log)."""
    binary = require("tinyproxy", "tinyproxy")
    work = directory / "http"
    work.mkdir(parents=True, exist_ok=True)
    hosts = write_hosts(work / "hosts", names)
    host, egress = "127.0.0.1", EGRESS["http"]

    def argv(port: int) -> list[str]:
        config = tinyproxy_config(
            work, host=host, port=port, egress=egress, username=username, password=password
        )
        return [binary, "-d", "-c", str(config)]

    with _running(argv, hosts, work / "tinyproxy.out", "tinyproxy", host) as (process, port):
        yield RunningProxy(
            "http", host, port, username, password, egress, names, work / "tinyproxy.log", process
        )


@contextlib.contextmanager
def proxy_of(kind: Kind, directory: Path, *names: str, **auth: str) -> Iterator[RunningProxy]:
    """:func:`socks5_proxy` or :func:`http_proxy`."""
    start = socks5_proxy if kind == "socks5" else http_proxy
    with start(directory, *names, **auth) as proxy:
        yield proxy


def resolves(name: str) -> bool:
    """Whether this process can resolve ``name`` (a kit name must not)."""
    try:
        socket.getaddrinfo(name, 80)
    except socket.gaierror:
        return False
    return True


# --- a fake exchange that records where each request came from -----------------------------------


class _PeerRecording:
    """Mixed into a fake exchange: ``peers`` holds the client address of every request, in the
    order of ``requests`` - a kit proxy's egress address when the request came through it."""

    peers: list[str]

    def _wrap(self, route: Any) -> Any:
        inner = super()._wrap(route)  # type: ignore[misc]

        async def handle(request: web.Request) -> web.StreamResponse:
            self.peers.append(request.remote or "")
            return await inner(request)  # type: ignore[no-any-return]

        return handle


def fake_with_peers(platform: str, **kw: Any) -> FakeExchange:
    """The fake exchange of ``platform`` that also records each request's client address in
    ``.peers`` (see :class:`_PeerRecording`)."""
    base = FAKES[platform]
    cls = type(f"Peer{base.__name__}", (_PeerRecording, base), {})
    fake: FakeExchange = cls(**kw)
    fake.peers = []  # type: ignore[attr-defined]
    return fake


def peers(fake: FakeExchange) -> list[str]:
    return list(fake.peers)  # type: ignore[attr-defined]


def proxied_url(fake: FakeExchange, name: str) -> str:
    """``fake``'s base URL under a name only a kit proxy resolves."""
    return f"http://{name}:{fake.port}"
