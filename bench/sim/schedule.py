"""The fault schedule: every fault of a run, drawn from the seed before anything starts.

The same seed and duration give the same list (kind, target, time, parameter), so a failing run
is replayed with ``--seed``; what the faults hit still depends on timing (which transaction a cut
meets), which no seed can fix. Every kind is drawn at least once, however short the run.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import asdict, dataclass

#: signals to a daemon: parameter = seconds stopped (sigstop) or before the restart
DAEMON_FAULTS = ("sigkill", "sigstop", "sigterm")
#: through the TCP proxy between the daemons and the database
PROXY_FAULTS = ("cut_before_commit", "cut_after_commit", "drop_connections")
#: served by a fake exchange on its closed-positions endpoint: parameter = requests hit
EXCHANGE_FAULTS = ("http_429", "http_5xx", "html", "timeout", "slow", "disconnect")
#: once per run: SIGKILL the database server, start it again after ``param`` seconds
DB_RESTART = "db_restart"

#: faults per minute of each family, on top of one of every kind
RATES = {"daemon": 3.0, "proxy": 2.0, "exchange": 8.0}


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the start of the fault phase
    kind: str
    target: str  # "daemon-0".., a platform, "proxy", "db"
    param: float


def plan(seed: int, seconds: float, daemons: int, platforms: tuple[str, ...]) -> list[Fault]:
    """The run's faults in time order. The database restart falls in the middle third; no
    fault in the first or last 5 s."""
    rnd = random.Random(seed)
    lo, hi = 5.0, max(6.0, seconds - 5.0)

    def daemon(kind: str) -> Fault:
        target = f"daemon-{rnd.randrange(daemons)}"
        param = rnd.uniform(1, 6) if kind == "sigstop" else rnd.uniform(0.5, 3)
        return Fault(rnd.uniform(lo, hi), kind, target, round(param, 2))

    def proxy(kind: str) -> Fault:
        return Fault(rnd.uniform(lo, hi), kind, "proxy", 1)

    def exchange(kind: str) -> Fault:
        return Fault(rnd.uniform(lo, hi), kind, rnd.choice(platforms), rnd.randint(1, 4))

    faults = [daemon(k) for k in DAEMON_FAULTS]
    faults += [proxy(k) for k in PROXY_FAULTS]
    faults += [exchange(k) for k in EXCHANGE_FAULTS]
    minutes = seconds / 60
    for family, kinds, make in (
        ("daemon", DAEMON_FAULTS, daemon),
        ("proxy", PROXY_FAULTS, proxy),
        ("exchange", EXCHANGE_FAULTS, exchange),
    ):
        extra = max(0, round(RATES[family] * minutes) - len(kinds))
        faults += [make(rnd.choice(kinds)) for _ in range(extra)]
    third = (hi - lo) / 3
    faults.append(
        Fault(
            rnd.uniform(lo + third, lo + 2 * third), DB_RESTART, "db", round(rnd.uniform(5, 12), 2)
        )
    )
    return sorted(faults, key=lambda f: (f.at, f.kind, f.target))


def digest(faults: list[Fault]) -> str:
    """A short fingerprint of the schedule: two runs with the same seed print the same one."""
    body = json.dumps([asdict(f) for f in faults], sort_keys=True).encode()
    return hashlib.sha256(body).hexdigest()[:16]


def by_kind(faults: list[Fault]) -> Counter[str]:
    return Counter(f.kind for f in faults)
