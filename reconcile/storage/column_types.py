"""The column types the table definitions share, so a column reads the same on every engine:
exact decimals (DECIMAL on MySQL/MariaDB and PostgreSQL; on SQLite, the embedded default only,
text holding the exact decimal string, because SQLite would otherwise store binary floats), ids,
large text and microsecond times. See docs/architecture.md.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, DateTime, Integer, Numeric, String, Text
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine


class _SqliteDecimal(TypeDecorator[Decimal]):
    """Exact decimals on SQLite: stored as text, returned as ``Decimal``."""

    impl = String(40)
    cache_ok = True

    def __init__(self, scale: int) -> None:
        super().__init__()
        self._quantum = Decimal(1).scaleb(-scale)

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return str(Decimal(value).quantize(self._quantum))

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return Decimal(str(value))


def dec(precision: int, scale: int) -> TypeEngine[Decimal]:
    """DECIMAL(precision, scale) in MySQL, exact text on SQLite."""
    return Numeric(precision, scale, asdecimal=True).with_variant(_SqliteDecimal(scale), "sqlite")


#: MEDIUMTEXT on MySQL (TEXT holds 64 KiB), TEXT elsewhere (PostgreSQL's has no length)
BIG_TEXT = Text().with_variant(Text(16_000_000), "mysql", "mariadb")

ID = BigInteger().with_variant(
    Integer(), "sqlite"
)  # SQLite autoincrements INTEGER PRIMARY KEY only

#: microsecond DATETIME on MySQL (its DATETIME keeps whole seconds): due times a second apart
PRECISE_TIME = DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")

__all__ = ["BIG_TEXT", "ID", "PRECISE_TIME", "dec"]
