"""structlog set-up: JSON lines on stdout for journald, or console rendering on a terminal.

Events are names, fields are key-value pairs (see DESIGN.md's audit line contract). Decimals are
rendered as exact strings. Fields whose names say they are secret are redacted as a last guard;
the code never passes secrets to a logger in the first place. JSON goes through orjson: the
sweep logs one event per charge, and the stdlib encoder cost about as much client CPU per
charge as the database round trips (BENCHMARKS.md).
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, BinaryIO

import orjson
import structlog
from structlog.typing import EventDict, WrappedLogger

_SECRET_WORDS = ("password", "secret", "api_key", "apikey", "passphrase", "token", "aes_key")
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


@functools.cache
def _is_secret_name(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def _redact(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    for key in event:
        if _is_secret_name(key):
            event[key] = "**********"
    return event


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    return repr(value) if not isinstance(value, str) else value


def _dumps(obj: Any, **_: Any) -> bytes:
    return orjson.dumps(obj, default=_default)


def configure_logging(
    fmt: str = "auto",
    level: str = "info",
    stream: BinaryIO | None = None,
    *,
    stderr: bool = False,
    extra: Sequence[Any] = (),
) -> None:
    """``fmt``: json | console | auto (console on a terminal). ``stream``: binary, for JSON.

    ``stderr``: log there instead of stdout, for commands whose report is their stdout.
    """
    text = sys.stderr if stderr else sys.stdout
    out = stream or text.buffer
    console = fmt == "console" or (fmt == "auto" and text.isatty() and stream is None)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
        structlog.processors.format_exc_info,
        *extra,  # e.g. the metrics counter (daemon.metrics)
    ]
    if console:
        processors = [*shared, structlog.dev.ConsoleRenderer()]
        factory: Any = structlog.PrintLoggerFactory(text)
    else:
        processors = [*shared, structlog.processors.JSONRenderer(serializer=_dumps)]
        factory = structlog.BytesLoggerFactory(out)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
