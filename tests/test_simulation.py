"""The seeded fault simulation (``bench/simulate.py``, issue 14) for two minutes of faults, as a
subprocess with a fixed seed: engine and Go wallet writer, five fake exchanges with faults, three
``run`` daemons signalled and restarted, proxy cuts, one database server restart; every invariant
at every checkpoint and at the end, no secret in any output, nothing left running.

No speed is asserted: on a loaded machine the daemons get up to 300 s to catch up after the
faults. The schedule's determinism is checked without running anything."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import replace
from decimal import Decimal as D
from pathlib import Path

import psutil
import pytest

from bench.sim import checks, schedule
from bench.sim.engine import Close
from bench.sim.world import PLATFORMS, make_cast
from kits.databases import REQUIRE_MYSQL
from kits.private_mariadb import INSTALL_DB, MARIADBD

ROOT = Path(__file__).resolve().parents[1]
SEED = 1414
ALL_KINDS = {
    *schedule.DAEMON_FAULTS,
    *schedule.PROXY_FAULTS,
    *schedule.EXCHANGE_FAULTS,
    schedule.DB_RESTART,
}


def test_the_seed_fixes_the_schedule() -> None:
    first = schedule.plan(SEED, 120, 3, PLATFORMS)
    assert first == schedule.plan(SEED, 120, 3, PLATFORMS)
    assert schedule.digest(first) != schedule.digest(schedule.plan(SEED + 1, 120, 3, PLATFORMS))
    kinds = schedule.by_kind(first)
    assert set(kinds) == ALL_KINDS, "a short run still has every kind of fault"
    assert kinds[schedule.DB_RESTART] == 1
    assert all(5 <= f.at <= 115 for f in first)
    assert make_cast(SEED).planted() == make_cast(SEED).planted()


def _failing(results: checks.Result) -> set[str]:
    return {name for name, problems in results if problems}


def test_the_checks_see_what_they_look_for() -> None:
    """A passing simulation means something only if its checks fail on what they look for:
    one clean snapshot, then one fault at a time."""
    clean = checks.Snapshot(
        consumes=[(1, 5001, 10, D("1.2"))],
        ledger=[(1, 5001, "power_consume", D("-1.2"), D(100), D("98.8"), 10, None)],
        wallets={5001: (D("98.8"), D("1.2"), D(5))},
        orders={
            10: (10, 5001, "TO1", 2, D(12), 1, D("1.2")),
            11: (11, 5001, "TO2", 2, D(-3), 0, D(0)),
        },
        bindings=[("okx", 101, "k1", 10, 10, "order"), ("okx", 101, "k2", 11, 11, "order")],
    )
    initial, served = {5001: D(100)}, {(101, "k1"), (101, "k2")}
    closes = [Close("okx", 101, "k1", True, "engine"), Close("okx", 101, "k2", False, "engine")]
    assert not _failing(checks.always(clean, initial, served) + checks.final(clean, closes, 2))

    # a Go-style write that read 100 before the daemon's debit and wrote 100 + 5 over it
    go = (2, 5001, "recharge", D(5), D(100), D(105), None, "sim go-write 1 current 98.8")
    overwritten = replace(
        clean, ledger=[*clean.ledger, go], wallets={5001: (D(105), D("1.2"), D(5))}
    )
    assert not _failing(checks.always(overwritten, initial, served))
    assert overwritten.overwrites() == {2: D("-1.2")}
    example = {"problem": "chain broken", "wallet_log_id": 2}
    chain: dict[str, object] = {"name": "ledger_chain", "violations": 1, "examples": [example]}
    said = {"ok": False, "checks": [chain]}
    assert not _failing(checks.audit_agrees(said, overwritten.overwrites()))
    chain["violations"] = 0
    assert _failing(checks.audit_agrees(said, overwritten.overwrites()))

    def broken(snap: checks.Snapshot) -> set[str]:
        return _failing(checks.always(snap, initial, served) + checks.final(snap, closes, 2))

    unannounced = (2, 5001, "recharge", D(5), D(100), D(105), None, "sim go-write 1 current 100")
    assert "ledger chains break exactly where a Go-style write overwrote" in broken(
        replace(overwritten, ledger=[*clean.ledger, unannounced])
    )
    assert "wallet = start + ledger changes - what overwrites lost" in broken(
        replace(clean, wallets={5001: (D("98.80000001"), D("1.2"), D(5))})
    )
    assert "one consume row per order" in broken(
        replace(clean, consumes=[*clean.consumes, (2, 5001, 10, D("1.2"))])
    )
    assert "charges only for closed profitable orders" in broken(
        replace(clean, consumes=[*clean.consumes, (2, 5001, 11, D("0.3"))])
    )
    assert "each consume row has exactly its ledger debit" in broken(replace(clean, ledger=[]))
    assert "every exchange close has exactly one local order" in broken(
        replace(clean, bindings=clean.bindings[:1])
    )
    unflagged = (10, 5001, "TO1", 2, D(12), 0, D(0))
    assert "every profitable close charged exactly once, no loss charged" in broken(
        replace(clean, orders={**clean.orders, 10: unflagged})
    )


def _requirements() -> None:
    missing = []
    if MARIADBD is None or INSTALL_DB is None:
        missing.append("mariadbd / mariadb-install-db not found")
    if missing:
        if REQUIRE_MYSQL:
            pytest.fail("; ".join(missing))
        pytest.skip("; ".join(missing))


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_two_minutes_of_faults(tmp_path: Path) -> None:
    _requirements()
    workdir = tmp_path / "sim"
    try:
        proc = subprocess.run(
            [
                sys.executable,
                str(ROOT / "bench" / "simulate.py"),
                "--minutes",
                "2",
                "--seed",
                str(SEED),
                "--workdir",
                str(workdir),
            ],
            cwd=ROOT,
            capture_output=True,
            timeout=1700,
        )
        out, err = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
        assert out.startswith(f"seed {SEED}\n")
        assert proc.returncode == 0, out[-8000:] + err[-4000:]
        assert f"seed {SEED}: ok" in out
        # the simulation greps its own logs; grep what it printed and every log from outside too
        planted = make_cast(SEED).planted()
        texts = {"stdout": proc.stdout, "stderr": proc.stderr}
        texts |= {p.name: p.read_bytes() for p in (workdir / "logs").iterdir()}
        leaks = [
            f"{name} in {where}"
            for where, data in texts.items()
            for name, value in planted.items()
            if value.encode() in data
        ]
        assert not leaks
        injected = next(line for line in out.splitlines() if "faults injected:" in line)
        for kind in ALL_KINDS:
            assert f"'{kind}'" in injected, (kind, injected)
    finally:
        # nothing of the run may be left running: no daemon, no database server
        left = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            if str(workdir) in " ".join(p.info["cmdline"] or ()):
                left.append(p)
                p.kill()
        shutil.rmtree(workdir / "db", ignore_errors=True)  # the datadir; the logs stay
    assert not left, [p.info for p in left]
