"""The one exception tree of toogo-reconcile.

Catching a parent class *is* the retry decision::

    ReconcileError
    ├── TemporaryError            retry, bounded and jittered
    │   ├── ExchangeUnavailable       network, timeout, 429/418, 5xx, maintenance
    │   │   └── RateLimited           carries retry_after when the exchange sent one
    │   ├── BadExchangeResponse       200 with a body that is not the exchange's envelope
    │   └── DatabaseTemporaryError    deadlock, lock-wait timeout, lost connection
    │       ├── Deadlock                  MySQL 1213
    │       ├── LockWaitTimeout           MySQL 1205
    │       ├── ConnectionLost            MySQL 2006/2013/2003, outcome of a COMMIT unknown
    │       ├── DefinitionChanging        MySQL 1412/1684: concurrent DDL on a table read
    │       └── RowsMissing               a row the unit needs must first be created on its own
    ├── PermanentError            never retried
    │   ├── ExchangeRejected          authentication, permission, bad symbol, bad request
    │   ├── DatabaseError             anything else the database says
    │   │   └── DuplicateKey              a unique key refused the row (1062)
    │   ├── OrderNotFound             the order id does not exist
    │   └── SchemaNotReady            the migration has not been run
    └── ConfigError               bad configuration or credentials; the CLI exits 2

Foreign exceptions are translated once, at the boundary
(``reconcile.storage.db_errors.map_db_errors`` for the database,
``exchange_adapters.errors.map_ccxt_errors`` for ccxt), always ``raise ... from exc``. Messages
never contain secrets.
See docs/architecture.md.
"""

from __future__ import annotations


class ReconcileError(Exception):
    """Base of every error this project raises on purpose."""


class TemporaryError(ReconcileError):
    """Worth retrying: the same call may succeed later."""


class PermanentError(ReconcileError):
    """Not worth retrying: the same call will fail the same way."""


class ConfigError(ReconcileError):
    """The configuration (file, environment, credentials) is unusable."""


class ExchangeUnavailable(TemporaryError):
    """The exchange could not be reached or answered with a transient failure."""


class RateLimited(ExchangeUnavailable):
    """The exchange asked us to slow down (HTTP 429/418)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BadExchangeResponse(TemporaryError):
    """The exchange (or a proxy in front of it) answered with something that is not its API."""


class ExchangeRejected(PermanentError):
    """The exchange refused the request: credentials, permissions, symbol, arguments."""


class DatabaseTemporaryError(TemporaryError):
    """A database failure after which re-running the whole transaction is the resolution."""


class Deadlock(DatabaseTemporaryError):
    """InnoDB chose this transaction as a deadlock victim (1213)."""


class LockWaitTimeout(DatabaseTemporaryError):
    """A row lock was not granted in time (1205)."""


class DefinitionChanging(DatabaseTemporaryError):
    """A table's definition changed, or is being changed by concurrent DDL, under the transaction
    (1412, 1684: `migrate up` creating the daemon's tables while a charge reads them)."""


class ConnectionLost(DatabaseTemporaryError):
    """The connection broke; if it broke during COMMIT the outcome is unknown."""


class RowsMissing(DatabaseTemporaryError):
    """A transaction found rows missing that must be created in a short transaction of their
    own (creating them between locks taken in order lets two writers deadlock on the new rows'
    gap locks). ``Database.transaction`` awaits :meth:`prepare` and runs the unit again."""

    async def prepare(self) -> None:
        raise NotImplementedError


class DatabaseError(PermanentError):
    """Any other database failure."""


class DuplicateKey(DatabaseError):
    """A unique key refused an INSERT: for a consume row, the order is already charged."""


class OrderNotFound(PermanentError):
    """No hg_trading_order row has this id."""

    def __init__(self, order_id: int) -> None:
        super().__init__(f"order {order_id} not found in hg_trading_order")
        self.order_id = order_id


class SchemaNotReady(PermanentError):
    """The database lacks what the daemon needs (unique key, columns, own tables)."""


def describe(exc: BaseException) -> str:
    """An error as a log field or a result's message: ``"TypeName: message"``."""
    return f"{type(exc).__name__}: {exc}"
