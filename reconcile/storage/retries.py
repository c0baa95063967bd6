"""The one retry policy for database work: a whole transaction re-run on a temporary failure,
bounded, full-jitter exponential, each re-run logged.

``Database.transaction`` runs every attempt under it (``Database.retrying`` hands it out for work
outside a transaction too: the runbook's autocommit DDL on PostgreSQL). Nothing else retries a
transaction.

See docs/architecture.md (errors and retries).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from reconcile.errors import DatabaseTemporaryError, DuplicateKey, RowsMissing

log = structlog.get_logger("reconcile.db")


@dataclass(frozen=True)
class RetryPolicy:
    """How a whole transaction is retried: bounded, exponential, jittered."""

    attempts: int = 6
    initial: float = 0.05
    maximum: float = 2.0


def retrying(
    policy: RetryPolicy, what: str, *, retry_duplicate: str | None = None, **log_fields: Any
) -> AsyncRetrying:
    """Re-run on a temporary failure (and, given ``retry_duplicate``, on a duplicate key: an
    expected race, logged at info level under that event name instead of as a ``db retry``
    warning), bounded by ``policy``, full-jitter exponential back-off, each re-run logged."""
    retryable: tuple[type[Exception], ...] = (DatabaseTemporaryError,)
    if retry_duplicate:
        retryable += (DuplicateKey,)

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if retry_duplicate and isinstance(exc, DuplicateKey):
            log.info(
                retry_duplicate,
                what=what,
                attempt=state.attempt_number,
                retry=True,
                **log_fields,
            )
            return
        if isinstance(exc, RowsMissing):  # a user's first charge: routine, not a warning
            log.debug("db rows created", what=what, detail=str(exc), retry=True, **log_fields)
            return
        log.warning(
            "db retry",
            what=what,
            attempt=state.attempt_number,
            max_attempts=policy.attempts,
            error=type(exc).__name__ if exc else None,
            detail=str(exc) if exc else None,
            retry=True,
            **log_fields,
        )

    return AsyncRetrying(
        retry=retry_if_exception_type(retryable),
        stop=stop_after_attempt(policy.attempts),
        wait=wait_random_exponential(multiplier=policy.initial, max=policy.maximum),
        before_sleep=before_sleep,
        reraise=True,
    )
