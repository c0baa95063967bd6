"""Strict field parsing of raw exchange records: text, Decimal (from the exchange's own string,
never a float), positive sizes and prices, times in milliseconds, stable keys for records without
an id. A missing, empty, non-numeric or non-positive required field is :class:`RecordUnusable`,
never read as zero. See docs/exchanges.md ("Strict but not brittle: unusable records").
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from exchange_adapters.errors import sanitize
from reconcile.errors import BadExchangeResponse

_PLACES = Decimal("1e-12")


class RecordUnusable(BadExchangeResponse):
    """One record of a well-formed page cannot be normalized. Raised while normalizing (after
    the request and its retries), turned into an :class:`~reconcile.records.UnusableRecord`."""


_NOT_SCALAR = (dict, list, bool, float)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def field_text(record: Mapping[str, Any], key: str, where: str) -> str:
    value = record.get(key)
    if isinstance(value, str):
        text = value.strip()
        if text:
            return text
        raise RecordUnusable(f"{where}: {key!r} is empty")
    if value is not None and not isinstance(value, _NOT_SCALAR):
        return str(value)
    raise RecordUnusable(f"{where}: record lacks {key!r}")


def field_decimal(record: Mapping[str, Any], key: str, where: str) -> Decimal:
    text = field_text(record, key, where)
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise RecordUnusable(f"{where}: {key!r} is not a number: {text[:40]!r}") from None
    if not value.is_finite():
        raise RecordUnusable(f"{where}: {key!r} is not a finite number")
    return value


def positive_decimal(record: Mapping[str, Any], key: str, where: str) -> Decimal:
    """A size or price: a number above zero (zero or negative makes the record unusable)."""
    value = field_decimal(record, key, where)
    if value <= 0:
        raise RecordUnusable(f"{where}: {key!r} is {text_of(value)}, not a positive number")
    return value


def text_of(value: Decimal) -> str:
    return format(value, "f")


def optional_decimal(record: Mapping[str, Any], key: str, where: str) -> Decimal | None:
    """An optional component: absent or empty is None (the caller decides what that means);
    present but not a number makes the record unusable."""
    value = record.get(key)
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    return field_decimal(record, key, where)


def first_key(record: Mapping[str, Any], keys: tuple[str, ...]) -> str:
    """The first of ``keys`` (spellings of one field) present and non-empty, else the first."""
    for key in keys:
        value = record.get(key)
        if value is not None and not (isinstance(value, str) and not value.strip()):
            return key
    return keys[0]


def field_ms(record: Mapping[str, Any], key: str, where: str) -> int:
    value = field_decimal(record, key, where)
    if value <= 0 or value != value.to_integral_value() or value >= 10**14:
        raise RecordUnusable(f"{where}: {key!r} is not a time in milliseconds")
    return int(value)


def canonical_key(raw: Any) -> str:
    """A stable identity for a record that has no usable id: sha256 of its canonical JSON."""
    text = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def lenient_ms(record: Mapping[str, Any], key: str) -> int | None:
    """A time in ms if it parses, else None (for paging and for unusable records)."""
    try:
        return field_ms(record, key, "")
    except RecordUnusable:
        return None


def ms_to_datetime(ms: int | Decimal) -> datetime:
    return _EPOCH + timedelta(milliseconds=int(ms))


def to_ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("an aware datetime is required")
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def div(numerator: Decimal, denominator: Decimal) -> Decimal:
    """An exact-enough quotient: 12 decimal places, trailing zeros removed."""
    value = (numerator / denominator).quantize(_PLACES)
    return value.normalize() if value != value.to_integral_value() else value.quantize(Decimal(1))


def describe_body(raw: Any) -> str:
    """A short, safe rendering of an unexpected answer for error messages."""
    text = raw if isinstance(raw, str) else json.dumps(raw, default=str)[:200]
    return sanitize(repr(text[:80]))
