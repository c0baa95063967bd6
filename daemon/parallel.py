"""A sweep split across processes, for draining a large backlog.

One Python process saturates a core on the client side before the database is busy (the
driver's protocol code and the JSON logs are pure Python; see BENCHMARKS.md), so
``toogo-reconcile sweep --processes N`` runs N sweeps, process k charging the users with
``user_id % N == k``. Their users never overlap, so they never wait for each other's wallet
locks; each is an ordinary sweep with all its guarantees. Each process logs its own
``sweep partition summary``; the parent logs the one ``sweep summary``.

The processes are forked from a fork server (``multiprocessing``'s ``forkserver``) that has
imported this module and everything it needs (daemon.forkserver): the console entry point starts
it before the ``sweep`` command's own imports, so its imports (~0.4 s of CPU) run beside the
parent's start-up instead of once per process after the sweep has begun (BENCHMARKS.md). A
fork server is a fresh single-threaded process: forking it copies no event loop, connection,
lock or log thread.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import select
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import structlog

from daemon import forkserver
from daemon.config import Config
from daemon.logs import configure_logging
from daemon.runtime import open_core
from reconcile.charging.consumer import Source
from reconcile.charging.sweep import SweepSettings, SweepSummary, sweep

log = structlog.get_logger("daemon.parallel")


def _die_with_parent(parent: int) -> None:
    """In each worker process, first: end with the ``sweep`` process ``parent``, however that
    ends (SIGKILL included), instead of charging on as an orphan nobody reads. The worker is the
    fork server's child, so the kernel's parent-death signal cannot say it; a thread waits on a
    pidfd of ``parent`` (Linux; elsewhere it polls) and ends the process."""
    try:
        watched: int | None = os.pidfd_open(parent)
    except ProcessLookupError:  # ended already
        os._exit(1)
    except (AttributeError, OSError):  # no pidfd here
        watched = None
    threading.Thread(
        target=_exit_when_gone, args=(parent, watched), name="parent-watch", daemon=True
    ).start()


def _exit_when_gone(parent: int, pidfd: int | None) -> None:
    if pidfd is not None:
        select.select([pidfd], [], [])  # readable once the process has ended
    else:
        while _alive(parent):
            time.sleep(0.5)
    os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return True


def _partition_sweep(
    config: Config,
    log_format: str,
    partition: tuple[int, int],
    settings: SweepSettings,
) -> SweepSummary:
    configure_logging(log_format, config.logging.level)
    gc.freeze()  # what the fork server imported lives as long as the process (see daemon.cli)

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
    forkserver.start()  # running already when the command came through daemon.entry
    with ProcessPoolExecutor(
        max_workers=processes,
        mp_context=multiprocessing.get_context(forkserver.START_METHOD),
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
