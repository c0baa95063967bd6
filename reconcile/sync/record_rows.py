"""The rows an exchange record of a stream becomes in hotgo's tables, and nothing else: the
figures as hotgo's columns hold them (quantized), the synthesized order's row and order_sn, the
fields a matched order lacks, and the kept record (``toogo_reconcile_record``).

reconcile.sync.upsert decides which to write, in its transaction; the matching rules that
choose the order are explained in docs/architecture.md.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from reconcile.charging.orders import Status, real_close_time
from reconcile.records import ClosedPosition, ProfitBasis, profit_of
from reconcile.storage.db import Database
from reconcile.sync.matching import Candidate

PROFIT_QUANTUM = Decimal("0.0001")  # hg_trading_order.realized_profit is DECIMAL(15,4)
PRICE_QUANTUM = Decimal("0.0001")
QTY_QUANTUM = Decimal("0.00000001")
CLOSE_REASON = "exchange_sync"


@dataclass(frozen=True)
class StreamRef:
    """What the writer needs of a stream: its account, symbol and robots."""

    platform: str
    account_id: int
    symbol: str
    robot_ids: tuple[int, ...]
    #: (tenant_id, user_id, robot_id, leverage) of the robot an inserted order is filed under
    owner: tuple[int, int, int, int]


def stored_profit(record: ClosedPosition, basis: ProfitBasis) -> Decimal:
    """The profit the platform charges on (:func:`~reconcile.records.profit_of`), as
    ``hg_trading_order.realized_profit`` holds it."""
    return profit_of(record, basis).quantize(PROFIT_QUANTUM, rounding=ROUND_HALF_UP)


def order_sn_for(platform: str, account_id: int, record_key: str) -> str:
    """A deterministic order_sn (42 chars) for a position synthesized from an exchange record."""
    digest = hashlib.sha256(f"{platform}:{account_id}:{record_key}".encode()).hexdigest()
    return f"SX{digest[:40]}"


def is_own_order_sn(order_sn: str) -> bool:
    """Whether an order_sn is one :func:`order_sn_for` makes (the engine's start TO, SUB, ...)."""
    return len(order_sn) == 42 and order_sn.startswith("SX")


def normalized(record: ClosedPosition) -> dict[str, Any]:
    """A record's normalized fields as JSON values: exact decimal strings, ISO times."""
    out: dict[str, Any] = {}
    for f in dataclass_fields(record):
        value = getattr(record, f.name)
        if f.name == "raw":
            continue
        if isinstance(value, Decimal):
            value = format(value, "f")
        elif isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


class RecordRows:
    """The rows one stream's records become, at one profit basis; ``close_ids``: whether this
    install's hg_trading_order has ``close_order_id``."""

    def __init__(
        self, db: Database, stream: StreamRef, basis: ProfitBasis, *, close_ids: bool
    ) -> None:
        self.db = db
        self.stream = stream
        self.basis = basis
        self.close_ids = close_ids

    def order_sn(self, record: ClosedPosition) -> str:
        return order_sn_for(self.stream.platform, self.stream.account_id, record.record_key)

    def own_close_id(self, record: ClosedPosition) -> str | None:
        if not self.close_ids or len(record.exchange_order_ids) != 1:
            return None
        return record.exchange_order_ids[0][:100]

    def record_row(
        self, record: ClosedPosition, close_time: datetime, now: datetime
    ) -> dict[str, Any]:
        """The bound record, kept for its order's chain (``toogo_reconcile_record``)."""
        return {
            "platform": self.stream.platform,
            "account_id": self.stream.account_id,
            "record_key": record.record_key,
            "symbol": self.stream.symbol,
            "close_time": close_time,
            "profit": stored_profit(record, self.basis),
            "profit_basis": str(self.basis),
            "normalized_json": json.dumps(normalized(record), sort_keys=True),
            "raw_json": json.dumps(record.raw, sort_keys=True, default=str),
            "created_at": now,
        }

    def new_order(
        self, record: ClosedPosition, close_time: datetime, now: datetime
    ) -> dict[str, Any]:
        """A closed order synthesized from ``record``; ``margin`` (NOT NULL in upstream) is
        derived as open price × size ÷ leverage (the close price without an open price)."""
        tenant_id, user_id, robot_id, leverage = self.stream.owner
        open_time = self.db.to_db_time(record.open_time) if record.open_time else close_time
        price = record.open_price if record.open_price is not None else record.close_price
        row: dict[str, Any] = {
            "tenant_id": tenant_id,
            "user_id": user_id,
            "robot_id": robot_id,
            "order_sn": self.order_sn(record),
            # exchange_order_id is left to the column's default: NULL in upstream's MySQL DDL,
            # '' in its PostgreSQL DDL (NOT NULL there)
            "symbol": self.stream.symbol,
            "direction": record.direction,
            "open_price": (record.open_price or Decimal(0)).quantize(PRICE_QUANTUM, ROUND_HALF_UP),
            "close_price": record.close_price.quantize(PRICE_QUANTUM, ROUND_HALF_UP),
            "quantity": record.size.quantize(QTY_QUANTUM, ROUND_HALF_UP),
            "leverage": leverage,
            "margin": (price * record.size / max(leverage, 1)).quantize(
                PRICE_QUANTUM, ROUND_HALF_UP
            ),
            "realized_profit": stored_profit(record, self.basis),
            "open_time": open_time,
            "close_time": close_time,
            "hold_duration": max(0, int((close_time - open_time).total_seconds())),
            "status": int(Status.CLOSED),
            "close_reason": CLOSE_REASON,
            "power_consumed": 0,
            "power_amount": Decimal(0),
            "remark": f"synchronized from {self.stream.platform} account {self.stream.account_id}",
            "created_at": now,
            "updated_at": now,
        }
        if self.close_ids:
            row["close_order_id"] = self.own_close_id(record)
        return row

    def closing(
        self,
        order: Candidate,
        record: ClosedPosition,
        close_time: datetime,
        profit: Decimal,
        now: datetime,
    ) -> dict[str, Any]:
        """What closes an open ``order`` with ``record``'s figures (close_reason
        ``exchange_sync``); ``profit``: the record's :func:`stored_profit`."""
        values: dict[str, Any] = {
            "status": int(Status.CLOSED),
            "close_price": record.close_price.quantize(PRICE_QUANTUM, ROUND_HALF_UP),
            "realized_profit": profit,
            "close_time": close_time,
            "hold_duration": max(0, int((close_time - order.open_time).total_seconds())),
            "close_reason": CLOSE_REASON,
            "updated_at": now,
        }
        own = self.own_close_id(record)
        if own is not None and not order.close_order_id:
            values["close_order_id"] = own
        return values

    def missing(
        self, order: Candidate, record: ClosedPosition, close_time: datetime
    ) -> dict[str, Any]:
        """What a matched order lacks and the record has; never a figure already there."""
        if order.status != Status.CLOSED:
            return {}
        values: dict[str, Any] = {}
        if order.close_price is None:
            values["close_price"] = record.close_price.quantize(PRICE_QUANTUM, ROUND_HALF_UP)
        if not real_close_time(order.close_time):
            values["close_time"] = close_time  # missing, or the engine's 2006 placeholder
        if not order.hold_duration and order.open_time is not None:
            end: datetime = values.get("close_time") or order.close_time or close_time
            hold = int((end - order.open_time).total_seconds())
            if hold > 0:
                values["hold_duration"] = hold
        own = self.own_close_id(record)
        if own is not None and not order.close_order_id:
            values["close_order_id"] = own
        return values


__all__ = [
    "CLOSE_REASON",
    "RecordRows",
    "StreamRef",
    "is_own_order_sn",
    "normalized",
    "order_sn_for",
    "stored_profit",
]
