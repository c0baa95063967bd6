"""Drain a backlog of profitable closed orders with the shipped ``toogo-reconcile sweep``, timed
from process start to exit, next to a reference drain done with four set-based SQL statements
(the database's practical limit for this work) measured in the same run.

    .venv/bin/python bench/drain.py [--db URL] [--runs 3] [--orders 100000] [--users 10000]
                                    [--small 10000] [--page-size N]

``--db`` is the server, without a database name: ``mysql+aiomysql://root@127.0.0.1:3306`` (the
default; env TOOGO_BENCH_MYSQL overrides it) or ``postgresql://postgres@127.0.0.1:5432``
(``postgresql+asyncpg://`` is accepted too). Each run creates a fresh, uniquely named database
with hotgo's tables from upstream's own DDL for that server (kits/upstream.py), seeds it in SQL
on the server, drains it, verifies the ledger (one consume row per eligible order, per-user sums
and wallets exact, before/after chains) and drops it; then the same for the reference, written in
that server's own SQL (bench/drain_servers.py).

The sweep is the console script an operator runs, ``toogo-reconcile --config FILE sweep``, in a
child process with the shipped configuration: the file names only the database, the power rate
the reference charges and JSON logs (to a file; one audit line per order is part of the cost).
Its rate is orders / the time from starting the process to its exit - Python's start-up, the
imports, the process planning, the worker processes' start and end included; the ``sweep
summary``'s own ``elapsed`` is printed beside it. ``--page-size``, ``BENCH_PROCESSES`` and
``BENCH_WORKERS`` (``sweep.page_size`` / ``.processes`` / ``.workers``) are for experiments, not
for the figures. Prints each run's orders/s for both, the sweep's peak RSS at the small and the
full size, then the median of the runs' ratios and the command that reproduces it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/drain.py` puts bench/, not the root, on the path
    sys.path.insert(0, str(ROOT))

from bench.drain_servers import Server, server_for  # noqa: E402
from daemon.config import SweepConfig  # noqa: E402
from reconcile.storage.db import Database, DatabaseSettings  # noqa: E402

SERVER = os.environ.get("TOOGO_BENCH_MYSQL", "mysql+aiomysql://root@127.0.0.1:3306")
SHIPPED_PAGE = SweepConfig().page_size
#: the experiments' overrides of the shipped configuration (``sweep.*``), by environment variable
OVERRIDES = (("workers", "BENCH_WORKERS"), ("processes", "BENCH_PROCESSES"))


def load() -> str:
    """The 1/5/15-minute load averages, for the figures' record."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def sweep_command() -> list[str]:
    """The shipped console script beside this interpreter (``pip install`` puts it there);
    ``python -m daemon``, the same entry point, where it is missing."""
    script = Path(sys.executable).with_name("toogo-reconcile")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "daemon"]


def create_schema(server: Server, name: str) -> None:
    """hotgo's tables from upstream's DDL for this server, plus what `migrate up` adds (the
    power columns on PostgreSQL, uk_user_order, the daemon's tables and sweep index)."""

    async def main() -> None:
        async with Database(DatabaseSettings(url=server.daemon_url(name))) as db:
            await db.transaction(server.create_schema, what="create schema")

    asyncio.run(main())


def fresh(server: Server, orders: int, users: int) -> str:
    name = f"trc_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    server.create(name)
    try:
        create_schema(server, name)
        server.seed(name, orders, users)
    except BaseException:
        server.drop(name)
        raise
    return name


class _PeakRSS:
    """The largest VmHWM of the sweep process and its worker processes, sampled every 50 ms,
    and their CPU seconds (``cpu``: each process's user + system time as last sampled, summed;
    ``run_sweep`` takes ``wait4``'s where larger, exact for the workers the sweep reaps itself).

    Not ``wait4``'s ``ru_maxrss``: that counts the pages the child shared with this process
    when it was forked, so it grows with this process (the verification reads every row) and
    said 122 MiB for a 10,000-order sweep whose own peak was 76 MiB."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.kib = 0
        self._cpu: dict[int, float] = {}
        self._tick = os.sysconf("SC_CLK_TCK")
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _family(self) -> list[int]:
        pids, i = [self.pid], 0
        while i < len(pids):
            for task in Path(f"/proc/{pids[i]}/task").glob("*/children"):
                with contextlib.suppress(OSError):
                    pids += [int(c) for c in task.read_text().split()]
            i += 1
        return pids

    def _run(self) -> None:
        while not self._done.wait(0.05):
            for pid in self._family():
                with contextlib.suppress(OSError):
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            self.kib = max(self.kib, int(line.split()[1]))
                    # after the command's name, which may hold spaces: utime, stime (14, 15)
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    self._cpu[pid] = (int(fields[11]) + int(fields[12])) / self._tick

    @property
    def cpu(self) -> float:
        return sum(self._cpu.values())

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def run_sweep(
    server: Server, name: str, page_size: int | None
) -> tuple[float, int, dict[str, Any]]:
    """Drain with the shipped command in a child process; return (seconds from the process's
    start to its exit, peak RSS KiB, summary), the summary with the CPU seconds of the sweep and
    its workers (user + system, start-up included) as ``cpu``."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "bench.yaml"
        sweep = {key: int(os.environ[env]) for key, env in OVERRIDES if os.environ.get(env)}
        if page_size:
            sweep["page_size"] = page_size
        cfg.write_text(
            json.dumps(
                {
                    "database": {"url": server.daemon_url(name)},
                    "power": {"consume_rate": "0.10", "min_consume": "0.01"},
                    **({"sweep": sweep} if sweep else {}),  # the shipped defaults otherwise
                    "logging": {"format": "json"},
                }
            )
        )
        log_path = Path(tmp) / "sweep.log"
        with log_path.open("wb") as log:
            env = {k: v for k, v in os.environ.items() if not k.startswith("TOOGO_")}
            started = time.perf_counter()
            proc = subprocess.Popen(
                [*sweep_command(), "--config", str(cfg), "sweep"],
                stdout=log,
                stderr=subprocess.PIPE,
                cwd=ROOT,
                env=env,
            )
            peak = _PeakRSS(proc.pid)
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - started
            peak.stop()
            proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            tail = "\n".join(log_path.read_text().splitlines()[-20:])
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise SystemExit(f"sweep failed (exit {proc.returncode}): {err}\n{tail}")
        summary = next(
            json.loads(line)
            for line in log_path.read_text().splitlines()
            if '"sweep summary"' in line
        )
        # wait4's figure holds the workers the sweep reaped itself; the samples also see
        # processes it did not reap (an older sweep's fork server children)
        summary["cpu"] = max(usage.ru_utime + usage.ru_stime, peak.cpu)
        return wall, peak.kib, summary


