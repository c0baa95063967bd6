"""The environment the tests run in is exactly requirements.lock.

`make` builds .venv from the lock alone (`pip install --require-hashes --no-deps`, then the project
without dependencies), so every package installed is a locked one at its locked version, and every
locked package is installed. A package added by hand, or a lock changed without `make` rebuilding
the environment, fails here. Run outside such an environment (a hand-made one), it skips.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.M)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(text: str) -> dict[str, str]:
    return {canonical(name): version for name, version in PIN.findall(text)}


def test_the_lock_pins_every_package_with_hashes() -> None:
    text = LOCK.read_text(encoding="utf-8")
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
    assert len(blocks) == len(pins(text)) > 40
    for block in blocks:
        assert "--hash=sha256:" in block, block.splitlines()[0]
    # what the project declares, and what builds it, are in the lock
    for name in ("sqlalchemy", "ccxt", "pytest", "pytest-asyncio", "setuptools", "wheel"):
        assert name in pins(text), name


def test_the_environment_is_exactly_the_lock() -> None:
    if Path(sys.prefix).resolve() != (ROOT / os.environ.get("VENV", ".venv")).resolve():
        pytest.skip(f"not the environment `make` builds from the lock ({sys.prefix})")
    frozen = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    installed = {k: v for k, v in pins(frozen).items() if k != "pip"}
    locked = pins(LOCK.read_text(encoding="utf-8"))
    assert installed == locked, {
        "installed, not locked": sorted(installed.keys() - locked.keys()),
        "locked, not installed": sorted(locked.keys() - installed.keys()),
        "other version": sorted(
            k for k in installed.keys() & locked.keys() if installed[k] != locked[k]
        ),
    }
