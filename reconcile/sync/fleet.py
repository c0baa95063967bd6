"""Several daemons share the API accounts through the database: one poll per account per interval.

Each API account with running robots has a row in ``toogo_reconcile_poll``: when it may next be
polled (``due_at``), which daemon holds it (``owner``: host:pid:random) and until when
(``lease_until``), and when its last poll started (``polled_at``). Every daemon ticks (``tick``,
1 s) and *claims* due accounts whose lease is free or expired, in one short transaction
(``SELECT … ORDER BY due_at LIMIT n FOR UPDATE SKIP LOCKED``, then one ``UPDATE``), polls them,
and *releases* each one in the transaction that advances its cursors.

The claim itself moves ``due_at`` to the claim's time plus one interval, so the database decides
"polled twice in one interval" in the transaction that claims: a daemon dying after its request
went out leaves the account due one interval after that claim, never sooner. The lease
(``lease``, by default half the interval) only stops a second daemon while a poll runs; it is
renewed every third of itself while polls run, and a daemon stops starting an account's next stream
once its lease has lapsed by its own clock (measured from before the claim was sent, so never
later than the database's). A dead daemon's accounts are claimed again at their due time (within
one interval of their last claim), a live one's slow poll is never taken over.

Every time is the database server's clock in UTC (``UTC_TIMESTAMP(6)``, PostgreSQL's
``statement_timestamp()``): the hosts' clocks may disagree, the server's is one.

The embedded SQLite default runs one instance: it has no schedule (:class:`PollLeases` is not
used with it).
See docs/operations.md.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import Collection, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import DateTime, Select, literal_column, select, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from reconcile.errors import ReconcileError
from reconcile.storage.db import Database
from reconcile.storage.schema import poll_schedule

log = structlog.get_logger("reconcile.fleet")

#: ``due_at`` of an account without running robots: never due until a robot runs again
RETIRED = datetime(9999, 1, 1)
#: rows per statement when a list of accounts is written or read by id
CHUNK = 500


def daemon_id() -> str:
    """This process, unique among the daemons sharing a database: host, pid, random."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"


def chunks(ids: Sequence[int], size: int = CHUNK) -> Iterable[list[int]]:
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])


