"""The console entry point (``toogo-reconcile``, ``python -m daemon``).

For ``sweep``, the fork server its worker processes may need is started first (daemon.forkserver),
before the command line is parsed and the daemon imported, so that its imports overlap this
process's. Where the sweep then runs in one process (``sweep.processes`` 1, a small backlog,
SQLite), the fork server idles and ends with the command.
"""

from __future__ import annotations

import sys


def main() -> None:
    if "sweep" in sys.argv[1:]:
        from daemon import forkserver

        forkserver.start()
    from daemon.cli import main as cli_main

    cli_main()
