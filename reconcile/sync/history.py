"""History sync: reconcile every running robot's closed positions into hg_trading_order - the
run loop. Which streams there are and their cursors: :mod:`reconcile.sync.roster`; one stream's
window, upserted and charged: :mod:`reconcile.sync.window`.

Daemons sharing a database share the accounts through the poll schedule
(:mod:`reconcile.sync.fleet`): each claims due accounts under a short lease, so an account is
polled by one instance at a time and once per interval between them (correctness never depends
on it). An account's cursors are read in the transaction that claims it and written, with the
release of its lease, in one transaction once its streams ran; a failing stream or account is
counted and logged, never stops the others. See docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.charging.consumer import PowerConsumer
from reconcile.errors import PermanentError, ReconcileError, TemporaryError, describe
from reconcile.records import ApiAccount, ClosedPosition, SourceProvider
from reconcile.storage.contract import LiveSchema
from reconcile.storage.db import Database
from reconcile.sync.accounts import load_account
from reconcile.sync.credentials import AesKey, aes_key_from_environment
from reconcile.sync.fleet import PollLeases
from reconcile.sync.roster import (
    Cursors,
    Stream,
    cursor_rows,
    group_streams,
    read_cursors,
    running_robots,
    write_cursors,
)
from reconcile.sync.settings import SyncSettings
from reconcile.sync.window import StreamWindow, SyncSummary

log = structlog.get_logger("reconcile.history")


class HistorySync:
    """The history sync of one daemon: which accounts it polls when, each account's streams
    through :class:`StreamWindow`, and the cursors and leases written back."""

    def __init__(
        self,
        db: Database,
        consumer: PowerConsumer,
        provider: SourceProvider,
        settings: SyncSettings,
        *,
        schema: LiveSchema | None = None,
        aes_key: AesKey | None = None,
    ) -> None:
        self.db = db
        self.consumer = consumer
        self.provider = provider
        self.settings = settings
        self.window = StreamWindow(db, consumer, settings, schema=schema)
        # read once, here, not from the environment at every account load
        self.aes_key = aes_key if aes_key is not None else aes_key_from_environment()
        # the shared poll schedule (MySQL/MariaDB, PostgreSQL); SQLite runs one instance
        self.leases = (
            PollLeases(db, interval=settings.interval, lease=settings.lease)
            if db.dialect.concurrent
            else None
        )
        # accounts as last loaded, by a digest of their row: reloaded (and decrypted) on change
        self._accounts: dict[int, tuple[str, ApiAccount]] = {}

    async def run_cycle(self, stop: asyncio.Event | None = None) -> SyncSummary:
        """One pass over every stream, due or not (``sync``, ``run --once``): each account whose
        lease no other instance holds is claimed (its next poll due one interval on), polled and
        released. A failing stream never stops the others; ``stop`` ends the pass after the
        streams in flight."""
        started = time.monotonic()
        requests_before = self.provider.requests()
        summary = SyncSummary()
        async with self._renewing():
            by_account, prints = await self._streams(summary)
            cursors = await self._claim(by_account)
            busy = sorted(a for a in by_account if a not in cursors)
            for account_id in busy:
                summary.skipped_streams += len(by_account[account_id])
                log.info(
                    "account busy elsewhere",
                    account_id=account_id,
                    streams=len(by_account[account_id]),
                )
            gate = asyncio.Semaphore(self.settings.concurrency)

            async def account(account_id: int) -> None:
                streams = by_account[account_id]
                async with gate:
                    if stop is not None and stop.is_set():
                        summary.skipped_streams += len(streams)
                        await self._finish(account_id, [])
                        return
                    await self._sync_account(
                        account_id, streams, summary, cursors[account_id], prints.get(account_id)
                    )

            await asyncio.gather(*(account(a) for a in sorted(cursors)))
        return self._summarize(summary, started, requests_before)

    async def run_for(self, span: timedelta, stop: asyncio.Event | None = None) -> SyncSummary:
        """The daemon's history sync for ``span`` (one interval): put the running accounts on
        the shared schedule, then every ``tick`` claim due accounts, up to the free places of
        ``concurrency`` (when at least a quarter are free: a claim is one transaction for many),
        poll them and release them; then let the polls in flight finish. SQLite: one
        :meth:`run_cycle`."""
        leases = self.leases
        if leases is None:
            return await self.run_cycle(stop)
        started = time.monotonic()
        requests_before = self.provider.requests()
        summary = SyncSummary()
        deadline = started + span.total_seconds()
        tick = self.settings.tick.total_seconds()
        places = self.settings.concurrency
        running: set[asyncio.Task[None]] = set()
        stopped = asyncio.ensure_future((stop or asyncio.Event()).wait())
        failure: ReconcileError | None = None
        try:
            async with self._renewing():
                by_account, _ = await self._streams(SyncSummary())
                await leases.refresh(list(by_account))
                while True:
                    running = {t for t in running if not t.done()}
                    now = time.monotonic()
                    claiming = now < deadline and not stopped.done() and failure is None
                    if not claiming and not running:
                        break
                    free = places - len(running)
                    if claiming and free >= max(1, places // 4):
                        try:
                            batch = await self._claim_due(leases, free, summary)
                        except ReconcileError as exc:  # raised once the polls in flight end
                            failure, batch = exc, {}
                        for account_id, (streams, cursors, fingerprint) in batch.items():
                            running.add(
                                asyncio.create_task(
                                    self._sync_account(
                                        account_id, streams, summary, cursors, fingerprint, stop
                                    )
                                )
                            )
                        if len(batch) == free:
                            continue  # more may be due: claim again once places are free
                    wake = min(tick, max(0.0, deadline - now)) if claiming else None
                    await asyncio.wait(
                        {*running, stopped}, timeout=wake, return_when=asyncio.FIRST_COMPLETED
                    )
        finally:
            stopped.cancel()
            if running:  # cancelled (shutdown timeout): the accounts' transactions are shielded
                await asyncio.gather(*running, return_exceptions=True)
        if failure is not None:
            raise failure
        return self._summarize(summary, started, requests_before)

    def _summarize(self, summary: SyncSummary, started: float, requests_before: int) -> SyncSummary:
        summary.requests = self.provider.requests() - requests_before
        summary.elapsed = round(time.monotonic() - started, 3)
        log.info("history sync summary", **summary.figures())
        return summary

    @asynccontextmanager
    async def _renewing(self) -> AsyncIterator[None]:
        """The leases held are renewed while the block runs."""
        if self.leases is None:
            yield
            return
        renewer = asyncio.create_task(self.leases.keep_renewed())
        try:
            yield
        finally:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)

    # -- which streams, which accounts are ours -----------------------------------------------

    async def _streams(
        self, summary: SyncSummary
    ) -> tuple[dict[int, list[Stream]], dict[int, str]]:
        """Every running stream by account, and each account row's digest."""

        async def read(conn: AsyncConnection) -> list[Any]:
            return list(await conn.execute(running_robots(self.settings)))

        rows = await self.db.transaction(read, what="read running robots")
        by_account, prints = group_streams(rows, self.settings, loud=True)
        summary.streams = sum(len(s) for s in by_account.values())
        return by_account, prints

    async def _claim(self, by_account: dict[int, list[Stream]]) -> dict[int, Cursors]:
        """Claim every account of ``by_account`` no other instance holds (all of them without
        a schedule); their cursors, read in the claiming transaction."""
        leases, ids = self.leases, sorted(by_account)
        since = time.monotonic()

        async def claim(conn: AsyncConnection) -> dict[int, Cursors]:
            got = ids if leases is None else await leases.claim(conn, ids, schedule=True)
            return await read_cursors(conn, got)

        cursors = await self.db.transaction(claim, what="claim accounts")
        if leases is not None:
            leases.hold(cursors, since)
        return cursors

    async def _claim_due(
        self, leases: PollLeases, limit: int, summary: SyncSummary
    ) -> dict[int, tuple[list[Stream], Cursors, str | None]]:
        """Claim up to ``limit`` due accounts; with their streams and cursors, read in the same
        transaction (4 statements for the lot)."""
        since = time.monotonic()

        async def claim(conn: AsyncConnection) -> tuple[list[int], list[Any], dict[int, Cursors]]:
            ids = await leases.claim_due(conn, limit)
            if not ids:
                return [], [], {}
            rows = list(await conn.execute(running_robots(self.settings, ids)))
            return ids, rows, await read_cursors(conn, ids)

        ids, rows, cursors = await self.db.transaction(claim, what="claim due accounts")
        leases.hold(ids, since)
        by_account, prints = group_streams(rows, self.settings, loud=False)
        idle = [a for a in ids if a not in by_account]  # no running robot since the refresh
        if idle:
            await self.db.transaction(
                lambda conn: leases.release(conn, idle), what="release idle accounts"
            )
            leases.forget(idle)
        summary.streams += sum(len(s) for s in by_account.values())
        return {a: (s, cursors.get(a, {}), prints.get(a)) for a, s in by_account.items()}

    # -- one account: its lease, its client, its streams --------------------------------------

    async def _sync_account(
        self,
        account_id: int,
        streams: list[Stream],
        summary: SyncSummary,
        cursors: Cursors,
        fingerprint: str | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        """One account's streams, then its cursors and its lease in one transaction; any
        failure (the lease, the account, a stream) is counted and logged here, never raised:
        one account never stops the others."""
        pending = list(streams)
        advanced: list[tuple[Stream, datetime, list[str]]] = []
        try:
            async with self._account_lock(account_id) as held:
                if not held:
                    summary.skipped_streams += len(streams)
                    pending.clear()
                    log.info("account busy elsewhere", account_id=account_id, streams=len(streams))
                    return
                account = await self._account(account_id, fingerprint)
                source = self.provider.source_for(account)
                basis = self.provider.profit_basis(account)
                while pending:
                    stream = pending[0]
                    if (stop is not None and stop.is_set()) or not self._holding(account_id):
                        break  # shutting down, or the lease lapsed (a stall): the rest waits
                    try:
                        key = (stream.platform, stream.symbol)
                        cursor = await self.window.sync(
                            stream, cursors.get(key), source, basis, summary
                        )
                        advanced.append((stream, *cursor))
                    except ReconcileError as exc:
                        summary.failed_streams += 1
                        log.error(
                            "stream failed",
                            platform=stream.platform,
                            account_id=account_id,
                            symbol=stream.symbol,
                            robots=stream.robot_ids,
                            error=describe(exc),
                            will_retry="next cycle",
                        )
                    pending.pop(0)
                summary.skipped_streams += len(pending)
                pending.clear()
                await self._finish(account_id, advanced)
        except ReconcileError as exc:  # the lease, the account, or the cursors' transaction
            summary.failed_streams += len(pending) + len(advanced)
            log.error(
                "account failed",
                account_id=account_id,
                streams=len(pending) + len(advanced),
                error=describe(exc),
                will_retry="next cycle",
            )
        finally:
            if self.leases is not None:
                self.leases.forget([account_id])

    def _holding(self, account_id: int) -> bool:
        return self.leases is None or self.leases.valid(account_id)

    async def _account(self, account_id: int, fingerprint: str | None) -> ApiAccount:
        """The account, decrypted once per version of its row (``fingerprint``)."""
        known = self._accounts.get(account_id)
        if fingerprint is not None and known is not None and known[0] == fingerprint:
            return known[1]
        account = await load_account(self.db, account_id, aes_key=self.aes_key)
        if fingerprint is not None:
            self._accounts[account_id] = (fingerprint, account)
        return account

    @asynccontextmanager
    async def _account_lock(self, account_id: int) -> AsyncIterator[bool]:
        """Whether this instance may poll the account now. In a cycle its lease was claimed
        with the others; outside one (a quarantine retry) the lease is claimed here, its due
        time untouched, and released on exit. SQLite runs one instance: always."""
        leases = self.leases
        if leases is None:
            yield True
            return
        if account_id in leases.held:
            yield leases.valid(account_id)
            return
        since = time.monotonic()
        got = await self.db.transaction(
            lambda conn: leases.claim(conn, [account_id], schedule=False),
            what="claim an account's lease",
        )
        if not got:
            yield False
            return
        leases.hold(got, since)
        try:
            yield True
        finally:
            leases.forget(got)
            await self.db.transaction(
                lambda conn: leases.release(conn, got), what="release an account's lease"
            )

    async def _finish(
        self, account_id: int, advanced: list[tuple[Stream, datetime, list[str]]]
    ) -> None:
        """The account's advanced cursors and the release of its lease: one transaction."""
        rows = cursor_rows(advanced, self.db.now())
        leases = self.leases
        if not rows and leases is None:
            return
        upsert = write_cursors(self.db.dialect)

        async def write(conn: AsyncConnection) -> None:
            if rows:
                await conn.execute(upsert, rows)
            if leases is not None:
                await leases.release(conn, [account_id])

        await self.db.transaction(write, what="advance stream cursors", account_id=account_id)

    async def reconcile_records(
        self, key: tuple[str, int, str], records: Sequence[ClosedPosition]
    ) -> SyncSummary:
        """Upsert and charge records of one stream (platform, account, symbol) outside a cycle:
        ``exchange quarantine --retry`` hands records it could normalize at last to the same
        rules and writes as the cycle. The stream must be running; its cursor is not moved."""
        platform, account_id, symbol = key
        summary = SyncSummary()
        streams = (await self._streams(summary))[0].get(account_id, [])
        stream = next((s for s in streams if s.platform == platform and s.symbol == symbol), None)
        if stream is None:
            raise PermanentError(
                f"no running robot on {platform} account {account_id} trades {symbol}"
            )
        async with self._account_lock(account_id) as held:
            if not held:
                raise TemporaryError(f"account {account_id} is being synced elsewhere")
            account = await load_account(self.db, account_id, aes_key=self.aes_key)
            basis = self.provider.profit_basis(account)
            await self.window.reconcile(stream, list(records), basis, summary)
        return summary


__all__ = ["HistorySync"]