class PollLeases:
    """The shared poll schedule seen from one daemon: claims, renewals, releases.

    Statement methods take the caller's connection, so a claim can read what it claimed in the
    same transaction; :meth:`hold` records a committed claim locally (call it after COMMIT).
    """

    def __init__(
        self,
        db: Database,
        *,
        interval: timedelta,
        lease: timedelta,
        owner: str | None = None,
    ) -> None:
        if not db.dialect.concurrent:
            raise ValueError("the poll schedule is for MySQL/MariaDB and PostgreSQL")
        if not timedelta(0) < lease < interval:
            raise ValueError("the lease must be shorter than the interval")
        self.db = db
        self.interval = interval
        self.lease = lease
        self.owner = owner or daemon_id()
        #: accounts this daemon holds -> the monotonic time its lease lapses, by its own clock
        self.held: dict[int, float] = {}
        self._pg = db.dialect.is_postgresql

    # -- the server's clock ---------------------------------------------------------------------

    def _now(self) -> ColumnElement[datetime]:
        sql = "timezone('UTC', statement_timestamp())" if self._pg else "UTC_TIMESTAMP(6)"
        return literal_column(sql, DateTime())

    def _later(self, span: timedelta) -> ColumnElement[datetime]:
        us = int(span / timedelta(microseconds=1))  # an int from the settings: nothing injected
        if self._pg:
            sql = f"timezone('UTC', statement_timestamp()) + interval '{us} microseconds'"
        else:
            sql = f"UTC_TIMESTAMP(6) + INTERVAL {us} MICROSECOND"
        return literal_column(sql, DateTime())

    def _after_last_poll(self) -> ColumnElement[datetime]:
        """Now, or one interval after the last poll started if that is later."""
        us = int(self.interval / timedelta(microseconds=1))
        if self._pg:
            now = "timezone('UTC', statement_timestamp())"
            last = f"polled_at + interval '{us} microseconds'"
        else:
            now, last = "UTC_TIMESTAMP(6)", f"polled_at + INTERVAL {us} MICROSECOND"
        return literal_column(f"GREATEST(COALESCE({last}, {now}), {now})", DateTime())

    def _locking(self, stmt: Select[Any]) -> Select[Any]:
        # without SKIP LOCKED (MariaDB < 10.6, MySQL < 8.0.1) claimers queue for a few ms
        return stmt.with_for_update(skip_locked=self.db.skip_locked)

    def _free(self) -> ColumnElement[bool]:
        p = poll_schedule.c
        return p.lease_until.is_(None) | (p.lease_until <= self._now())

    # -- the accounts on the schedule -----------------------------------------------------------

    async def refresh(self, running: Collection[int]) -> tuple[int, int]:
        """Put the accounts with running robots on the schedule (a new one is due at once), take
        the others off (``due_at`` = :data:`RETIRED`); racing daemons are decided by the primary
        key. Once per interval; (added, retired)."""
        p = poll_schedule.c
        wanted = set(running)

        async def write(conn: AsyncConnection) -> tuple[int, int]:
            rows = {
                int(r.account_id): r.due_at >= RETIRED
                for r in await conn.execute(select(p.account_id, p.due_at))
            }
            new = sorted(wanted - rows.keys())
            gone = sorted(a for a, retired in rows.items() if not retired and a not in wanted)
            back = sorted(a for a, retired in rows.items() if retired and a in wanted)
            await self.register(conn, new)
            for ids in chunks(gone):
                await conn.execute(
                    update(poll_schedule)
                    .where(p.account_id.in_(ids), p.due_at < RETIRED)
                    .values(due_at=RETIRED)
                )
            for ids in chunks(back):  # due again, but never sooner than its last poll allows
                await conn.execute(
                    update(poll_schedule)
                    .where(p.account_id.in_(ids), p.due_at >= RETIRED)
                    .values(due_at=self._after_last_poll())
                )
            return len(new), len(gone)

        return await self.db.transaction(write, what="refresh the poll schedule")

    async def register(self, conn: AsyncConnection, account_ids: Sequence[int]) -> None:
        """Insert-if-absent: a new account is due now; an existing row is left alone."""
        insert = self.db.dialect.upsert(poll_schedule, key=("account_id",))
        for ids in chunks(sorted(set(account_ids))):
            await conn.execute(insert.values(due_at=self._now()), [{"account_id": a} for a in ids])

    # -- claims ---------------------------------------------------------------------------------

    async def claim_due(self, conn: AsyncConnection, limit: int) -> list[int]:
        """Up to ``limit`` due accounts whose lease is free or expired, oldest due first, now
        this daemon's: their next poll is due one interval from now."""
        p = poll_schedule.c
        stmt = (
            select(p.account_id)
            .where(p.due_at <= self._now(), self._free())
            .order_by(p.due_at)
            .limit(limit)
        )
        ids = [int(a) for a in (await conn.execute(self._locking(stmt))).scalars()]
        await self._take(conn, ids, schedule=True)
        return ids

    async def claim(
        self, conn: AsyncConnection, account_ids: Sequence[int], *, schedule: bool
    ) -> list[int]:
        """Those of ``account_ids`` whose lease is free or expired, due or not (a one-shot
        sync, a quarantine retry); registered first. ``schedule``: the claim is a poll, so the
        next is due one interval from now."""
        await self.register(conn, account_ids)
        p = poll_schedule.c
        got: list[int] = []
        for ids in chunks(sorted(set(account_ids))):
            stmt = select(p.account_id).where(p.account_id.in_(ids), self._free())
            got += [int(a) for a in (await conn.execute(self._locking(stmt))).scalars()]
        await self._take(conn, got, schedule=schedule)
        return got

    async def _take(self, conn: AsyncConnection, ids: list[int], *, schedule: bool) -> None:
        values: dict[str, Any] = {"owner": self.owner, "lease_until": self._later(self.lease)}
        if schedule:
            values |= {"due_at": self._later(self.interval), "polled_at": self._now()}
        for part in chunks(ids):
            await conn.execute(
                update(poll_schedule).where(poll_schedule.c.account_id.in_(part)).values(values)
            )

    def hold(self, account_ids: Iterable[int], since: float) -> None:
        """Record committed claims; ``since``: ``time.monotonic()`` before the claim was sent."""
        for account_id in account_ids:
            self.held[account_id] = since + self.lease.total_seconds()

    def valid(self, account_id: int) -> bool:
        """Whether this daemon still holds the account's lease, by its own clock."""
        return time.monotonic() < self.held.get(account_id, 0.0)

    # -- releases and renewals ------------------------------------------------------------------

    async def release(self, conn: AsyncConnection, account_ids: Sequence[int]) -> None:
        """Free the leases this daemon still holds on ``account_ids`` (``due_at`` stays)."""
        p = poll_schedule.c
        for ids in chunks(list(account_ids)):
            await conn.execute(
                update(poll_schedule)
                .where(p.account_id.in_(ids), p.owner == self.owner)
                .values(owner=None, lease_until=None)
            )

    def forget(self, account_ids: Iterable[int]) -> None:
        for account_id in account_ids:
            self.held.pop(account_id, None)

    async def renew(self) -> None:
        """Extend every lease this daemon holds; an account another daemon took over meanwhile
        (this one stalled past its lease) is dropped from ``held``."""
        ids = sorted(self.held)
        if not ids:
            return
        p = poll_schedule.c
        since = time.monotonic()

        async def write(conn: AsyncConnection) -> list[int]:
            kept: list[int] = []
            for part in chunks(ids):
                await conn.execute(
                    update(poll_schedule)
                    .where(p.account_id.in_(part), p.owner == self.owner)
                    .values(lease_until=self._later(self.lease))
                )
                mine = select(p.account_id).where(p.account_id.in_(part), p.owner == self.owner)
                kept += [int(a) for a in (await conn.execute(mine)).scalars()]
            return kept

        kept = set(await self.db.transaction(write, what="renew poll leases"))
        for account_id in ids:
            if account_id not in self.held:
                continue  # released meanwhile
            if account_id in kept:
                self.held[account_id] = since + self.lease.total_seconds()
            else:
                self.held.pop(account_id)
                log.warning("poll lease lost", account_id=account_id, owner=self.owner)

    async def keep_renewed(self) -> None:
        """Renew every third of the lease until cancelled (run beside the polls)."""
        every = self.lease.total_seconds() / 3
        while True:
            await asyncio.sleep(every)
            try:
                await self.renew()
            except ReconcileError as exc:  # the lapse is noticed by valid(); try again
                log.warning("poll lease renewal failed", error=f"{type(exc).__name__}: {exc}")


async def schedule_rows(db: Database) -> list[Any]:
    """The whole schedule (tests, diagnostics)."""

    async def read(conn: AsyncConnection) -> list[Any]:
        return list(await conn.execute(select(poll_schedule).order_by(poll_schedule.c.account_id)))

    return await db.transaction(read, what="read the poll schedule")


__all__ = ["RETIRED", "PollLeases", "daemon_id", "schedule_rows"]
