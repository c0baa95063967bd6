"""The fork server the ``sweep`` command's worker processes are forked from (daemon.parallel).

Kept free of the daemon's own imports: the console entry point (daemon.entry) starts it before
importing the rest, so the fork server's imports (~0.4 s of CPU) run beside the parent's.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver

START_METHOD = "forkserver"
PRELOAD = ["daemon.parallel"]  # the workers' code, and through it everything a worker runs


def start() -> None:
    """Start the fork server if it is not running; it imports ``PRELOAD`` in the background
    while the caller goes on, and ends once the caller and every worker have ended."""
    multiprocessing.get_context(START_METHOD).set_forkserver_preload(PRELOAD)
    multiprocessing.forkserver.ensure_running()
