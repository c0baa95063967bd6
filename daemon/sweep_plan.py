"""How many processes one ``sweep`` command runs in (``sweep.processes``, ``--processes``).

Decided in two steps. Before the database is opened, ``most_processes``: the most the pass may
use, so that as many workers can be forked from the command before it opens anything
(daemon.parallel). Once it is open, ``processes_for``: how many it does use. ``auto`` splits
only a backlog worth the workers: one process per core, at most ``AUTO_PROCESSES_MAX``, when at
least ``AUTO_PROCESSES_FROM`` eligible orders wait in the look-back, else one. A split needs
``SKIP LOCKED`` (MariaDB >= 10.6, MySQL 8, PostgreSQL): SQLite and older servers sweep in one
process. See docs/configuration.md ("Sweep processes").
"""

from __future__ import annotations

import os
from pathlib import Path

from daemon.config import load_config
from daemon.runtime import Core
from reconcile.charging.sweep import SweepSettings, backlog_at_least
from reconcile.errors import ConfigError
from reconcile.storage.dialect import Dialect

AUTO_PROCESSES_MAX = 4  # processes ``sweep.processes: auto`` may start
#: ... once the look-back holds this many eligible orders: one process keeps a core busy in the
#: driver's protocol code and the JSON lines before the database is; measured on 2 cores, two
#: processes drew level with one at 50,000 orders (BENCHMARKS.md)
AUTO_PROCESSES_FROM = 50_000


def auto_processes(cores: int) -> int:
    """How many processes ``sweep.processes: auto`` starts for a large backlog: one per core,
    at most ``AUTO_PROCESSES_MAX``."""
    return max(1, min(cores, AUTO_PROCESSES_MAX))


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0))


def most_processes(config_file: Path, *, required: bool, fixed: int | None) -> int:
    """Before anything is opened: the most processes the pass may run in (1: no workers), from
    the configuration file and ``fixed`` (``--processes``). An unreadable configuration gives 1:
    the command reports it when it loads the file itself."""
    try:
        config = load_config(config_file, required=required)
    except ConfigError:
        return 1
    backend = config.database_settings().sqlalchemy_url().get_backend_name()
    if not Dialect.for_backend(backend).concurrent:  # one writer: never split
        return 1
    fixed = fixed or config.sweep.process_count()
    return fixed if fixed is not None else auto_processes(cores())


async def processes_for(core: Core, settings: SweepSettings, fixed: int | None) -> int:
    """Once the database is open: how many processes the pass runs in. ``fixed``: the number
    ``--processes`` or ``sweep.processes`` gives; None for ``auto``."""
    if not core.db.skip_locked:  # the processes would queue behind each other's pages
        return 1
    if fixed is not None:
        return fixed
    most = auto_processes(cores())
    if most > 1 and await backlog_at_least(core.consumer, settings, AUTO_PROCESSES_FROM):
        return most
    return 1
