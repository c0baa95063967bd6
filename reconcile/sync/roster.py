"""Which streams the history sync polls and where each stands. Robots sharing an API account and
a symbol form one **stream**; the running robots of enabled accounts are read and grouped into
streams by account, with a digest of each account's row (the account is loaded again when it
changes). Each stream keeps a cursor in ``toogo_reconcile_cursor``: the close time up to which it
is known complete and the record keys seen at that instant; an account's cursors are read in the
transaction that claims it and written, with the release of its lease, in one transaction. See
docs/architecture.md."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import Insert, Select, select
from sqlalchemy.ext.asyncio import AsyncConnection

from reconcile.storage.dialect import PROPOSED, Dialect
from reconcile.storage.schema import stream_cursor, trading_api_config, trading_robot
from reconcile.sync.fleet import chunks
from reconcile.sync.record_rows import StreamRef
from reconcile.sync.settings import SyncSettings

log = structlog.get_logger("reconcile.history")

#: a stream's cursor: complete until, and the record keys at that instant
Cursor = tuple[datetime, frozenset[str]]
#: an account's cursors by (platform, symbol)
Cursors = dict[tuple[str, str], Cursor]


@dataclass(frozen=True)
class Robot:
    id: int
    tenant_id: int
    user_id: int
    symbol: str
    leverage: int


@dataclass(frozen=True)
class Stream:
    platform: str
    account_id: int
    symbol: str
    robots: tuple[Robot, ...]

    @property
    def robot_ids(self) -> list[int]:
        return [r.id for r in self.robots]

    def ref(self) -> StreamRef:
        robot = self.robots[0]  # an inserted order is filed under the stream's first robot
        return StreamRef(
            self.platform,
            self.account_id,
            self.symbol,
            tuple(self.robot_ids),
            (robot.tenant_id, robot.user_id, robot.id, robot.leverage),
        )


def running_robots(settings: SyncSettings, account_ids: Sequence[int] | None = None) -> Select[Any]:
    """The running robots of enabled accounts (of ``account_ids``), with their account's row."""
    r, a = trading_robot.c, trading_api_config.c
    stmt = (
        select(
            r.id,
            r.tenant_id,
            r.user_id,
            r.symbol,
            r.leverage,
            a.id.label("account_id"),
            a.user_id.label("account_user_id"),
            a.platform,
            a.base_url,
            a.api_key,
            a.secret_key,
            a.passphrase,
        )
        .join_from(trading_robot, trading_api_config, a.id == r.api_config_id)
        .where(
            r.status == settings.running_status,
            r.deleted_at.is_(None),
            a.status == 1,
            a.deleted_at.is_(None),
        )
        .order_by(r.id)
    )
    return stmt if account_ids is None else stmt.where(a.id.in_(account_ids))


def group_streams(
    rows: Sequence[Any], settings: SyncSettings, *, loud: bool
) -> tuple[dict[int, list[Stream]], dict[int, str]]:
    """The rows of :func:`running_robots` as streams by account, and each account row's digest.
    A robot owned by another user than its account is refused (logged when ``loud``)."""
    grouped: dict[tuple[str, int, str], list[Robot]] = defaultdict(list)
    prints: dict[int, str] = {}
    unconfigured: set[str] = set()
    for row in rows:
        platform = str(row.platform).strip().lower()
        if row.user_id != row.account_user_id:
            if loud:
                log.error(
                    "robot account mismatch",
                    robot_id=row.id,
                    robot_user_id=row.user_id,
                    account_id=row.account_id,
                    account_user_id=row.account_user_id,
                    action="skipped: never charge the wrong wallet",
                )
            continue
        if settings.platforms is not None and platform not in settings.platforms:
            unconfigured.add(platform)
            continue
        robot = Robot(row.id, row.tenant_id, row.user_id, row.symbol, row.leverage)
        grouped[(platform, row.account_id, row.symbol)].append(robot)
        prints[row.account_id] = _digest(row)
    if unconfigured and loud:
        log.warning("robots on unconfigured platforms skipped", platforms=sorted(unconfigured))
    by_account: dict[int, list[Stream]] = defaultdict(list)
    for (platform, account_id, symbol), robots in sorted(grouped.items()):
        by_account[account_id].append(Stream(platform, account_id, symbol, tuple(robots)))
    return dict(by_account), prints


async def read_cursors(conn: AsyncConnection, account_ids: Sequence[int]) -> dict[int, Cursors]:
    """The cursors of ``account_ids``' streams (every account given has an entry)."""
    c = stream_cursor.c
    found: dict[int, Cursors] = {a: {} for a in account_ids}
    for ids in chunks(sorted(found)):
        stmt = select(c.platform, c.account_id, c.symbol, c.complete_until, c.keys_at_cursor)
        for row in await conn.execute(stmt.where(c.account_id.in_(ids))):
            if row.complete_until is not None:
                keys = frozenset(json.loads(row.keys_at_cursor or "[]"))
                cursor = (row.complete_until.replace(tzinfo=UTC), keys)
                found[int(row.account_id)][(row.platform, row.symbol)] = cursor
    return found


def cursor_rows(
    advanced: Sequence[tuple[Stream, datetime, list[str]]], now: datetime
) -> list[dict[str, Any]]:
    """The rows of ``toogo_reconcile_cursor`` for the streams ``advanced`` (to, keys at)."""
    return [
        {
            "platform": stream.platform,
            "account_id": stream.account_id,
            "symbol": stream.symbol,
            # cursors are kept in UTC whatever database.timezone says: they never meet hotgo
            "complete_until": until.astimezone(UTC).replace(tzinfo=None),
            "keys_at_cursor": json.dumps(keys),
            "updated_at": now,
        }
        for stream, until, keys in advanced
    ]


def write_cursors(dialect: Dialect) -> Insert:
    """The upsert of :func:`cursor_rows`: a stream's cursor moves to what was committed."""
    return dialect.upsert(
        stream_cursor,
        key=("platform", "account_id", "symbol"),
        update=dict.fromkeys(("complete_until", "keys_at_cursor", "updated_at"), PROPOSED),
    )


def _digest(row: Any) -> str:
    """A digest of an account row's fields (credentials included, as stored): the account is
    loaded again when it changes. Never logged."""
    fields = (
        row.account_user_id,
        row.platform,
        row.base_url,
        row.api_key,
        row.secret_key,
        row.passphrase,
    )
    return hashlib.sha256(repr(fields).encode()).hexdigest()


__all__ = [
    "Cursor",
    "Cursors",
    "Robot",
    "Stream",
    "cursor_rows",
    "group_streams",
    "read_cursors",
    "running_robots",
    "write_cursors",
]
