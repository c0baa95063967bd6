"""Upstream's DDL in tests/fixtures/upstream is what SOURCE.md says it is.

Every .sql file there is listed in SOURCE.md with its sha256 (upstream's files as of the commit it
names; the as-applied dump as ``as_applied.sh`` writes it), and ``as_applied.sh`` re-creates the
dump byte for byte from upstream's scripts on the MariaDB server.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess

import pytest

from kits.databases import mysql_server
from kits.upstream import MYSQL_DDL, UPSTREAM_DIR

SOURCE = UPSTREAM_DIR / "SOURCE.md"


def listed() -> dict[str, str]:
    """file name -> sha256, as SOURCE.md lists them."""
    text = SOURCE.read_text(encoding="utf-8")
    table = dict(re.findall(r"^\| `([^`]+\.sql)` \|[^|]*\| `([0-9a-f]{64})` \|$", text, re.M))
    dump = re.search(r"^## `hotgo_mysql_as_applied\.sql` \(sha256 `([0-9a-f]{64})`\)$", text, re.M)
    assert dump is not None, "SOURCE.md gives no checksum for the as-applied dump"
    return {**table, MYSQL_DDL.name: dump.group(1)}


def test_every_ddl_file_is_listed_with_its_checksum() -> None:
    sums = listed()
    assert sorted(sums) == sorted(p.name for p in UPSTREAM_DIR.glob("*.sql"))
    for name, digest in sums.items():
        actual = hashlib.sha256((UPSTREAM_DIR / name).read_bytes()).hexdigest()
        assert actual == digest, f"{name} differs from the copy SOURCE.md describes"


def test_as_applied_sh_recreates_the_dump_from_upstreams_scripts(mysql_available: bool) -> None:
    if shutil.which("mariadb") is None or shutil.which("mariadb-dump") is None:
        if os.environ.get("TOOGO_REQUIRE_MYSQL") == "1":
            pytest.fail("the mariadb and mariadb-dump clients are required (TOOGO_REQUIRE_MYSQL=1)")
        pytest.skip("the mariadb / mariadb-dump clients are not on PATH")
    host, port, user = mysql_server()
    env = {**os.environ, "MYSQL_HOST": host, "MYSQL_PORT": str(port), "MYSQL_USER": user}
    proc = subprocess.run(
        ["bash", str(UPSTREAM_DIR / "as_applied.sh"), f"trc_as_applied_{os.getpid()}"],
        capture_output=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert proc.stdout == MYSQL_DDL.read_bytes()
