"""What is examined once everything stopped: the daemons' output (every line a JSON event),
every output grepped for the planted secrets, and nothing left behind (process, thread,
listening socket)."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import orjson
import psutil

from bench.sim.checks import Result
from bench.sim.daemons import Instance


def daemon_outputs(logs: Path, failed: set[str]) -> tuple[Result, Counter[str]]:
    """Every daemon line a JSON event, none critical; the events counted by name.

    One exception, as docs/audit-log.md documents it: a start that fails (exit 1 before ``daemon
    started``, e.g. the database is down) ends with its error as one plain line on stderr,
    ``toogo-reconcile: connect to the database: ...``; ``failed`` names those generations'
    output files (their stem)."""
    events: Counter[str] = Counter()
    problems = []
    for path in sorted(logs.glob("daemon-*")):
        lines = path.read_bytes().split(b"\n")
        tail = lines.pop()  # b"" after the last newline; a SIGKILL may cut a line short
        start_error = path.suffix == ".err" and path.stem in failed and len(lines) == 1
        if start_error and lines[0].startswith(b"toogo-reconcile: "):
            events["(failed start: its error line on stderr)"] += 1
            continue
        for n, line in enumerate(lines, 1):
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                problems.append(f"{path.name}:{n}: not JSON: {line[:120]!r}")
                continue
            # APScheduler's messages name the job's next run time: one figure for all
            events[re.sub(r'"[^"]*"', '"…"', str(event.get("event")))] += 1
            if event.get("level") == "critical":
                problems.append(f"{path.name}:{n}: critical: {event.get('event')}")
            if event.get("event") == "power consumed":
                events[f"power consumed ({event.get('source')})"] += 1
        if tail:
            events["(line cut short by SIGKILL)"] += 1
    return [("every daemon output line is a JSON event, none critical", problems)], events


def secrets_in(paths: Iterable[Path], planted: dict[str, str]) -> Result:
    """Each planted secret (by name: the value is never printed) found in a file."""
    found = []
    for path in paths:
        if path.exists():
            data = path.read_bytes()
            found += [
                f"{name} in {path.name}"
                for name, value in planted.items()
                if value.encode() in data
            ]
    return [("no planted secret in any output", found)]


def leftovers(
    instances: list[Instance], threads: list[threading.Thread], ports: list[int]
) -> Result:
    me = psutil.Process()
    problems = [f"{i.name} not reaped" for i in instances if i.running()]
    problems += [f"child process {c.pid} {c.name()} left" for c in me.children(recursive=True)]
    problems += [f"thread {t.name} alive" for t in threads if t.is_alive()]
    listening = [c for c in me.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    problems += [f"listening on {c.laddr}" for c in listening]
    for port in ports:
        with socket.socket() as s, contextlib.suppress(OSError):
            s.settimeout(1)
            s.connect(("127.0.0.1", port))
            problems.append(f"port {port} still accepts connections")
    return [("no process, thread or listening socket left", problems)]
