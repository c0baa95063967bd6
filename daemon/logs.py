"""structlog set-up: JSON lines on stdout for journald, or console rendering on a terminal.

Events are names, fields are key-value pairs (docs/audit-log.md: the audit line contract).
Decimals are rendered as exact strings. Fields whose names say they are secret are redacted as a
last guard; the code never passes secrets to a logger in the first place. JSON goes through
orjson: the sweep logs one event per charge, and the stdlib encoder cost about as much client
CPU per charge as the database round trips (BENCHMARKS.md).

Every line is an event: the stdlib loggers of the libraries go through the same processors and
renderer, with a ``logger`` field naming their source (``daemon.stdlib_logs``).

Output never blocks the event loop. Lines are queued, in order, to one writer thread that does
the blocking writes, so a reader that stalls (a pipe nobody reads, journald stalled) stalls
that thread only - never a coroutine holding row locks. The logging call itself never blocks
and never drops a line. The queue is bounded where it is safe to wait: the core awaits
``drain_backpressure`` before each transaction (the ``Database``'s pause, wired in
``daemon.runtime.open_core``); with more than ``SOFT_LIMIT`` lines waiting it pauses there -
between transactions, holding no lock - until the writer is down to half. Only code that logs
without ever starting a transaction could push the queue to ``HARD_LIMIT``; lines past it are
counted and the count is written as a ``log lines dropped`` event as soon as the writer has room:
nothing goes silently.

A transaction's audit lines reach the writer in one batch (``BatchedLines``, the core's
``reconcile.charging.lines`` sink as the daemon wires it).

See docs/operations.md (stdout or journald stalls) and docs/audit-log.md.
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
from typing import Any, BinaryIO

import orjson
import structlog
from structlog.typing import EventDict, WrappedLogger

from daemon.stdlib_logs import LEVELS, log_unhandled_exceptions, route_stdlib
from reconcile.charging.lines import ONE_BY_ONE, Events

_SECRET_WORDS = ("password", "secret", "api_key", "apikey", "passphrase", "token", "aes_key")
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


_writer: _Writer | None = None
_paused_since: float | None = None
_batch: _Batch | None = None  # how the logging configured now writes a batch of lines, if it can


class _Batch:
    """How ``BatchedLines`` writes through the logging configured now: a transaction's INFO
    lines through the configured processors in one pass, without a bound logger per line,
    stamped once (they are written at one moment, after the COMMIT) and queued to the writer
    under one lock. The same lines as ``log.info`` gives, but for sharing the timestamp;
    declines (returns False) once structlog has been configured anew (e.g. a test capturing
    logs), so they then go one by one."""

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


class BatchedLines:
    """The audit-line sink the daemon gives the core (``reconcile.charging.lines``): a
    transaction's lines in one batch through the logging configured now, or one by one where
    that cannot take them (console, a stream of its own, structlog configured anew since)."""

    def write(self, logger: Any, events: Events) -> None:
        batch = _batch
        if events and (batch is None or not batch(events)):
            ONE_BY_ONE.write(logger, events)


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
    global _batch
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
    threshold = LEVELS[level]
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
    _batch = None
    if writer is not None:
        route_stdlib(writer.put, shared, foreign_renderer, level)
        if not console:
            _batch = _Batch(chain, stamper, writer, floor)
            log_unhandled_exceptions()


_METHOD_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}


def _drop_below(threshold: int) -> Any:
    def drop(_: WrappedLogger, method: str, event: EventDict) -> EventDict:
        if _METHOD_LEVELS.get(method, logging.INFO) < threshold:
            raise structlog.DropEvent
        return event

    return drop
