"""What one HTTP answer of an exchange looked like (status, headers, body), as the ccxt hook
captures it, and the one reading of its ``Retry-After``. A leaf: the error mapping
(exchange_adapters.errors) and the budgets (exchange_adapters.budgets) both read answers.
See docs/exchanges.md."""

from __future__ import annotations

import email.utils
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime


@dataclass
class ResponseCapture:
    """What the last HTTP answer of one call looked like (filled by the ccxt hook)."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lowered:
                return value
        return None

    def exchange_code(self) -> str | None:
        """The exchange's error code from a JSON error body (code / retCode / label)."""
        try:
            data = json.loads(self.body)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        for key in ("code", "retCode", "label"):
            value = data.get(key)
            if value is not None and not isinstance(value, dict | list):
                return str(value)
        return None


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Retry-After as seconds: a number of seconds or an HTTP date."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(0.0, seconds)
