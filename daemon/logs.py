"""structlog set-up: JSON lines on stdout for journald, or console rendering on a terminal.

Events are names, fields are key-value pairs (see DESIGN.md's audit line contract). Decimals are
rendered as exact strings. Fields whose names say they are secret are redacted as a last guard;
the code never passes secrets to a logger in the first place. JSON goes through orjson: the
sweep logs one event per charge, and the stdlib encoder cost about as much client CPU per
charge as the database round trips (BENCHMARKS.md).

Every line is an event: the stdlib loggers of the libraries (APScheduler, asyncio, aiomysql,
SQLAlchemy, ccxt, ``warnings``) go through the same processors and renderer
(``structlog.stdlib.ProcessorFormatter``), with a ``logger`` field naming their source.

Output never blocks the event loop. Lines are queued, in order, to one writer thread that does
the blocking writes, so a reader that stalls (a pipe nobody reads, journald stalled) stalls
that thread only - never a coroutine holding row locks. The logging call itself never blocks
and never drops a line. The queue is bounded where it is safe to wait: the core awaits
``drain_backpressure`` before each transaction (installed into ``reconcile.pacing``); with more
than ``SOFT_LIMIT`` lines waiting it pauses there - between transactions, holding no lock -
until the writer is down to half. Only code that logs without ever starting a transaction could
push the queue to ``HARD_LIMIT``; lines past it are counted and the count is written as a
``log lines dropped`` event as soon as the writer has room: nothing goes silently.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, BinaryIO

import orjson
import structlog
from structlog.typing import EventDict, WrappedLogger

from reconcile.charging import lines
from reconcile.storage import pacing

_SECRET_WORDS = ("password", "secret", "api_key", "apikey", "passphrase", "token", "aes_key")
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
SOFT_LIMIT = 2000  # queued lines above which the core pauses between transactions
HARD_LIMIT = 200_000  # queued lines past which lines are counted as dropped (and reported)
_BATCH = 512  # lines per write
_POLL = 0.05  # seconds between checks while paused

log = structlog.get_logger("daemon.logs")


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


def _dumps_str(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=_default).decode()


class _Writer:
    """One thread writing queued lines to a binary stream, in order."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self._lines: deque[bytes] = deque()
        self._cond = threading.Condition()
        self._writing = 0
        self._dropped = 0
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Lines queued or being written."""
        return len(self._lines) + self._writing

    def put(self, line: bytes) -> None:
        self.put_many([line])

    def put_many(self, lines: list[bytes]) -> None:
        """Queue ``lines`` in order; those past ``HARD_LIMIT`` are counted as dropped."""
        with self._cond:
            room = max(0, HARD_LIMIT - len(self._lines))
            if len(lines) > room:
                self._dropped += len(lines) - room
                lines = lines[:room]
            was_empty = not self._lines
            self._lines.extend(lines)
            if was_empty and self._lines:
                self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._lines and not self._dropped and not self._closing:
                    self._cond.wait()
                if not self._lines and not self._dropped:
                    return  # closing, and everything is written
                take = min(len(self._lines), _BATCH)
                batch = [self._lines.popleft() for _ in range(take)]
                dropped, self._dropped = self._dropped, 0
                self._writing = take
            if dropped:
                batch.append(_dropped_line(dropped))
            try:
                self.out.write(b"".join(batch))
                self.out.flush()
            except (OSError, ValueError):
                pass  # the reader is gone (EPIPE) or the stream closed: nobody left to tell
            with self._cond:
                self._writing = 0
                self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued line is written; False if ``timeout`` ran out first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._lines or self._writing or self._dropped:
                if not self._thread.is_alive():
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self) -> None:
        self.flush()
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()


def _dropped_line(count: int) -> bytes:
    event = {
        "event": "log lines dropped",
        "lines": count,
        "limit": HARD_LIMIT,
        "level": "error",
        "logger": "daemon.logs",
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }
    return orjson.dumps(event) + b"\n"


class _QueueLogger:
    """structlog's final logger: hands the rendered line to the writer, never blocks."""

    def __init__(self, writer: _Writer) -> None:
        self._put = writer.put

    def msg(self, message: str | bytes) -> None:
        line = message.encode() if isinstance(message, str) else message
        self._put(line + b"\n")

    debug = info = warning = warn = error = err = critical = fatal = exception = msg
    failure = log = msg


class _QueueHandler(logging.Handler):
    """The stdlib side: records rendered by a ProcessorFormatter, onto the same queue."""

    def __init__(self, writer: _Writer, formatter: logging.Formatter) -> None:
        super().__init__()
        self._writer = writer
        self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # a broken record must not break the caller
            self.handleError(record)
            return
        self._writer.put(line.encode() + b"\n")


_writer: _Writer | None = None
_paused_since: float | None = None


