"""structlog set-up: JSON lines on stdout for journald, or console rendering on a terminal.

Events are names, fields are key-value pairs (see DESIGN.md's audit line contract). Decimals are
rendered as exact strings. Fields whose names say they are secret are redacted as a last guard;
the code never passes secrets to a logger in the first place.
"""

from __future__ import annotations

import json
import logging
import sys
from decimal import Decimal
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, WrappedLogger

_SECRET_WORDS = ("password", "secret", "api_key", "apikey", "passphrase", "token", "aes_key")
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _redact(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    for key in event:
        if any(word in key.lower() for word in _SECRET_WORDS):
            event[key] = "**********"
    return event


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    return str(value)


def _dumps(obj: Any, **kw: Any) -> str:
    return json.dumps(obj, default=_default, ensure_ascii=False, separators=(",", ":"))


def configure_logging(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    out = stream or sys.stdout
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer()
        if console
        else structlog.processors.JSONRenderer(serializer=_dumps)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
