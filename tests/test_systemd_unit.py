"""The shipped systemd unit: ``systemd-analyze verify`` accepts it, it says what
docs/operations.md ("Deploying: systemd") asks
(notify + watchdog, credentials, hardening, a stop timeout longer than the daemon's), and its
environment-file example configures a valid database URL.

``systemd-analyze`` comes with Debian's ``systemd`` package. Without it the verification tests
are skipped - unless TOOGO_REQUIRE_SYSTEMD=1 (CI), which makes that a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

import pytest

from daemon.config import Config, load_config, parse_duration

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "toogo-reconcile.service"
ENV_EXAMPLE = ROOT / "systemd" / "toogo-reconcile.env.example"
SHIPPED_BINARY = "/opt/toogo-reconcile/.venv/bin/toogo-reconcile"
REQUIRE = os.environ.get("TOOGO_REQUIRE_SYSTEMD") == "1"
# "low" exposure in systemd's own rating (0 = locked down ... 10 = unprotected); ours is ~1.3
MAX_EXPOSURE = 2.0


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values (a key may repeat, e.g. LoadCredential=)."""
    sections: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        sections[section][key.strip()].append(value.strip())
    return sections


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text(encoding="utf-8"))["Service"]


def one(service: dict[str, list[str]], key: str) -> str:
    values = service.get(key, [])
    assert len(values) == 1, f"{key}= should be set once, is {values}"
    return values[0]


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        if REQUIRE:
            pytest.fail(
                "systemd-analyze is required (TOOGO_REQUIRE_SYSTEMD=1): apt-get install systemd"
            )
        pytest.skip("systemd-analyze not installed (Debian: apt-get install systemd)")
    return found


def installed_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this venv's console script (verify checks that the
    binary exists)."""
    binary = Path(sys.executable).parent / "toogo-reconcile"
    if not binary.exists():
        found = shutil.which("toogo-reconcile")
        assert found, "the toogo-reconcile console script is not installed"
        binary = Path(found)
    text = UNIT.read_text(encoding="utf-8")
    assert SHIPPED_BINARY in text
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace(SHIPPED_BINARY, str(binary)), encoding="utf-8")
    return unit


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    tool = systemd_analyze()
    unit = installed_copy(tmp_path)
    result = subprocess.run(
        [tool, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # verify exits 0 on many problems (an unknown key, a bad value "ignoring"): any complaint
    # about our unit is a failure
    ours = [line for line in result.stderr.splitlines() if UNIT.name in line]
    assert result.returncode == 0 and not ours, result.stderr


def test_the_unit_is_hardened(tmp_path: Path) -> None:
    tool = systemd_analyze()
    unit = installed_copy(tmp_path)
    result = subprocess.run(
        [tool, "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if "--offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip("this systemd-analyze cannot rate a unit file offline (systemd < 250)")
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, (result.stdout[-2000:], result.stderr)
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_the_unit_says_what_the_daemon_needs(service: dict[str, list[str]]) -> None:
    assert one(service, "Type") == "notify"
    assert parse_duration(one(service, "WatchdogSec")) >= timedelta(seconds=10)
    assert one(service, "Restart") == "on-failure"
    assert one(service, "KillSignal") == "SIGTERM"
    assert "2" in one(service, "RestartPreventExitStatus").split()  # config errors: no restart
    # systemd must not SIGKILL the daemon while it is still allowed to finish in-flight work
    assert parse_duration(one(service, "TimeoutStopSec")) > Config().shutdown_timeout
    exec_start = one(service, "ExecStart").split()
    assert exec_start[0] == SHIPPED_BINARY
    assert exec_start[1:] == ["--config", "/etc/toogo-reconcile/config.yaml", "run"]
    assert one(service, "EnvironmentFile") == "-/etc/toogo-reconcile/env"
    credentials = dict(v.split(":", 1) for v in service["LoadCredential"])
    assert credentials == {
        "db_password": "/etc/toogo-reconcile/db_password",
        "aes_key": "/etc/toogo-reconcile/aes_key",
    }
    expected = {
        "DynamicUser": "yes",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "CapabilityBoundingSet": "",
    }
    assert {k: one(service, k) for k in expected} == expected
    assert "@system-service" in service["SystemCallFilter"]


def test_the_environment_example_configures_a_valid_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings: dict[str, str] = {}
    for raw in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), f"not VAR=value: {raw!r}"
        settings[key] = value
    assert settings["TOOGO_DATABASE_URL"].startswith("mysql+aiomysql://")
    for key in ("TOOGO_DATABASE_PASSWORD", "TOOGO_AES_KEY", "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(key, raising=False)
        assert key not in settings, f"{key} must not be set in the example"
    monkeypatch.setenv("TOOGO_DATABASE_URL", settings["TOOGO_DATABASE_URL"])
    config = load_config(tmp_path / "absent.yaml", required=False)
    assert config.database.url == settings["TOOGO_DATABASE_URL"]
