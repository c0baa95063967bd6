"""The libraries' stdlib logging as events: APScheduler, asyncio, aiomysql, SQLAlchemy, ccxt and
``warnings`` go through the same processors and renderer as structlog's own lines
(``structlog.stdlib.ProcessorFormatter``), with a ``logger`` field naming their source, onto the
same queue (``daemon.logs``); unhandled exceptions, of the main thread and of others, are
``critical`` events too.

See docs/audit-log.md.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

import structlog

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class _QueueHandler(logging.Handler):
    """The stdlib side: records rendered by a ProcessorFormatter, onto the writer's queue."""

    def __init__(self, put: Callable[[bytes], None], formatter: logging.Formatter) -> None:
        super().__init__()
        self._put = put
        self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # a broken record must not break the caller
            self.handleError(record)
            return
        self._put(line.encode() + b"\n")


class _PoolResetFilter(logging.Filter):
    """SQLAlchemy's pool logs ``Exception during reset or similar`` at ERROR with a traceback
    when it cannot roll back a connection being returned (cut by the network, the server gone).
    The transaction that used it had ended, and the pool discards the connection: a warning
    with the error, not a traceback that pages somebody."""

    MESSAGE = "Exception during reset or similar"  # sqlalchemy/pool/base.py, _finalize_fairy

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("sqlalchemy.pool") and record.msg == self.MESSAGE:
            exc = record.exc_info[1] if record.exc_info else None
            record.msg = "database connection discarded by the pool (its reset failed): %s"
            record.args = (f"{type(exc).__name__}: {exc}" if exc else "no error given",)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


def route_stdlib(
    put: Callable[[bytes], None], shared: list[Any], renderer: Any, level: str
) -> None:
    """Third-party loggers through the same processors, onto the same queue (``put``). Their
    INFO is chatter (APScheduler announces every run); WARNING and above are events worth a
    line."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = _QueueHandler(put, formatter)
    handler.addFilter(_PoolResetFilter())
    root.addHandler(handler)
    root.setLevel(max(logging.WARNING, LEVELS[level]))
    logging.captureWarnings(True)


def log_unhandled_exceptions() -> None:
    """Unhandled exceptions (the main thread's, other threads') as ``critical`` events."""
    sys.excepthook = _log_unhandled
    threading.excepthook = _log_unhandled_thread


def _log_unhandled(
    kind: type[BaseException], value: BaseException, tb: TracebackType | None
) -> None:
    structlog.get_logger("daemon").critical("unhandled exception", exc_info=(kind, value, tb))


def _log_unhandled_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is not None:
        structlog.get_logger("daemon").critical(
            "unhandled exception in thread",
            thread=getattr(args.thread, "name", None),
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        )
