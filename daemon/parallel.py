"""A sweep split across processes, for draining a large backlog.

One Python process saturates a core on the client side before the database is busy (the
driver's protocol code and the JSON logs are pure Python; see BENCHMARKS.md), so
``toogo-reconcile sweep --processes N`` runs N sweeps, process k charging the users with
``user_id % N == k``. Their users never overlap, so they never wait for each other's wallet
locks; each is an ordinary sweep with all its guarantees. Each process logs its own
``sweep partition summary``; the parent logs the one ``sweep summary``.
"""

from __future__ import annotations

import asyncio
import ctypes
import multiprocessing
import os
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import structlog

from daemon.config import Config
from daemon.logs import configure_logging
from daemon.runtime import open_core
from reconcile.consumer import Source
from reconcile.sweep import SweepSettings, SweepSummary, sweep

log = structlog.get_logger("daemon.parallel")


def _die_with_parent(parent: int) -> None:
    """In each worker process, first: end with the ``sweep`` process that started it, however
    that ends (SIGKILL included), instead of charging on as an orphan nobody reads."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


_PR_SET_PDEATHSIG = 1


def _partition_sweep(
    config: Config,
    log_format: str,
    partition: tuple[int, int],
    settings: SweepSettings,
) -> SweepSummary:
    configure_logging(log_format, config.logging.level)

    async def job() -> SweepSummary:
        async with open_core(config) as core:
            return await sweep(
                core.consumer,
                settings,
                partition=partition,
                source=Source.SWEEP,
                summary_event="sweep partition summary",
            )

    return asyncio.run(job())


async def sweep_in_processes(
    config: Config,
    settings: SweepSettings,
    *,
    processes: int,
    log_format: str,
) -> SweepSummary:
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=processes,
        mp_context=context,
        initializer=_die_with_parent,
        initargs=(os.getpid(),),
    ) as pool:
        parts = await asyncio.gather(
            *(
                loop.run_in_executor(
                    pool,
                    _partition_sweep,
                    config,
                    log_format,
                    (k, processes),
                    settings,
                )
                for k in range(processes)
            )
        )
    total = SweepSummary()
    for part in parts:
        total.merge(part)
    total.elapsed = round(time.monotonic() - started, 3)
    log.info("sweep summary", source=str(Source.SWEEP), processes=processes, **total.figures())
    return total
