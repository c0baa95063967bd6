"""Driver errors translated into the project's tree, once, at the database boundary.

MySQL/MariaDB errors by their numeric code, PostgreSQL's by SQLSTATE, SQLite's by message.
Messages carry no SQL text and no parameters (they may hold values of secrets or money).
See docs/architecture.md.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

from sqlalchemy import exc as sa_exc

from reconcile.errors import (
    ConnectionLost,
    DatabaseError,
    Deadlock,
    DefinitionChanging,
    DuplicateKey,
    LockWaitTimeout,
)

_DEADLOCK = 1213
_LOCK_WAIT_TIMEOUT = 1205
_DUPLICATE_KEY = 1062
# 1412: table definition has changed, retry the transaction; 1684: a table skipped (DESCRIBE,
# information_schema) since its definition is being modified by a concurrent DDL statement
_DEFINITION_CHANGING = frozenset({1412, 1684})
# 2002/2003: cannot connect; 2006: server has gone away; 2013: lost connection during query;
# 1927: connection killed (MariaDB); 4031: disconnected by the server for inactivity.
_CONNECTION_LOST = frozenset({2002, 2003, 2006, 2013, 1927, 4031})
# PostgreSQL SQLSTATEs: 40P01 deadlock, 40001 serialization failure, 55P03 lock not available
# (lock_timeout), 23505 unique violation; class 08 connection exceptions, 57P01-57P03 server
# shutting down / cannot connect now
_PG_DEADLOCK = frozenset({"40P01", "40001"})
_PG_LOCK_TIMEOUT = frozenset({"55P03"})
_PG_DUPLICATE_KEY = "23505"
_PG_CONNECTION_LOST = frozenset({"57P01", "57P02", "57P03"})


def _mysql_code(exc: sa_exc.DBAPIError) -> int | None:
    orig = exc.orig
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):
        return args[0]
    return None


def _connection_gone(exc: sa_exc.DBAPIError) -> bool:
    """asyncpg reports a connection that broke under it as an interface error, or passes the
    socket's own error through."""
    cause = exc.orig.__cause__ if exc.orig is not None else None
    if isinstance(cause, (ConnectionError, TimeoutError, OSError)):
        return True
    name = type(cause).__name__ if cause is not None else ""
    return name in {"ConnectionDoesNotExistError", "InterfaceError"} and "closed" in str(cause)


def _describe(exc: BaseException) -> str:
    """A short, secret-free description of a driver error (no SQL text, no parameters)."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None:
        orig = exc.orig
        args: tuple[Any, ...] = tuple(getattr(orig, "args", ()))
        if len(args) >= 2 and isinstance(args[0], int):
            return f"{type(orig).__name__} {args[0]}: {args[1]}"
        return f"{type(orig).__name__}: {orig}"
    text = str(exc).split("\n", 1)[0]
    return re.sub(r"://[^@/\s]*@", "://***@", f"{type(exc).__name__}: {text}")


@contextlib.contextmanager
def map_db_errors(what: str) -> Iterator[None]:
    """Translate SQLAlchemy/driver exceptions into the project's tree, once, at the boundary."""
    try:
        yield
    except sa_exc.DBAPIError as exc:
        code = _mysql_code(exc)
        message = f"{what}: {_describe(exc)}"
        state = getattr(exc.orig, "sqlstate", None)
        if isinstance(state, str):  # PostgreSQL
            if state in _PG_DEADLOCK:
                raise Deadlock(message) from exc
            if state in _PG_LOCK_TIMEOUT:
                raise LockWaitTimeout(message) from exc
            if state == _PG_DUPLICATE_KEY:
                raise DuplicateKey(message) from exc
            if state in _PG_CONNECTION_LOST or state.startswith("08"):
                raise ConnectionLost(message) from exc
        if code == _DEADLOCK:
            raise Deadlock(message) from exc
        if code == _LOCK_WAIT_TIMEOUT:
            raise LockWaitTimeout(message) from exc
        if code in _DEFINITION_CHANGING:
            raise DefinitionChanging(message) from exc
        if code == _DUPLICATE_KEY or (
            isinstance(exc, sa_exc.IntegrityError) and "UNIQUE constraint failed" in str(exc.orig)
        ):
            raise DuplicateKey(message) from exc
        if code in _CONNECTION_LOST or exc.connection_invalidated or _connection_gone(exc):
            raise ConnectionLost(message) from exc
        if "database is locked" in str(exc.orig):  # SQLite busy past its timeout
            raise LockWaitTimeout(message) from exc
        raise DatabaseError(message) from exc
    except sa_exc.TimeoutError as exc:  # every pooled connection busy for pool_timeout
        raise ConnectionLost(
            f"{what}: connection pool exhausted ({exc.__class__.__name__})"
        ) from exc
    except (sa_exc.PendingRollbackError, sa_exc.ResourceClosedError) as exc:
        raise ConnectionLost(f"{what}: {_describe(exc)}") from exc
    except (ConnectionError, TimeoutError) as exc:
        raise ConnectionLost(f"{what}: {_describe(exc)}") from exc
