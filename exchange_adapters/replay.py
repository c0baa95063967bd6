"""The replay adapter: closed positions read from JSON Lines or CSV files instead of an exchange.

For the embedded default, demos, and backfilling from exported history. ``path`` is a file
(``*.jsonl`` / ``*.ndjson`` / ``*.csv``) or a directory of them (read in name order). One record per
line (CSV: per row after the header), with the fields of :class:`~reconcile.records.ClosedPosition`:

- ``platform``, ``account_id`` (the ``hg_trading_api_config`` id), ``symbol`` (unified or any
  robot form), ``direction`` (long/short), ``record_key`` (unique per account);
- amounts as decimal strings (JSON numbers are read exactly too): ``size``, ``open_price``
  (may be empty/null), ``close_price``, ``gross_pnl``, ``fee`` and ``funding`` (signed, negative =
  cost; default 0), ``net_profit`` (optional; when given it must equal gross_pnl + fee + funding,
  unless ``profit_basis`` is given too: then it is the exchange's own net, as
  ``exchange closed --json`` writes it);
- optional ``profit_basis`` (``fees+funding`` default, or ``fees``), ``funding_known`` (true
  default) and ``exchange_order_ids`` (a list of strings);
- ``open_time`` (may be empty/null) and ``close_time``: ISO 8601 with a zone (``Z`` or ``+08:00``)
  or epoch milliseconds;
- ``raw`` (optional): a JSON object (in CSV, JSON text).

A later record with the same (account_id, record_key) replaces an earlier one. Files are re-read
when they change. A malformed record is a :class:`~reconcile.errors.ConfigError` naming the file
and line.
See docs/exchanges.md.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from exchange_adapters.errors import UnknownSymbol
from exchange_adapters.fields import ms_to_datetime
from exchange_adapters.positions import finish
from exchange_adapters.symbols import to_unified
from reconcile.errors import ConfigError
from reconcile.records import ClosedPosition, ClosedWindow, NetOf

SUFFIXES = (".jsonl", ".ndjson", ".csv")
FIELDS = (
    "platform",
    "account_id",
    "symbol",
    "direction",
    "size",
    "open_price",
    "close_price",
    "gross_pnl",
    "fee",
    "funding",
    "net_profit",
    "open_time",
    "close_time",
    "record_key",
    "raw",
    "profit_basis",
    "funding_known",
    "exchange_order_ids",
)
_REQUIRED = (
    "platform",
    "account_id",
    "symbol",
    "direction",
    "size",
    "close_price",
    "gross_pnl",
    "close_time",
    "record_key",
)


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def _decimal(value: Any, name: str) -> Decimal:
    if isinstance(value, bool | float):
        raise ValueError(f"{name}: write amounts as decimal strings")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"{name}: {str(value)[:40]!r} is not a decimal number") from None
    if not number.is_finite():
        raise ValueError(f"{name}: not a finite number")
    return number


def _time(value: Any, name: str) -> datetime:
    if isinstance(value, int | Decimal) and not isinstance(value, bool):
        return ms_to_datetime(int(value))
    text = str(value).strip()
    if text.isdigit():
        return ms_to_datetime(int(text))
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{name}: {text[:40]!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise ValueError(f"{name}: {text!r} has no time zone (add Z or +00:00)")
    return moment.astimezone(UTC)


def parse_record(data: Mapping[str, Any]) -> ClosedPosition:
    """One replay record (already split into fields) as a ClosedPosition; ValueError if bad."""
    unknown = set(data) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}")
    for name in _REQUIRED:
        if _empty(data.get(name)):
            raise ValueError(f"{name} is missing")
    direction = str(data["direction"]).strip().lower()
    if direction not in ("long", "short"):
        raise ValueError(f"direction: {direction!r} is neither long nor short")
    try:
        account_id = int(str(data["account_id"]).strip())
    except ValueError:
        raise ValueError("account_id is not an integer") from None
    try:
        symbol = to_unified(str(data["symbol"]))
    except UnknownSymbol as exc:
        raise ValueError(str(exc)) from None
    gross = _decimal(data["gross_pnl"], "gross_pnl")
    fee = Decimal(0) if _empty(data.get("fee")) else _decimal(data["fee"], "fee")
    funding = Decimal(0) if _empty(data.get("funding")) else _decimal(data["funding"], "funding")
    net = gross + fee + funding
    stated = data.get("profit_basis")
    if _empty(stated):
        basis = NetOf.FEES_AND_FUNDING
        if not _empty(data.get("net_profit")) and _decimal(data["net_profit"], "net_profit") != net:
            raise ValueError("net_profit differs from gross_pnl + fee + funding")
    else:
        try:
            basis = NetOf(str(stated).strip())
        except ValueError:
            raise ValueError(
                f"profit_basis: {str(stated).strip()!r} is neither fees+funding nor fees"
            ) from None
        if not _empty(data.get("net_profit")):
            net = _decimal(data["net_profit"], "net_profit")
    funding_known = data.get("funding_known", True)
    if isinstance(funding_known, str):
        funding_known = funding_known.strip().lower() not in ("false", "0", "no")
    order_ids = data.get("exchange_order_ids") or ()
    if isinstance(order_ids, str):
        order_ids = json.loads(order_ids) if order_ids.strip().startswith("[") else [order_ids]
    if not isinstance(order_ids, list | tuple):
        raise ValueError("exchange_order_ids must be a list of strings")
    raw = data.get("raw")
    if isinstance(raw, str):
        raw = json.loads(raw, parse_float=Decimal) if raw.strip() else None
    if raw is not None and not isinstance(raw, dict):
        raise ValueError("raw must be a JSON object")
    open_price = data.get("open_price")
    open_time = data.get("open_time")
    return ClosedPosition(
        platform=str(data["platform"]).strip().lower(),
        account_id=account_id,
        symbol=symbol,
        direction="long" if direction == "long" else "short",
        size=_decimal(data["size"], "size"),
        open_price=None if _empty(open_price) else _decimal(open_price, "open_price"),
        close_price=_decimal(data["close_price"], "close_price"),
        gross_pnl=gross,
        fee=fee,
        funding=funding,
        net_profit=net,
        open_time=None if _empty(open_time) else _time(open_time, "open_time"),
        close_time=_time(data["close_time"], "close_time"),
        record_key=str(data["record_key"]).strip(),
        raw=raw or {},
        profit_basis=basis,
        funding_known=bool(funding_known),
        exchange_order_ids=tuple(str(i) for i in order_ids),
    )


def _rows(path: Path, text: str) -> Iterator[tuple[int, Mapping[str, Any]]]:
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        for row in reader:
            if None in row:
                raise ValueError(f"line {reader.line_num}: more cells than header columns")
            if all(_empty(v) for v in row.values()):
                continue
            yield reader.line_num, row
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line, parse_float=Decimal)
        except ValueError as exc:
            raise ValueError(f"line {number}: not JSON ({exc.args[0][:60]})") from None
        if not isinstance(data, dict):
            raise ValueError(f"line {number}: not a JSON object")
        yield number, data


def read_file(path: Path) -> list[ClosedPosition]:
    """Every record of one replay file; ConfigError naming the file and line if one is bad."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"replay file {path} cannot be read: {exc.strerror}") from exc
    records: list[ClosedPosition] = []
    try:
        for line, data in _rows(path, text):
            try:
                records.append(parse_record(data))
            except ValueError as exc:
                raise ConfigError(f"replay file {path}: line {line}: {exc}") from exc
    except ValueError as exc:  # the file itself: not JSON, ragged CSV
        raise ConfigError(f"replay file {path}: {exc}") from exc
    return records


