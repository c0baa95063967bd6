"""What the core waits for between two transactions - never inside one.

Two things the process around the core may make it wait for, both handed to ``Database`` when it
is built (the daemon wires them in ``daemon.runtime.open_core``); the core itself never imports
that process:

- a ``Pause``: a coroutine function awaited before every transaction attempt. The daemon passes
  its log back-pressure (``daemon.logs.drain_backpressure``): a stalled log reader slows the
  work down between transactions, where no row lock is held. Without one, ``no_pause``.
- ``Availability``: whether the database answers, as a monitor sees it (the daemon's health
  loop). A transaction that lost its connection asks the monitor for a verdict; during an outage
  it waits for the database to come back instead of spending its retries in a second, and the
  attempt that met the outage does not count against the retry budget. While no monitor runs
  (``monitored`` false: before the health loop starts, after it ends) nothing waits for one.

See docs/operations.md (the database goes away; stdout or journald stalls).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator

Pause = Callable[[], Awaitable[None]]


async def no_pause() -> None:
    """The ``Pause`` of a process that has nothing to wait for between transactions."""
    return None


class Availability:
    """The database's state as one monitor reports it: ``report`` after each check.

    ``monitored``: whether a monitor is running. Given ``monitored=False`` (the monitor starts
    later), the monitor's loop runs inside ``monitor()``: transactions wait for its verdicts
    only meanwhile."""

    VERDICT_TIMEOUT = 10.0  # a monitor that does not answer: count the attempt as usual

    def __init__(self, *, monitored: bool = True) -> None:
        self._up = asyncio.Event()
        self._up.set()
        self._wake = asyncio.Event()
        self._checked = asyncio.Condition()
        self._checks = 0
        self.monitored = monitored
        self.reason: str | None = None
        self.since = time.monotonic()

    @contextlib.contextmanager
    def monitor(self) -> Iterator[None]:
        """For the monitor: transactions wait for its verdicts while its loop runs in here."""
        self.monitored = True
        try:
            yield
        finally:
            self.monitored = False

    @property
    def up(self) -> bool:
        return self._up.is_set()

    def report(self, up: bool, reason: str | None = None) -> bool:
        """The monitor's latest check; True when the state changed."""
        changed = up != self.up
        if changed:
            self.since = time.monotonic()
            if up:
                self._up.set()
            else:
                self._up.clear()
        self.reason = None if up else reason
        self._checks += 1
        self._wake.clear()
        asyncio.get_running_loop().create_task(self._notify())
        return changed

    async def _notify(self) -> None:
        async with self._checked:
            self._checked.notify_all()

    async def wait_up(self) -> None:
        if self.monitored:
            await self._up.wait()

    async def woken(self, every: float) -> None:
        """For the monitor: sleep until the next check is due (``every`` seconds) or a
        transaction asks for one."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(every):
                await self._wake.wait()

    async def outage(self) -> bool:
        """After a lost connection: ask the monitor to check now. True when it found the
        database down - and then only once it answers again. False at once while no monitor
        runs."""
        if not self.monitored:
            return False
        if not self.up:
            await self.wait_up()
            return True
        seen = self._checks
        self._wake.set()
        try:
            async with asyncio.timeout(self.VERDICT_TIMEOUT), self._checked:
                await self._checked.wait_for(lambda: self._checks > seen)
        except TimeoutError:
            return False
        if self.up:
            return False
        await self.wait_up()
        return True
