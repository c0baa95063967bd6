"""A seeded fault simulation of the whole system (issue 14, items 4 and 5).

    .venv/bin/python bench/simulate.py --minutes 30 --seed 14 [--workdir DIR] [--keep]

On a private MariaDB (own datadir and port: it is SIGKILLed and started again once; the shared
server on 3306 is never touched), with upstream's DDL:

- hotgo's engine trades on ten robots over five fake exchanges (real wire formats, real ccxt in
  the daemons): opens and closes orders, closes some positions by hand on the exchange (open
  locally, or never local at all), charges some closes through the legacy ConsumePower whose
  ``power_consumed`` update is lost; the Go application's ``ChangeBalance`` reads wallets
  without a lock and writes absolute balances with ledger rows (bench/sim/engine.py);
- three ``toogo-reconcile run`` daemons share the work through a TCP proxy, with the database
  password, the AES key for the ``ENC:`` credentials and the API keys planted as in production
  (environment for one, systemd credential files for two);
- the seeded schedule (bench/sim/schedule.py) SIGKILLs, SIGSTOPs (then SIGCONTs) and SIGTERMs
  the daemons (each restarted, as systemd would), cuts connections before and after COMMIT and
  all at once, serves 429s, 5xx, HTML pages, timeouts, slow answers and dropped connections,
  and restarts the database server;
- at checkpoints and at the end, the invariants (bench/sim/checks.py); at the end, after the
  faults stop and the daemons caught up, a final ``sync`` and ``sweep`` that must find nothing
  left, ``audit --json`` that must report exactly the overwrites, every output line JSON, no
  planted secret in any output, no process or listening socket left.

Prints the seed first and with any failure (``--seed`` replays the same fault schedule; its
digest is printed too); exit 0 when every check passed, 1 on a violation, 2 when it cannot run
(no MariaDB binaries). Logs stay in ``--workdir`` on failure or with ``--keep``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import orjson
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/simulate.py` puts bench/, not the root, on the path
    sys.path.insert(0, str(ROOT))

from bench.sim import aftermath, checks, schedule  # noqa: E402
from bench.sim.daemons import Instance, daemon_env  # noqa: E402
from bench.sim.engine import GO_REMARK, LEGACY_REMARK, Engine, GoWallet  # noqa: E402
from bench.sim.world import (  # noqa: E402
    DB_NAME,
    DB_USER,
    PLATFORMS,
    POWER,
    ZONE,
    Cast,
    Exchanges,
    create_db_user,
    create_schema,
    make_cast,
)
from kits.private_mariadb import INSTALL_DB, MARIADBD, PrivateMariaDB, free_port  # noqa: E402
from kits.tcp_proxy import CommitCutter  # noqa: E402

DAEMONS = 3


class Tee:
    """Everything the simulation prints also goes to its log file (which is grepped too)."""

    def __init__(self, stream: TextIO, log: TextIO) -> None:
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.log.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.log.flush()
        self.stream.flush()


def say(*parts: object) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}]", *parts, flush=True)


def daemon_config(path: Path, port: int, metrics_port: int) -> Path:
    exchange = {
        "timeout": "2s",
        "cooldown": "20s",
        "use_account_base_url": True,
        "retry": {"attempts": 3, "initial": "50ms", "max": "300ms", "retry_after_max": "2s"},
    }
    data = {
        "database": {
            "url": f"mysql+aiomysql://{DB_USER}@127.0.0.1:{port}/{DB_NAME}",
            "timezone": ZONE,
            "lock_wait_timeout": "3s",
            "pool_size": 5,
            "retry": {"attempts": 6, "initial": "50ms", "max": "1s"},
        },
        "power": POWER,
        "sweep": {"page_size": 50, "workers": 2},
        "sync": {"lookback": "1d", "match_tolerance": "5s", "concurrency": 4},
        "exchanges": {p: exchange for p in PLATFORMS},
        "schedule": {
            "history_sync": "3s",
            "realtime_sweep": "2s",
            "realtime_window": "15m",
            "compensation_sweep": "20s",
        },
        "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
        "shutdown_timeout": "5s",
        "logging": {"format": "json", "level": "info"},
    }
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def secret_envs(cast: Cast, workdir: Path) -> list[dict[str, str]]:
    """daemon-0 gets its secrets from the environment, the others from systemd credentials."""
    creds = workdir / "credentials"
    creds.mkdir(mode=0o700)
    for name, value in (("db_password", cast.db_password), ("aes_key", cast.aes_key)):
        (creds / name).write_text(value + "\n", encoding="utf-8")
        (creds / name).chmod(0o600)
    by_env = {"TOOGO_DATABASE_PASSWORD": cast.db_password, "TOOGO_AES_KEY": cast.aes_key}
    by_file = {"CREDENTIALS_DIRECTORY": str(creds)}
    return [daemon_env(by_env if n == 0 else by_file) for n in range(DAEMONS)]


class Run:
    """One simulation: the world, the daemons, the faults, the checks, the figures."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.seed: int = args.seed
        self.seconds = args.minutes * 60
        self.converge_limit: float = args.converge
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.cast = make_cast(self.seed)
        self.plan = schedule.plan(self.seed, self.seconds, DAEMONS, PLATFORMS)
        self.violations: list[str] = []
        self.passed: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.figures: dict[str, Any] = {}
        self.exchanges = Exchanges()
        self.server = PrivateMariaDB(workdir / "db" / "data")
        self.instances: list[Instance] = []
        self.stop_writers = threading.Event()
        self.threads: list[threading.Thread] = []
        self.ports: list[int] = []
        self.loads = [os.getloadavg()[0]]  # 1-minute load average: at the start, checkpoints

    # -- checks ----------------------------------------------------------------------------------

    def record(self, results: checks.Result, where: str) -> None:
        for name, problems in results:
            if problems:
                self.violations += [f"{where}: {name}: {p}" for p in problems]
            else:
                self.passed[name] += 1

    def served(self) -> set[tuple[int, str]]:
        return {(c.account_id, c.record_key) for c in list(self.engine.closes)}

    async def checkpoint(self, where: str) -> checks.Snapshot | None:
        served = self.served()  # before the snapshot: a binding can only follow its close
        try:
            snap = await asyncio.to_thread(checks.read, self.server.port)
        except Exception as exc:  # the server is down or restarting: the next one
            say(f"checkpoint {where} skipped: {type(exc).__name__}")
            self.skipped["checkpoint"] += 1
            return None
        self.record(checks.always(snap, self.initial, served), f"checkpoint {where}")
        return snap

    async def checkpoints(self, every: float) -> None:
        n = 0
        while True:
            await asyncio.sleep(every)
            n += 1
            self.loads.append(os.getloadavg()[0])
            await self.checkpoint(f"#{n}")
            failed = len(self.violations)
            say(f"checkpoint #{n}: {sum(self.passed.values())} checks passed, {failed} violations")

    # -- faults ----------------------------------------------------------------------------------

    async def apply(self, fault: schedule.Fault) -> None:
        kind = fault.kind
        if kind in schedule.DAEMON_FAULTS:
            target = self.instances[int(fault.target.rsplit("-", 1)[1])]
            if not await target.fault(kind, fault.param):
                self.skipped[kind] += 1
                return
        elif kind == "cut_before_commit":
            self.proxy.arm("before")
        elif kind == "cut_after_commit":
            self.proxy.arm("after")
        elif kind == "drop_connections":
            self.figures["connections_dropped"] = (
                self.figures.get("connections_dropped", 0) + self.proxy.drop_all()
            )
        elif kind in schedule.EXCHANGE_FAULTS:
            self.exchanges.inject(fault.target, kind, int(fault.param))
        elif kind == schedule.DB_RESTART:
            await asyncio.to_thread(self.server.kill)
            say(f"database server SIGKILLed; restarting it in {fault.param} s")
            await asyncio.sleep(fault.param)
            await asyncio.to_thread(self.server.start)
            say("database server back")
        self.faults[kind] += 1

    async def inject_faults(self) -> None:
        started = time.monotonic()
        tasks = []
        for fault in self.plan:
            await asyncio.sleep(max(0.0, started + fault.at - time.monotonic()))
            tasks.append(asyncio.create_task(self.apply(fault)))
        await asyncio.sleep(max(0.0, started + self.seconds - time.monotonic()))
        await asyncio.gather(*tasks)

    # -- the run ---------------------------------------------------------------------------------

    async def setup(self) -> None:
        say(f"private MariaDB in {self.server.datadir}")
        from kits.private_mariadb import install_template

        await asyncio.to_thread(install_template, self.server.datadir)
        await asyncio.to_thread(self.server.start)
        admin = self.server.admin()
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{DB_NAME}` CHARACTER SET utf8mb4")
        create_db_user(admin, self.cast.db_password)
        admin.close()
        await self.exchanges.start(self.cast.accounts)
        await create_schema(f"{self.server.url}/{DB_NAME}", self.cast, self.exchanges.urls())
        self.initial = dict(self.cast.initial_power)
        self.engine = Engine(self.server.port, self.cast, self.exchanges, self.seed)
        await asyncio.to_thread(self.engine.backfill, 6, datetime.now(UTC))
        self.go = GoWallet(
            self.server.port, self.cast, self.engine.hot, self.seed, self.engine.counts
        )
        self.proxy = await CommitCutter(self.server.port).__aenter__()
        envs = secret_envs(self.cast, self.workdir)
        for n in range(DAEMONS):
            metrics = free_port()
            self.ports.append(metrics)
            cfg = daemon_config(self.workdir / f"daemon-{n}.yaml", self.proxy.port, metrics)
            self.instances.append(Instance(n, cfg, envs[n], self.logs, ROOT, self.violations))
        self.env0 = envs[0]
        self.ports += [self.proxy.port, self.server.port, *self.exchanges.ports()]

    async def run(self) -> None:
        await self.setup()
        say(f"{len(self.engine.closes)} closes back-filled; starting {DAEMONS} daemons")
        for instance in self.instances:
            instance.launch()
        for instance in self.instances:
            if not await instance.up(120):
                self.violations.append(f"{instance.name} did not start")
                return
        for target in (self.engine.run, self.go.run):
            thread = threading.Thread(target=target, args=(self.stop_writers,), daemon=True)
            thread.start()
            self.threads.append(thread)
        say(f"faults for {self.seconds / 60:g} min: {dict(schedule.by_kind(self.plan))}")
        every = 20.0 if self.seconds <= 180 else 30.0
        ticker = asyncio.create_task(self.checkpoints(every))
        try:
            await self.inject_faults()
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        await self.settle()

    async def settle(self) -> None:
        """Faults off, writers stopped; the daemons catch up; then they stop and a final sync,
        sweep and audit run."""
        self.stop_writers.set()
        for thread in self.threads:
            await asyncio.to_thread(thread.join, 300)
        for writer in (self.engine, self.go):
            if writer.error is not None:
                self.violations.append(f"{type(writer).__name__} failed: {writer.error!r}")
        self.exchanges.clear()
        self.proxy.mode = None
        say(f"faults over; writers stopped; {len(self.engine.closes)} exchange closes in all")
        started = time.monotonic()
        while True:
            snap = await asyncio.to_thread(checks.read, self.server.port)
            results = checks.always(snap, self.initial, self.served())
            results += checks.final(snap, self.engine.closes, self.engine.counts.opened)
            if all(not problems for _, problems in results):
                break
            if time.monotonic() - started > self.converge_limit:
                say(f"not converged after {self.converge_limit:.0f} s")
                break
            await asyncio.sleep(2)
        self.figures["converged_in_s"] = round(time.monotonic() - started, 1)
        self.record(results, "converged")
        for instance in self.instances:
            await instance.stop()
        await self.final_commands()

    async def cli(self, *args: str) -> tuple[int, list[dict[str, Any]], str]:
        name = "-".join(a.lstrip("-") for a in args)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "daemon",
            "--config",
            str(self.instances[0].config),
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env0,
            cwd=ROOT,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 300)
        (self.logs / f"final-{name}.out").write_bytes(out)
        (self.logs / f"final-{name}.err").write_bytes(err)
        lines = [orjson.loads(x) for x in out.splitlines() if x.startswith(b"{")]
        return int(proc.returncode or 0), lines, err.decode(errors="replace")

    async def final_commands(self) -> None:
        for command, summary in (("sync", "history sync summary"), ("sweep", "sweep summary")):
            rc, events, err = await self.cli(command)
            found = [e for e in events if e.get("event") == summary]
            charged = found[-1].get("charged") if found else None
            self.figures[f"final_{command}_charged"] = charged
            problems = (
                [] if rc == 0 and charged == 0 else [f"exit {rc}, charged {charged}: {err[-300:]}"]
            )
            self.record([(f"final {command} exits 0 and finds nothing left", problems)], "final")
        rc, events, err = await self.cli("audit", "--json")
        snap = await asyncio.to_thread(checks.read, self.server.port)
        self.record(checks.always(snap, self.initial, self.served()), "final")
        self.record(checks.final(snap, self.engine.closes, self.engine.counts.opened), "final")
        report = events[-1] if events else {"ok": None, "checks": []}
        overwrites = snap.overwrites()
        if rc != (1 if overwrites else 0):
            self.violations.append(f"final: audit exited {rc} with {len(overwrites)} overwrites")
        self.record(checks.audit_agrees(report, overwrites), "final")
        self.snapshot_figures(snap, events)

    def snapshot_figures(self, snap: checks.Snapshot, audit: list[dict[str, Any]]) -> None:
        legacy = sum(1 for r in snap.ledger if r[7] == LEGACY_REMARK)
        go = sum(1 for r in snap.ledger if (r[7] or "").startswith(GO_REMARK))
        self.figures.update(
            exchange_closes=len(self.engine.closes),
            profitable_closes=sum(c.profitable for c in self.engine.closes),
            consume_rows=len(snap.consumes),
            legacy_charges_in_db=legacy,
            daemon_charges_in_db=len(snap.consumes) - legacy,
            go_writes_in_db=go,
            overwrites_in_db=len(snap.overwrites()),
            orders=len(snap.orders),
            commits_cut=self.proxy.cuts,
            sigterm_to_exit_s=max((t for i in self.instances for t in i.stop_times), default=None),
        )

    # -- the end ---------------------------------------------------------------------------------

    def outputs(self) -> list[Path]:
        return [*sorted(p for p in self.logs.iterdir() if p.is_file()), self.server.log]

    def examine(self) -> None:
        """Once everything stopped: the daemons' lines, the secrets, what was left behind."""
        failed = {stem for i in self.instances for stem in i.failed}
        results, events = aftermath.daemon_outputs(self.logs, failed)
        self.record(results, "outputs")
        self.figures["daemon_events"] = dict(events.most_common())
        self.record(aftermath.leftovers(self.instances, self.threads, self.ports), "teardown")
        sys.stdout.flush()  # the simulation's own log is grepped too
        planted = self.cast.planted()
        self.record(aftermath.secrets_in(self.outputs(), planted), "secrets")
        self.figures["secrets_planted"] = len(planted)
        self.figures["files_grepped"] = len(self.outputs())

    async def teardown(self) -> None:
        for instance in self.instances:
            instance.kill_now()
            if instance._task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(instance._task, 30)
        self.stop_writers.set()
        for thread in self.threads:
            await asyncio.to_thread(thread.join, 60)
        if hasattr(self, "proxy"):
            await self.proxy.__aexit__(None, None, None)
        await self.exchanges.stop()
        await asyncio.to_thread(self.server.terminate)


def report(run: Run, started: float) -> None:
    counts = run.engine.counts if hasattr(run, "engine") else None
    load = os.getloadavg()
    say("== figures ==")
    say(
        f"seed {run.seed}, schedule {schedule.digest(run.plan)}, {run.seconds / 60:g} min of"
        f" faults, {time.monotonic() - started:.0f} s in all, load average"
        f" {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} CPUs; 1-min load at the"
        f" start {run.loads[0]:.2f}, at checkpoints up to {max(run.loads):.2f})"
    )
    if counts is not None:
        say("operations:", json.dumps(vars(counts)))
    say("figures:", json.dumps(run.figures, default=str))
    say(
        "daemon starts:",
        {i.name: (i.starts, i.start_failures) for i in run.instances},
        "(starts, failed starts)",
    )
    say("faults injected:", dict(sorted(run.faults.items())), "skipped:", dict(run.skipped))
    say(f"invariant checks passed: {sum(run.passed.values())}", dict(sorted(run.passed.items())))
    if run.violations:
        say(f"{len(run.violations)} VIOLATION(S) - seed {run.seed}:")
        for violation in run.violations[:60]:
            say("  ", violation)


async def simulate(args: argparse.Namespace, workdir: Path) -> int:
    started = time.monotonic()
    run = Run(args, workdir)
    say(
        f"seed {run.seed}: schedule {schedule.digest(run.plan)}, {len(run.plan)} faults"
        f" over {args.minutes:g} min; work in {workdir}"
    )
    (workdir / "schedule.json").write_text(
        json.dumps([vars(f) for f in run.plan], indent=1), encoding="utf-8"
    )
    try:
        await run.run()
    except Exception as exc:
        traceback.print_exc()
        run.violations.append(f"the simulation itself failed: {exc!r}")
    finally:
        await run.teardown()
        run.examine()
        report(run, started)
    return 1 if run.violations else 0


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=2.0, help="minutes of faults (default 2)")
    p.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    p.add_argument("--workdir", type=Path, help="default: a new temporary folder")
    p.add_argument("--keep", action="store_true", help="keep the work folder after a success")
    p.add_argument(
        "--converge",
        type=float,
        default=300.0,
        help="seconds the daemons get to catch up afterwards (default 300)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    print(f"seed {args.seed}", flush=True)
    if MARIADBD is None or INSTALL_DB is None:
        print("cannot run: mariadbd / mariadb-install-db not found", file=sys.stderr)
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="toogo-sim-"))
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    with (workdir / "logs" / "simulate.log").open("w", encoding="utf-8") as log:
        stdout, stderr = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = Tee(stdout, log), Tee(stderr, log)
        try:
            code = asyncio.run(simulate(args, workdir))
        finally:
            sys.stdout, sys.stderr = stdout, stderr
    if code == 0 and not args.keep and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"logs kept in {workdir}", flush=True)
    print(f"seed {args.seed}: {'ok' if code == 0 else 'FAILED'}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
