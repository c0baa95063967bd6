"""Where the core's audit lines go: a transaction's lines together, after its COMMIT.

The charging code (``PowerConsumer``, ``Corrector``) writes them through the ``AuditLines`` sink
it was built with. ``ONE_BY_ONE``, the default, logs each ``(event, fields)`` at INFO through
structlog, one call per line. The daemon passes its own (``daemon.logs.BatchedLines``, wired in
``daemon.runtime.open_core``): a transaction's lines rendered in one pass through the same
processors, the sweep writing a page's worth at a time. Either way the lines are the same events
with the same fields; the core itself never imports the daemon.

See docs/audit-log.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

Events = Sequence[tuple[str, dict[str, Any]]]


class AuditLines(Protocol):
    """A sink for a transaction's audit lines."""

    def write(self, logger: Any, events: Events) -> None:
        """Log ``events`` at INFO, in order."""


class OneByOne:
    """Each line through ``logger.info``, one call per line."""

    def write(self, logger: Any, events: Events) -> None:
        for event, fields in events:
            logger.info(event, **fields)


ONE_BY_ONE = OneByOne()