class _Batch:
    """``reconcile.lines``' batch writer: a transaction's INFO lines through the configured
    processors in one pass, without a bound logger per line, stamped once (they are written at
    one moment, after the COMMIT) and queued to the writer under one lock. The same lines as
    ``log.info`` gives, but for sharing the timestamp; declines (returns False) once structlog
    has been configured anew (e.g. a test capturing logs), so they then go one by one."""

    def __init__(self, chain: list[Any], stamper: Any, writer: _Writer, floor: int) -> None:
        self.chain = chain
        self.stamper = stamper
        self.writer = writer
        self.enabled = floor <= logging.INFO

    def __call__(self, events: Sequence[tuple[str, dict[str, Any]]]) -> bool:
        if structlog.get_config()["processors"] is not self.chain or _writer is not self.writer:
            return False
        if not self.enabled:
            return True  # below the configured level, as the filtering logger drops them
        stamp = self.stamper(None, "info", {})["timestamp"]
        out: list[bytes] = []
        for event, fields in events:
            entry: Any = {**fields, "event": event}
            try:
                for processor in self.chain:
                    if processor is self.stamper:
                        entry["timestamp"] = stamp
                    else:
                        entry = processor(None, "info", entry)
            except structlog.DropEvent:
                continue
            out.append(entry + b"\n")
        self.writer.put_many(out)
        return True


def queued() -> int:
    """Log lines waiting for the writer (for metrics)."""
    return _writer.pending if _writer is not None else 0


def flush(timeout: float | None = None) -> bool:
    """Write out every queued line (at exit, before handing over to another process)."""
    return _writer.flush(timeout) if _writer is not None else True


async def drain_backpressure() -> None:
    """Awaited between transactions: while more than ``SOFT_LIMIT`` lines wait for a stalled
    reader, pause until the writer is down to half. One event when a pause starts, one when it
    ends (they are queued like any other line)."""
    global _paused_since
    writer = _writer
    if writer is None or writer.pending <= SOFT_LIMIT:
        return
    if _paused_since is None:
        _paused_since = time.monotonic()
        log.warning(
            "log output stalled",
            queued=writer.pending,
            limit=SOFT_LIMIT,
            action="pausing between transactions until the reader catches up",
        )
    # the writer is a thread: polling its queue is simpler than waking a loop from it
    while writer.pending > SOFT_LIMIT // 2:  # noqa: ASYNC110
        await asyncio.sleep(_POLL)
    if _paused_since is not None:
        paused, _paused_since = time.monotonic() - _paused_since, None
        log.info("log output resumed", paused_for=round(paused, 3))


def _install_writer(out: BinaryIO) -> _Writer:
    global _writer
    if _writer is not None and _writer.out is out:
        return _writer
    if _writer is not None:
        _writer.close()
    _writer = _Writer(out)
    return _writer


@atexit.register
def _flush_at_exit() -> None:
    # blocking, on purpose: a line the reader has not taken yet is still owed to it
    flush()


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
    A ``stream`` passed in (a file a benchmark reads back) is written synchronously.
    """
    text = sys.stderr if stderr else sys.stdout
    out = stream or text.buffer
    console = fmt == "console" or (fmt == "auto" and text.isatty() and stream is None)
    stamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        stamper,
        _redact,
        structlog.processors.format_exc_info,
        *extra,  # e.g. the metrics counter (daemon.metrics)
    ]
    renderer: Any
    if console:
        renderer = structlog.dev.ConsoleRenderer()
        foreign_renderer: Any = renderer
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)
        foreign_renderer = structlog.processors.JSONRenderer(serializer=_dumps_str)
    if stream is not None:
        factory: Any = structlog.BytesLoggerFactory(stream)
        writer = None
    else:
        writer = _install_writer(out)
        queue_logger = _QueueLogger(writer)

        def factory(*_: Any) -> _QueueLogger:
            return queue_logger

    # Counters among the extra processors (daemon.metrics) must see every event they count,
    # whatever logging.level says: the bound logger lets INFO through to them, and the level
    # is applied after them.
    threshold = _LEVELS[level]
    floor = min(threshold, logging.INFO) if extra else threshold
    chain: list[Any] = (
        [*shared, _drop_below(threshold), renderer]
        if floor < threshold
        else [
            *shared,
            renderer,
        ]
    )
    structlog.configure(
        processors=chain,
        wrapper_class=structlog.make_filtering_bound_logger(floor),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    lines.install(None)
    if writer is not None:
        _route_stdlib(writer, shared, foreign_renderer, level)
        pacing.install(drain_backpressure)
        if not console:
            lines.install(_Batch(chain, stamper, writer, floor))
            sys.excepthook = _log_unhandled
            threading.excepthook = _log_unhandled_thread


_METHOD_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
                  "warn": logging.WARNING, "error": logging.ERROR, "exception": logging.ERROR,
                  "critical": logging.CRITICAL, "fatal": logging.CRITICAL}  # fmt: skip


def _drop_below(threshold: int) -> Any:
    def drop(_: WrappedLogger, method: str, event: EventDict) -> EventDict:
        if _METHOD_LEVELS.get(method, logging.INFO) < threshold:
            raise structlog.DropEvent
        return event

    return drop


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


def _route_stdlib(writer: _Writer, shared: list[Any], renderer: Any, level: str) -> None:
    """Third-party loggers through the same processors, onto the same queue. Their INFO is
    chatter (APScheduler announces every run); WARNING and above are events worth a line."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = _QueueHandler(writer, formatter)
    handler.addFilter(_PoolResetFilter())
    root.addHandler(handler)
    root.setLevel(max(logging.WARNING, _LEVELS[level]))
    logging.captureWarnings(True)
