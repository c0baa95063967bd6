"""A MariaDB server of a test's own (own datadir, port and socket), for tests that kill, hang or
restart the database. The shared server on 3306 is never touched.

``template`` installs a datadir once per session; each server copies it. Skipped when the
MariaDB binaries are not installed (``TOOGO_REQUIRE_MYSQL=1`` makes that a failure).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pymysql
import pytest

from kits.databases import REQUIRE_MYSQL

MARIADBD = shutil.which("mariadbd") or shutil.which("mariadbd", path="/usr/sbin:/usr/local/sbin")
INSTALL_DB = shutil.which("mariadb-install-db")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def install_template(datadir: Path) -> None:
    if MARIADBD is None or INSTALL_DB is None:
        if REQUIRE_MYSQL:
            pytest.fail("mariadbd / mariadb-install-db not found")
        pytest.skip("mariadbd / mariadb-install-db not found")
    user = ["--user=root"] if os.geteuid() == 0 else []
    subprocess.run(
        [
            INSTALL_DB,
            "--no-defaults",
            f"--datadir={datadir}",
            "--skip-test-db",
            "--auth-root-authentication-method=normal",
            *user,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


class PrivateMariaDB:
    """``start``, ``kill`` (SIGKILL), ``stop``/``cont`` (SIGSTOP/SIGCONT), ``terminate``."""

    def __init__(self, datadir: Path) -> None:
        self.datadir = datadir
        self.port = free_port()
        self.socket = datadir / "mysqld.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = datadir / "server.log"

    @property
    def url(self) -> str:
        return f"mysql+aiomysql://root@127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> None:
        assert MARIADBD is not None
        user = ["--user=root"] if os.geteuid() == 0 else []
        args = [
            MARIADBD,
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--socket={self.socket}",
            f"--log-error={self.log}",
            f"--pid-file={self.datadir / 'mysqld.pid'}",
            "--skip-log-bin",
            "--innodb-buffer-pool-size=64M",
            "--max-connections=200",
            *user,
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.admin().close()
                return
            except pymysql.err.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"private MariaDB did not start: {self.log.read_text()[-2000:]}"
                    ) from None
                time.sleep(0.2)

    def admin(self) -> pymysql.connections.Connection:
        return pymysql.connect(
            host="127.0.0.1",
            port=self.port,
            user="root",
            password="",
            autocommit=True,
            connect_timeout=2,
        )

    def create_database(self, name: str) -> str:
        conn = self.admin()
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        finally:
            conn.close()
        return f"{self.url}/{name}"

    def kill(self) -> None:
        """SIGKILL: the server dies at once, mid-transaction; InnoDB recovers on start."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def terminate(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
