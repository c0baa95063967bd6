"""Text output of the commands that print figures (``report``, ``demo``): aligned tables, CSV
with a header row, one JSON object; decimals as exact digits, times in ISO-8601.
See docs/commands.md."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any


def cell(value: Any) -> str:
    """One value as text: exact decimals, ISO times, nothing for None."""
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict | list):
        return json.dumps(value, default=cell, sort_keys=True)
    return str(value)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Aligned columns: numbers right, text left, ``-`` for nothing."""
    texts = [["-" if v is None else cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in texts)]) for i, h in enumerate(headers)]
    numeric = [
        all(isinstance(row[i], int | Decimal | None) for row in rows) for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    return "\n".join([line(headers), *(line(r) for r in texts)]) + "\n"


def render_csv(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """CSV with a header row (opens in a spreadsheet)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(headers)
    writer.writerows([cell(v) for v in row] for row in rows)
    return out.getvalue()


def to_json(data: Any) -> str:
    """One JSON object; decimals as exact strings, times in ISO-8601."""
    return json.dumps(data, default=cell, sort_keys=False) + "\n"
