"""A sweep split across processes, for draining a large backlog.

One Python process saturates a core on the client side before the database is busy (the
driver's protocol code and the JSON logs are pure Python; see BENCHMARKS.md), so
``toogo-reconcile sweep --processes N`` runs N sweeps, process k charging the users with
``user_id % N == k``. Their users never overlap, so they never wait for each other's wallet
locks; each is an ordinary sweep with all its guarantees. Each process logs its own
``sweep partition summary``; the command logs the one ``sweep summary``.

The workers are forked from the ``sweep`` command itself (``Workers.fork``) as soon as it has
read its configuration: before it opens the database, sets up logging or starts a thread or an
event loop, so a fork copies none of them, and the imports are shared instead of run again. They
then wait while the command checks the schema, reads the power rules and sizes the backlog
(daemon.sweep_plan), and receive what it found (``Share``): the split, the schema state and the
power rules, which they do not read again. When the pass runs in one process after all, the
command closes their pipes and they exit. Each watches the ``sweep`` process (a pidfd) and ends
with it however it ends, SIGKILL included. See docs/configuration.md ("Sweep processes").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import select
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from types import TracebackType

import structlog

from daemon import logs
from daemon.config import Config
from daemon.runtime import Core, open_core
from reconcile.charging.outcomes import Source
from reconcile.charging.pricing import PowerRules
from reconcile.charging.sweep import SweepSettings, SweepSummary, sweep
from reconcile.storage.contract import LiveSchema

log = structlog.get_logger("daemon.parallel")


@dataclass(frozen=True)
class Share:
    """What a worker is sent once the command has planned the pass: the command's configuration
    and settings, the worker's part of the split, and what the command found, for the worker's
    core (``open_core``) to take as it is."""

    config: Config
    log_format: str
    settings: SweepSettings
    partition: tuple[int, int]  # (k, n): the users with user_id % n == k
    schema: LiveSchema
    rules: PowerRules


@dataclass
class _Worker:
    pid: int
    share: int  # the write end of the pipe the worker reads its share from (-1: closed)
    result: int  # the read end of the pipe it writes its pickled outcome to (-1: closed)


class Workers:
    """Worker processes forked from the ``sweep`` command, each waiting for its share."""

    def __init__(self, workers: list[_Worker]) -> None:
        self._workers = workers

    @classmethod
    def fork(cls, count: int) -> Workers:
        """Fork ``count`` workers (none for a ``count`` below 2), each running the share it is
        sent. Call before any thread or event loop exists in this process."""
        workers: list[_Worker] = []
        if count < 2:
            return cls(workers)
        parent = os.getpid()
        for _ in range(count):
            share_r, share_w = os.pipe()
            result_r, result_w = os.pipe()
            pid = os.fork()
            if pid == 0:  # the worker: never returns into the command
                for fd in (share_w, result_r, *(f for w in workers for f in (w.share, w.result))):
                    os.close(fd)
                _work(parent, share_r, result_w)
            os.close(share_r)
            os.close(result_w)
            workers.append(_Worker(pid, share_w, result_r))
        return cls(workers)

    def __len__(self) -> int:
        return len(self._workers)

    def __enter__(self) -> Workers:
        return self

    def __exit__(
        self, exc: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.dismiss()
        for worker in self._workers:
            if worker.result >= 0:
                os.close(worker.result)
                worker.result = -1
            with contextlib.suppress(ChildProcessError):  # reaped already
                os.waitpid(worker.pid, 0)

    def dismiss(self) -> None:
        """Tell every worker not sent a share yet to exit (its pipe ends without one)."""
        for worker in self._workers:
            if worker.share >= 0:
                os.close(worker.share)
                worker.share = -1

    async def sweep(
        self,
        config: Config,
        log_format: str,
        settings: SweepSettings,
        core: Core,
        *,
        processes: int,
    ) -> SweepSummary:
        """The pass split over the first ``processes`` workers (at most as many as were forked),
        each given ``core``'s schema state and power rules; logs the ``sweep summary``."""
        started = time.monotonic()
        running = self._workers[:processes]
        processes = len(running)
        for k, worker in enumerate(running):
            share = Share(
                config,
                log_format,
                settings,
                (k, processes),
                core.schema,
                core.consumer.rules,
            )
            _send(worker.share, pickle.dumps(share))
            os.close(worker.share)
            worker.share = -1
        self.dismiss()
        outcomes = await asyncio.gather(*(asyncio.to_thread(_outcome, w) for w in running))
        total = SweepSummary()
        for outcome in outcomes:
            if isinstance(outcome, BaseException):  # the command's, as in one process
                raise outcome
            total.merge(outcome)
        total.elapsed = round(time.monotonic() - started, 3)
        log.info("sweep summary", source=str(Source.SWEEP), processes=processes, **total.figures())
        return total


def partition_sweep(share: Share) -> SweepSummary:
    """A worker's pass: its users only, on a core that takes the command's schema and rules."""
    logs.configure_logging(share.log_format, share.config.logging.level)

    async def job() -> SweepSummary:
        async with open_core(share.config, schema=share.schema, rules=share.rules) as core:
            return await sweep(
                core.consumer,
                share.settings,
                partition=share.partition,
                source=Source.SWEEP,
                summary_event="sweep partition summary",
            )

    return asyncio.run(job())


def _work(parent: int, share_r: int, result_w: int) -> None:
    """The worker's life: wait for a share, run it, send back the summary or the exception."""
    code = 1
    try:
        _die_with_parent(parent)
        received = _receive(share_r)
        if not received:  # the pass runs in fewer processes: not needed
            code = 0
            return
        try:
            data = pickle.dumps(partition_sweep(pickle.loads(received)))  # noqa: S301 - ours
        except BaseException as exc:  # sent to the command, which raises it
            data = _pickled(exc)
        _send(result_w, data)
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        logs.flush()
        sys.stderr.flush()
        os._exit(code)


def _pickled(exc: BaseException) -> bytes:
    try:
        return pickle.dumps(exc)
    except Exception:  # an exception that does not pickle: its text
        return pickle.dumps(RuntimeError("".join(traceback.format_exception(exc))))


def _outcome(worker: _Worker) -> SweepSummary | BaseException:
    """A worker's summary or exception, once it has ended (blocking: run in a thread)."""
    received = _receive(worker.result)
    worker.result = -1
    _, status = os.waitpid(worker.pid, 0)
    if not received:
        return RuntimeError(f"sweep worker {worker.pid} ended without a summary (status {status})")
    outcome: SweepSummary | BaseException = pickle.loads(received)  # noqa: S301 - our child's
    return outcome


def _send(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _receive(fd: int) -> bytes:
    """Everything written to the pipe ``fd`` until its writer closes it; closes ``fd``."""
    chunks = []
    try:
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def _die_with_parent(parent: int) -> None:
    """In each worker, first: end with the ``sweep`` process ``parent``, however that ends
    (SIGKILL included), instead of charging on as an orphan nobody reads. A thread waits on a
    pidfd of ``parent`` (Linux; elsewhere it polls) and ends the process."""
    try:
        watched: int | None = os.pidfd_open(parent)
    except ProcessLookupError:  # ended already
        os._exit(1)
    except (AttributeError, OSError):  # no pidfd here
        watched = None
    threading.Thread(
        target=_exit_when_gone, args=(parent, watched), name="parent-watch", daemon=True
    ).start()


def _exit_when_gone(parent: int, pidfd: int | None) -> None:
    if pidfd is not None:
        select.select([pidfd], [], [])  # readable once the process has ended
    else:
        while _alive(parent):
            time.sleep(0.5)
    os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return True
