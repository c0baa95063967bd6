"""Run the real command line in subprocesses against a test database."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import yaml

#: the ``power`` section of the service tests' configs
POWER = {"consume_rate": "0.10", "min_consume": "0.01"}


def write_config(path: Path, url: str, **sections: object) -> Path:
    """A config file for the test database. Each exchange listed honours the accounts'
    ``base_url`` (``use_account_base_url``), which the tests point at their fakes, unless the
    test says otherwise; the daemon's default, like the engine, ignores it."""
    data: dict[str, object] = {
        "database": {"url": url, "retry": {"attempts": 10, "initial": "10ms", "max": "200ms"}},
        "logging": {"format": "json"},
    }
    data.update(sections)
    exchanges = data.get("exchanges")
    if isinstance(exchanges, dict):
        data["exchanges"] = {name: _to_fakes(name, entry) for name, entry in exchanges.items()}
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOGO_")}
    env.update(extra)
    return env


async def start_cli(config: Path, *args: str, **env: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "daemon",
        "--config",
        str(config),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(**env),
    )


async def run_cli(config: Path, *args: str, **env: str) -> tuple[int, str, str]:
    proc = await start_cli(config, *args, **env)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _to_fakes(name: str, entry: object) -> object:
    if name == "replay" or not isinstance(entry, dict | None):
        return entry
    entry = dict(entry or {})
    if "base_url" not in entry:
        entry.setdefault("use_account_base_url", True)
    return entry
