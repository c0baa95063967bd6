"""Run the real command line in subprocesses against a test database."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import yaml


def write_config(path: Path, url: str, **sections: object) -> Path:
    data: dict[str, object] = {
        "database": {"url": url, "retry": {"attempts": 10, "initial": "10ms", "max": "200ms"}},
        "logging": {"format": "json"},
    }
    data.update(sections)
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
