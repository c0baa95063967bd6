"""A PostgreSQL server of a test's own (own data directory, port and socket directory), for tests
that kill, hang or restart the database - the interface of ``kits.private_mariadb``. The shared
server on 5432 is never touched.

``install_template`` runs initdb once per module; each server copies it. The server runs as the
``postgres`` user (PostgreSQL refuses to run as root). Its backends are children of the
postmaster in process groups of their own (PostgreSQL makes each one a group leader), so the
signals go to the postmaster and each of its children: ``kill`` is a crash of the whole server
at once, ``pause`` freezes all of it. Skipped when the binaries are missing
(``TOOGO_REQUIRE_POSTGRES=1`` makes that a failure).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from kits.databases import REQUIRE_POSTGRES, pg_admin
from kits.private_mariadb import free_port


def _bin(name: str) -> str | None:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(found[-1]) if found else shutil.which(name)


INITDB, POSTGRES = _bin("initdb"), _bin("postgres")


def _as_postgres() -> dict[str, Any]:
    """Popen arguments that run the child as the ``postgres`` user when we are root."""
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam("postgres")
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _chown(path: Path) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        subprocess.run(["chown", "-R", f"{entry.pw_uid}:{entry.pw_gid}", str(path)], check=True)


def work_dir() -> Path:
    """A directory the ``postgres`` user can reach (pytest's tmp_path is root's, mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="toogo-pg-"))
    path.chmod(0o755)
    return path


def install_template(datadir: Path) -> None:
    if INITDB is None or POSTGRES is None:
        if REQUIRE_POSTGRES:
            pytest.fail("initdb / postgres not found")
        pytest.skip("initdb / postgres not found")
    datadir.mkdir(parents=True)
    _chown(datadir)
    subprocess.run(
        [INITDB, "-D", str(datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
        check=True,
        capture_output=True,
        timeout=120,
        **_as_postgres(),
    )


def copy_template(template: Path, datadir: Path) -> None:
    subprocess.run(["cp", "-a", str(template), str(datadir)], check=True)


class PrivatePostgres:
    """``start``, ``kill`` (SIGKILL to the whole server), ``pause``/``resume``
    (SIGSTOP/SIGCONT), ``terminate``."""

    def __init__(self, datadir: Path) -> None:
        self.datadir = datadir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = datadir.parent / "server.log"
        self._killed: list[int] = []

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> None:
        assert POSTGRES is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(
            Path(f"/proc/{p}").exists() for p in self._killed
        ):
            time.sleep(0.05)  # a killed server's backends, not yet reaped by init
        args = [
            POSTGRES, "-D", str(self.datadir), "-p", str(self.port), "-k", str(self.datadir),
            "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200",
            "-c", "shared_buffers=64MB", "-c", "fsync=off", "-c", "logging_collector=off",
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=log, start_new_session=True, **_as_postgres()
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.admin("SELECT 1")
                return
            except (OSError, asyncpg.PostgresError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"private PostgreSQL did not start: {self.log.read_text()[-2000:]}"
                    ) from None
                time.sleep(0.2)

    def admin(self, *statements: str) -> None:
        dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        pg_admin(*statements, dsn=dsn, timeout=2)

    def create_database(self, name: str) -> str:
        self.admin(f'CREATE DATABASE "{name}"')
        return f"{self.url}/{name}"

    def _pids(self) -> list[int]:
        """The postmaster and its children (backends, checkpointer, walwriter, ...)."""
        assert self.proc is not None
        pids = [self.proc.pid]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == self.proc.pid:
                    pids.append(int(stat.parent.name))
        return pids

    def _signal(self, sig: signal.Signals) -> None:
        for pid in self._pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def kill(self) -> None:
        """SIGKILL to postmaster and backends at once; the next start runs crash recovery."""
        pids = self._pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(30)
        # the backends are gone but may wait a while to be reaped (their parent died): start()
        # waits for that, not kill(), which must return at once (the test's loop is blocked)
        self._killed = pids[1:]

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def terminate(self) -> None:
        if self.proc is None:
            return
        self._signal(signal.SIGCONT)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
