"""The history sync's settings: how far back a stream is read, how often an account is polled, how
many at once, and what a charged order's different exchange profit does. A plain value, read by
the sync and by the report (which states the sync's reach), so the report need not import the
sync itself. See docs/configuration.md."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from reconcile.charging.corrections import CorrectionMode


@dataclass(frozen=True)
class SyncSettings:
    running_status: int = 2
    lookback: timedelta = timedelta(days=7)
    overlap: timedelta = timedelta(minutes=10)
    match_tolerance: timedelta = timedelta(seconds=120)
    concurrency: int = 8
    #: an account is polled once per interval (``schedule.history_sync``), whatever the daemons
    interval: timedelta = timedelta(seconds=60)
    #: a claimed account is held this long, renewed while its poll runs (``sync.lease``)
    lease: timedelta = timedelta(seconds=30)
    #: how often a daemon looks for due accounts (``sync.tick``)
    tick: timedelta = timedelta(seconds=1)
    #: platforms with a source; None: every platform (a replay source serves them all)
    platforms: frozenset[str] | None = None
    #: records upserted per transaction
    page_size: int = 200
    #: what a charged order's different exchange profit does (``power.corrections``)
    corrections: CorrectionMode = CorrectionMode.LOG


__all__ = ["SyncSettings"]
