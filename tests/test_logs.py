"""The log writer in a process of its own (it owns the process's stdout and logging set-up):
third-party loggers and unhandled exceptions as JSON events, and a queue that overflows its hard
limit says how many lines it dropped instead of dropping them silently."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
from typing import Any

from tests.procs import cli_env


async def run_script(source: str, *, read_after: float = 0.0) -> tuple[int, list[Any], str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        textwrap.dedent(source),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(),
    )
    await asyncio.sleep(read_after)  # nobody reads stdout meanwhile
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, [json.loads(line) for line in out.decode().splitlines()], err.decode()


async def test_foreign_loggers_warnings_and_crashes_are_json_events() -> None:
    code, events, err = await run_script(
        """
        import logging, warnings
        from daemon.logs import configure_logging
        configure_logging("json", "info")
        logging.getLogger("apscheduler.scheduler").warning("job %s skipped", "x")
        logging.getLogger("aiomysql").info("chatter below WARNING is not shown")
        warnings.warn("something is deprecated", UserWarning, stacklevel=1)
        raise RuntimeError("boom")
        """
    )
    assert code == 1 and err == ""
    by_event = {e["event"]: e for e in events}
    assert by_event["job x skipped"]["logger"] == "apscheduler.scheduler"
    assert by_event["job x skipped"]["level"] == "warning"
    [warned] = [e for e in events if e.get("logger") == "py.warnings"]
    assert "something is deprecated" in warned["event"]
    crash = by_event["unhandled exception"]
    assert crash["level"] == "critical" and "RuntimeError: boom" in crash["exception"]
    assert not [e for e in events if "chatter" in e["event"]]


async def test_past_the_hard_limit_lines_are_counted_and_reported() -> None:
    code, events, err = await run_script(
        """
        import structlog
        from daemon import logs
        logs.HARD_LIMIT = 100
        logs.configure_logging("json", "info")
        log = structlog.get_logger("t")
        for n in range(1000):
            log.info("line", n=n, pad="x" * 1000)
        """,
        read_after=1.0,
    )
    assert code == 0, err
    lines = [e["n"] for e in events if e["event"] == "line"]
    dropped = [e for e in events if e["event"] == "log lines dropped"]  # one per write, if any
    assert lines == sorted(lines) and lines[0] == 0
    assert len(lines) + sum(e["lines"] for e in dropped) == 1000
    assert dropped and all(e["lines"] > 0 and e["level"] == "error" for e in dropped)


async def test_a_transactions_lines_in_one_batch_read_as_one_by_one() -> None:
    """The audit-line sink the daemon wires into the core (``daemon.logs.BatchedLines``): the
    same events, fields, order and redaction as ``log.info`` per line (only the timestamp is
    shared), counted by the extra processors, dropped below the level, and one by one again
    once structlog is reconfigured (a test capturing logs must still see them)."""
    code, events, err = await run_script(
        """
        import json, sys
        from decimal import Decimal
        import structlog
        from daemon import logs
        lines = logs.BatchedLines()  # the audit-line sink the daemon wires into the core
        seen = []
        def count(_, method, event):
            seen.append((method, event["event"]))
            return event
        logs.configure_logging("json", "info", extra=[count])
        log = structlog.get_logger("reconcile.consumer")
        page = [("power consumed", {"order_id": n, "consume_power": Decimal("1.50"),
                 "api_key": "not-for-logs"}) for n in range(3)]
        log.info("before")
        lines.write(log, page)
        log.info("after")
        for n, _ in enumerate(page):
            log.info("power consumed", order_id=n, consume_power=Decimal("1.50"),
                     api_key="not-for-logs")
        with structlog.testing.capture_logs() as captured:
            lines.write(log, page)
        logs.configure_logging("json", "warning")
        lines.write(log, page)  # below the level: nothing
        logs.flush()
        sys.stderr.write(json.dumps({"seen": seen, "captured": len(captured)}))
        """
    )
    assert code == 0
    report = json.loads(err)
    names = [e["event"] for e in events]
    assert names == ["before", *["power consumed"] * 3, "after", *["power consumed"] * 3]
    batch, single = events[1:4], events[5:8]
    assert len({e["timestamp"] for e in batch}) == 1
    strip = [{k: v for k, v in e.items() if k != "timestamp"} for e in (*batch, *single)]
    assert strip[:3] == strip[3:]
    assert [list(e) for e in batch] == [list(e) for e in single]  # same key order
    assert batch[0] == {**batch[0], "order_id": 0, "consume_power": "1.50", "level": "info"}
    assert all(e["api_key"] == "**********" for e in batch)
    assert [tuple(s) for s in report["seen"]].count(("info", "power consumed")) == 6
    assert report["captured"] == 3


async def test_a_failed_pool_reset_is_a_warning_without_a_traceback() -> None:
    """SQLAlchemy's own logger and message (sqlalchemy/pool/base.py) for a connection it could
    not roll back on its way back to the pool: a warning naming the error, no traceback; other
    SQLAlchemy errors keep theirs."""
    code, events, err = await run_script(
        """
        import logging
        from daemon.logs import configure_logging
        configure_logging("json", "info")
        pool = logging.getLogger("sqlalchemy.pool.impl.AsyncAdaptedQueuePool")
        try:
            raise ConnectionResetError("Connection lost")
        except ConnectionResetError:
            pool.error("Exception during reset or similar", exc_info=True)
            pool.error("something else", exc_info=True)
        """
    )
    assert code == 0, err
    reset, other = events
    assert reset["level"] == "warning" and "exception" not in reset
    assert reset["event"] == (
        "database connection discarded by the pool (its reset failed): "
        "ConnectionResetError: Connection lost"
    )
    assert other["level"] == "error" and "ConnectionResetError" in other["exception"]
