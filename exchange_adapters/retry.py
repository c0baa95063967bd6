"""The one place exchange requests are retried, and the cool-down after a permanent refusal.

Every failed attempt is logged as event ``exchange request failed`` with platform, account_id,
attempt, max_attempts, error (the translated class), detail (secret-free), will_retry, and the
wait before the next attempt. Temporary errors are retried with tenacity: bounded, exponential
with jitter, and a ``Retry-After`` sent by the exchange is honoured (a longer one than
``retry_after_max`` ends the retries). Permanent errors are not retried: logged once, and the
account (or, for a bad symbol, the account's stream of that symbol) is put in a cool-down during
which calls fail fast without touching the exchange.
See docs/architecture.md.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from exchange_adapters.errors import UnknownSymbol
from exchange_adapters.options import RetryOptions
from reconcile.errors import ExchangeRejected, PermanentError, RateLimited, TemporaryError

log = structlog.get_logger("exchange_adapters")

T = TypeVar("T")


def _error_of(state: RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome is not None else None


class _Wait(wait_base):
    """Retry-After when the exchange sent one, else exponential backoff with jitter:
    ``min(maximum, initial * 2**(n-1)) + uniform(0, initial)`` before retry n."""

    def __init__(self, policy: RetryOptions) -> None:
        self._policy = policy

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = _error_of(retry_state)
        if isinstance(exc, RateLimited) and exc.retry_after is not None:
            return exc.retry_after
        policy = self._policy
        exponent = min(retry_state.attempt_number - 1, 30)
        backoff = min(policy.maximum, policy.initial * 2.0**exponent)
        return backoff + random.uniform(0, policy.initial)  # noqa: S311 - jitter, not crypto


class _RetryAfterTooLong(stop_base):
    def __init__(self, limit: float) -> None:
        self._limit = limit

    def __call__(self, retry_state: RetryCallState) -> bool:
        exc = _error_of(retry_state)
        return (
            isinstance(exc, RateLimited)
            and exc.retry_after is not None
            and exc.retry_after > self._limit
        )


class Cooldowns:
    """Accounts (key None) or account streams (key = symbol) refused until a deadline."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until: dict[str | None, tuple[float, PermanentError]] = {}

    def check(self, symbol: str | None) -> None:
        now = self._clock()
        for key in (None, symbol):
            entry = self._until.get(key)
            if entry is None:
                continue
            deadline, cause = entry
            if now < deadline:
                kind = type(cause) if isinstance(cause, ExchangeRejected) else ExchangeRejected
                raise kind(f"in cool-down for another {deadline - now:.0f}s after: {cause}")
            del self._until[key]

    def start(self, exc: PermanentError, symbol: str | None, seconds: float) -> None:
        key = symbol if isinstance(exc, UnknownSymbol) else None
        self._until[key] = (self._clock() + seconds, exc)


async def with_retries(
    attempt_once: Callable[[], Awaitable[T]],
    *,
    policy: RetryOptions,
    cooldowns: Cooldowns,
    cooldown_seconds: float,
    symbol: str | None,
    log_fields: dict[str, Any],
) -> T:
    """Run ``attempt_once`` until it succeeds, a permanent error, or the retry budget is spent."""
    cooldowns.check(symbol)
    attempts = 0

    def failed(exc: BaseException, *, will_retry: bool, **extra: Any) -> None:
        log.warning(
            "exchange request failed",
            attempt=attempts,
            max_attempts=policy.attempts,
            error=type(exc).__name__,
            detail=str(exc),
            will_retry=will_retry,
            **log_fields,
            **extra,
        )

    def before_sleep(state: RetryCallState) -> None:
        exc = _error_of(state)
        wait = state.next_action.sleep if state.next_action is not None else None
        if exc is not None:
            failed(exc, will_retry=True, wait_s=round(wait, 3) if wait is not None else None)

    retrying = AsyncRetrying(
        retry=retry_if_exception_type(TemporaryError),
        stop=stop_after_attempt(policy.attempts) | _RetryAfterTooLong(policy.retry_after_max),
        wait=_Wait(policy),
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                attempts += 1
                return await attempt_once()
    except TemporaryError as exc:
        failed(exc, will_retry=False)
        raise
    except PermanentError as exc:
        cooldowns.start(exc, symbol, cooldown_seconds)
        failed(exc, will_retry=False, cooldown_s=cooldown_seconds)
        raise
    raise AssertionError("unreachable")  # pragma: no cover