def replay_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file())
    if path.is_file():
        return [path]
    raise ConfigError(f"replay path {path} does not exist")


@dataclass
class ReplayStore:
    """The records of one replay path, re-read when a file changes. Shared by replay sources."""

    path: Path
    _stamp: tuple[tuple[str, int, int], ...] | None = None
    _by_account: dict[int, dict[str, ClosedPosition]] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def _load(self) -> None:
        files = replay_files(self.path)
        stamp = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files)
        if stamp == self._stamp:
            return
        by_account: dict[int, dict[str, ClosedPosition]] = {}
        for file in files:
            for record in read_file(file):
                by_account.setdefault(record.account_id, {})[record.record_key] = record
        self._by_account, self._stamp = by_account, stamp

    async def records(self, account_id: int) -> list[ClosedPosition]:
        async with self._lock:
            await asyncio.to_thread(self._load)
            return list(self._by_account.get(account_id, {}).values())


class ReplaySource:
    """A :class:`~reconcile.records.ClosedPositionSource` reading one account's records."""

    def __init__(self, store: ReplayStore, account_id: int, platform: str = "replay") -> None:
        self.store = store
        self.account_id = account_id
        self.platform = platform

    async def fetch_closed(self, symbol: str, since: datetime, until: datetime) -> ClosedWindow:
        if since.tzinfo is None or until.tzinfo is None:
            raise ValueError("fetch_closed needs aware datetimes")
        unified = to_unified(symbol)
        records = await self.store.records(self.account_id)
        return ClosedWindow(
            records=tuple(finish((r for r in records if r.symbol == unified), since, until))
        )

    async def close(self) -> None:
        return None
