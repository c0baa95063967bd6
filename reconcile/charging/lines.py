"""How the core writes a transaction's audit lines: together, after its COMMIT.

``write(logger, events)`` logs each ``(event, fields)`` at INFO through structlog, one call per
line, unless the process around the core installed a writer for whole batches (the daemon
does: ``daemon.logs`` renders a transaction's lines in one pass through the same processors,
the sweep writing a page's worth at a time). Either way the lines are the same events with the same
fields; the core itself never imports the daemon.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Events = Sequence[tuple[str, dict[str, Any]]]


def _one_by_one(logger: Any, events: Events) -> None:
    for event, fields in events:
        logger.info(event, **fields)


_batch: Callable[[Events], bool] | None = None


def install(batch: Callable[[Events], bool] | None) -> None:
    """Set (or, with None, reset) the batch writer. It returns False when it cannot take the
    lines (logging was configured anew since), and they then go one by one."""
    global _batch
    _batch = batch


def write(logger: Any, events: Events) -> None:
    """Log ``events`` at INFO, in order."""
    if events and (_batch is None or not _batch(events)):
        _one_by_one(logger, events)