def drained(
    server: Server, orders: int, users: int, page_size: int | None
) -> tuple[float, int, Any, Any]:
    """Seed, sweep, verify, drop: (seconds start to exit, peak RSS KiB, summary, total)."""
    name = fresh(server, orders, users)
    try:
        secs, rss, summary = run_sweep(server, name, page_size)
        total = server.verify(name, orders)
    finally:
        server.drop(name)
    return secs, rss, summary, total


def referenced(server: Server, orders: int, users: int) -> tuple[float, Any]:
    """Seed, the set-based reference, verify, drop: (seconds, total charged)."""
    name = fresh(server, orders, users)
    try:
        secs = server.reference(name)
        total = server.verify(name, orders)
    finally:
        server.drop(name)
    return secs, total


def reproduce() -> str:
    """This command line, with the experiments' environment variables it ran under."""
    env = [
        f"{var}={os.environ[var]}"
        for var in ("BENCH_ENGINE_IDS", *(v for _, v in OVERRIDES))
        if os.environ.get(var)
    ]
    return shlex.join([*env, ".venv/bin/python", "bench/drain.py", *sys.argv[1:]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--db", default=SERVER, help=f"the server, no database (default {SERVER})")
    ap.add_argument("--orders", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--small", type=int, default=10_000, help="backlog for the RSS check (0: none)")
    ap.add_argument("--page-size", type=int, help="sweep.page_size (default: the shipped one)")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    server = server_for(args.db)

    overrides = ", ".join(f"{env}={os.environ[env]}" for _, env in OVERRIDES if os.environ.get(env))
    print(f"{reproduce()}\n{server.label} ({server.url.render_as_string()}), backlog"
          f" {args.orders} orders over {args.users} users, `{' '.join(sweep_command())} sweep`"
          f" timed from process start to exit, page {args.page_size or SHIPPED_PAGE},"
          f" {overrides or 'shipped configuration'}")  # fmt: skip
    ratios: list[float] = []
    sweeps: list[float] = []
    references: list[float] = []
    for run in range(1, args.runs + 1):
        print(f"run {run} load before {load()}")
        if args.small:
            secs, rss_small, _, _ = drained(server, args.small, args.users, args.page_size)
            print(
                f"run {run} sweep     {args.small:>7} orders {secs:7.2f} s "
                f"{args.small / secs:8.0f} orders/s  peak RSS {rss_small / 1024:6.1f} MiB"
            )
        secs, rss, summary, swept = drained(server, args.orders, args.users, args.page_size)
        sweeps.append(args.orders / secs)
        print(
            f"run {run} sweep     {args.orders:>7} orders {secs:7.2f} s {sweeps[-1]:8.0f} orders/s"
            f"  (own elapsed {summary['elapsed']:.2f} s, processes {summary.get('processes', 1)})"
            f"  peak RSS {rss / 1024:6.1f} MiB  pages {summary['pages']}"
            f"  client CPU {summary['cpu']:.1f} s  load {load()}"
        )
        ref, charged = referenced(server, args.orders, args.users)
        assert charged == swept, f"reference charged {charged}, the sweep {swept}"
        references.append(args.orders / ref)
        ratios.append(sweeps[-1] / references[-1])
        print(
            f"run {run} set-based {args.orders:>7} orders {ref:7.2f} s"
            f" {references[-1]:8.0f} orders/s  sweep/reference = {ratios[-1]:.2f}"
            f"  load after {load()}"
        )
    print(
        f"{server.label}, median of {args.runs}: sweep {statistics.median(sweeps):,.0f} orders/s"
        f" start to exit, set-based {statistics.median(references):,.0f} orders/s,"
        f" sweep/reference = {statistics.median(ratios):.2f}"
        f" (runs {' / '.join(f'{r:.2f}' for r in ratios)})\nreproduce: {reproduce()}"
    )


if __name__ == "__main__":
    main()
