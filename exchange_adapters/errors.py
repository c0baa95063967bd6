"""ccxt's exceptions translated once, at the adapter boundary, into ``reconcile.errors``.

::

    ccxt exception (4.5.x)                         ->  reconcile.errors
    RateLimitExceeded, DDoSProtection, HTTP 429/418 ->  RateLimited (retry_after from Retry-After)
    exchange code listed as temporary by adapter    ->  ExchangeUnavailable
    InvalidNonce (clock skew, expired timestamp)    ->  ExchangeUnavailable
    aiohttp_socks/python_socks proxy errors         ->  ExchangeUnavailable (the SOCKS5 proxy)
    NetworkError (timeout, 5xx, maintenance, ...)   ->  ExchangeUnavailable
    bare ExchangeError from an aiohttp ClientError  ->  ExchangeUnavailable (e.g. body cut off)
    BadResponse, NullResponse                       ->  BadExchangeResponse
    bare ExchangeError on HTTP 200, no error code   ->  BadExchangeResponse (not the envelope)
    other OperationFailed (binance -1000/-1001)     ->  ExchangeUnavailable
    ExchangeError with HTTP status >= 500           ->  ExchangeUnavailable
    BadSymbol                                       ->  UnknownSymbol (an ExchangeRejected)
    ExchangeError (auth, permission, bad symbol...) ->  ExchangeRejected
    any other ccxt BaseError                        ->  ExchangeRejected

The HTTP status, headers and body of the answer are captured by a hook on ccxt's
``on_rest_response`` into a per-call :class:`ResponseCapture` (a context variable, so concurrent
calls on one client do not mix). Messages are cut short and stripped of query strings (which
carry signatures and timestamps); they never contain credentials.
See docs/architecture.md.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

import aiohttp
import aiohttp_socks
import ccxt.async_support as ccxt
import python_socks

from exchange_adapters.answers import ResponseCapture, parse_retry_after
from reconcile.errors import (
    BadExchangeResponse,
    ExchangeRejected,
    ExchangeUnavailable,
    RateLimited,
    ReconcileError,
)

_MAX_DETAIL = 240
_QUERY = re.compile(r"(https?://[^\s?\"']+)\?[^\s\"']*")


class UnknownSymbol(ExchangeRejected):
    """A robot symbol that cannot be mapped to a unified USDT-margined swap, or a market the
    exchange does not list."""


_capture: ContextVar[ResponseCapture | None] = ContextVar("ccxt_response_capture", default=None)


@contextlib.contextmanager
def capturing() -> Iterator[ResponseCapture]:
    """Collect the HTTP answer of the ccxt call made inside this block (same task)."""
    capture = ResponseCapture()
    token = _capture.set(capture)
    try:
        yield capture
    finally:
        _capture.reset(token)


def install_response_hook(exchange: Any) -> None:
    """Wrap ``exchange.on_rest_response`` so each call's status/headers/body are captured."""
    original: Callable[..., Any] = exchange.on_rest_response

    def hook(
        code: int,
        reason: str,
        url: str,
        method: str,
        response_headers: dict[str, str],
        response_body: str,
        request_headers: Any,
        request_body: Any,
    ) -> Any:
        capture = _capture.get()
        if capture is not None:
            capture.status = code
            capture.headers = dict(response_headers or {})
            capture.body = (response_body or "")[:4096]
        return original(
            code,
            reason,
            url,
            method,
            response_headers,
            response_body,
            request_headers,
            request_body,
        )

    exchange.on_rest_response = hook


def sanitize(text: str) -> str:
    """A short, secret-free rendering of a foreign error message."""
    text = _QUERY.sub(r"\1?...", text.replace("\n", " "))
    if len(text) > _MAX_DETAIL:
        text = text[:_MAX_DETAIL] + "..."
    return text


def translate(
    exc: BaseException,
    *,
    where: str,
    capture: ResponseCapture | None = None,
    temporary_codes: frozenset[str] = frozenset(),
) -> ReconcileError:
    """The project's exception for a ccxt exception (see the table in the module docstring)."""
    capture = capture or ResponseCapture()
    status = capture.status
    code = capture.exchange_code()
    shown = f"{where}: {type(exc).__name__}"
    if status is not None and status != 200:
        shown += f" (HTTP {status})"
    message = f"{shown}: {sanitize(str(exc))}"
    if isinstance(exc, ccxt.RateLimitExceeded | ccxt.DDoSProtection) or status in (429, 418):
        return RateLimited(message, retry_after=parse_retry_after(capture.header("Retry-After")))
    if code is not None and code in temporary_codes:
        return ExchangeUnavailable(message)
    if isinstance(exc, ccxt.BadResponse):
        return BadExchangeResponse(message)
    if type(exc) is ccxt.ExchangeError and isinstance(exc.__cause__, aiohttp.ClientError):
        # ccxt's catch-all for transport failures such as a body cut off mid-way
        return ExchangeUnavailable(message)
    if type(exc) is ccxt.ExchangeError and status == 200 and code is None:
        # ccxt's catch-all for a 200 body it cannot read as the exchange's envelope
        return BadExchangeResponse(message)
    if isinstance(exc, ccxt.NetworkError | ccxt.OperationFailed):
        return ExchangeUnavailable(message)
    if isinstance(exc, ccxt.ExchangeError) and status is not None and status >= 500:
        return ExchangeUnavailable(message)
    if isinstance(exc, ccxt.BadSymbol):
        return UnknownSymbol(message)
    return ExchangeRejected(message)


@contextlib.contextmanager
def map_ccxt_errors(
    where: str,
    *,
    capture: ResponseCapture | None = None,
    temporary_codes: frozenset[str] = frozenset(),
) -> Iterator[None]:
    """Translate any ccxt exception raised inside the block; ``raise ... from`` the original.

    ``where`` names the platform, account and call (e.g. ``"okx account 7: positions-history"``).
    ``temporary_codes`` are exchange error codes that ccxt classifies as permanent but that are
    worth retrying (e.g. binance -1021, gate REQUEST_EXPIRED: clock skew).
    """
    try:
        yield
    except ccxt.BaseError as exc:
        raise translate(exc, where=where, capture=capture, temporary_codes=temporary_codes) from exc
    except (aiohttp_socks.ProxyError, python_socks.ProxyError) as exc:
        # the SOCKS5 proxy refused us (bad credentials) or could not reach the host: ccxt
        # passes aiohttp_socks' errors through unwrapped. Temporary: the proxy may be fixed,
        # and the stream's cursor holds until then.
        raise ExchangeUnavailable(
            f"{where}: the SOCKS5 proxy refused: {sanitize(str(exc))}"
        ) from exc
    except (
        aiohttp_socks.ProxyConnectionError,
        aiohttp_socks.ProxyTimeoutError,
        python_socks.ProxyConnectionError,
        python_socks.ProxyTimeoutError,
    ) as exc:
        raise ExchangeUnavailable(
            f"{where}: the SOCKS5 proxy is unreachable: {sanitize(str(exc))}"
        ) from exc
