"""The console entry point (``toogo-reconcile``, ``python -m daemon``): the command line of
daemon.cli. See docs/operations.md."""

from __future__ import annotations

from daemon.cli import main as cli_main


def main() -> None:
    cli_main()
