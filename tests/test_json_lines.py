"""Every line of ``run`` is a JSON event, including what third-party loggers say (issue 14):
APScheduler's "maximum number of running instances reached", when a sweep outlasts its
interval, comes out as an event on stdout, not as plain text on stderr."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

from kits.seed import seed_backlog
from reconcile.storage.db import Database
from tests.procs import POWER, start_cli, write_config


async def test_run_writes_nothing_but_json_events(
    mysql_db: Database, mysql_url: str, tmp_path: Path
) -> None:
    await seed_backlog(mysql_db, orders=6000, users=300, seed=21)
    cfg = write_config(
        tmp_path / "c.yaml",
        mysql_url,
        power=POWER,
        sweep={"page_size": 5, "workers": 1},  # slow on purpose: the sweep outlasts 1 s
        schedule={"compensation_sweep": "1s", "realtime_sweep": "1h", "history_sync": "1h"},
    )
    proc = await start_cli(cfg, "run")
    assert proc.stdout is not None
    seen: list[bytes] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert line, "run ended early"
            seen.append(line)
            if b"maximum number of running instances reached" in line:
                break
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()
    assert proc.returncode == 0, err.decode()
    lines = b"".join([*seen, out]).decode().splitlines() + err.decode().splitlines()
    events: list[dict[str, Any]] = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise AssertionError(f"not a JSON line: {line!r}") from exc
    assert all(isinstance(e, dict) and "event" in e and "level" in e for e in events)
    [skipped, *_] = [e for e in events if "maximum number of running instances" in e["event"]]
    assert skipped["logger"].startswith("apscheduler") and skipped["level"] == "warning"
    assert "timestamp" in skipped
    assert events[-1]["event"] == "daemon stopped"
