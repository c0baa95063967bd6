"""The base of the fake exchanges: an aiohttp server on 127.0.0.1 (random port) that records
every request, checks credentials and signatures like the real exchange, and injects faults.

A subclass declares its routes (each a public or private *endpoint* name: ``markets`` for what
``fetch_markets`` calls, ``closed`` for the closed-position call) and the exchange's envelopes.
"""

from __future__ import annotations

import asyncio
import random
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, Self

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HTML_PAGE = (
    "<!DOCTYPE html><html><head><title>Just a moment...</title></head>"
    "<body><h1>Checking your browser</h1><p>cloudflare</p></body></html>"
)


@dataclass(frozen=True)
class Fault:
    """One injected failure, served instead of (or, for ``slow``, before) the real answer."""

    kind: str
    status: int = 200
    retry_after: str | None = None
    delay: float = 0.0
    code: str | None = None

    @classmethod
    def rate_limit(cls, retry_after: str | None = "1") -> Fault:
        return cls("rate_limit", status=429, retry_after=retry_after)

    @classmethod
    def ban(cls, retry_after: str | None = "1") -> Fault:
        return cls("rate_limit", status=418, retry_after=retry_after)

    @classmethod
    def http(cls, status: int) -> Fault:
        return cls("http", status=status)

    @classmethod
    def timeout(cls, delay: float = 3.0) -> Fault:
        return cls("slow", delay=delay)

    @classmethod
    def slow(cls, delay: float) -> Fault:
        return cls("slow", delay=delay)

    @classmethod
    def html(cls) -> Fault:
        return cls("html")

    @classmethod
    def malformed_json(cls) -> Fault:
        return cls("malformed")

    @classmethod
    def not_envelope(cls) -> Fault:
        return cls("not_envelope")

    @classmethod
    def truncated(cls) -> Fault:
        """A 200 whose body stops short of its Content-Length: the connection drops mid-body."""
        return cls("truncated")

    @classmethod
    def disconnect(cls) -> Fault:
        """The connection is closed without any answer."""
        return cls("disconnect")

    @classmethod
    def auth(cls) -> Fault:
        return cls("auth")

    @classmethod
    def exchange_error(cls, code: str, status: int = 400) -> Fault:
        return cls("exchange_error", status=status, code=code)


@dataclass
class Seen:
    """One request as the fake received it."""

    endpoint: str
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    at: float = 0.0  # time.monotonic() on arrival


@dataclass
class _Route:
    method: str
    path: str
    endpoint: str
    private: bool
    handler: Handler


@dataclass
class _Pending:
    fault: Fault
    times: int


class FakeExchange(ABC):
    """A fake exchange server. ``async with FakeX() as fake: fake.url ...``."""

    platform: ClassVar[str]

    def __init__(
        self,
        *,
        api_key: str = "test-api-key",
        secret: str = "test-api-secret",  # noqa: S107 - a fake's credential
        passphrase: str = "test-passphrase",  # noqa: S107
        seed: int = 7,
    ) -> None:
        self.api_key = api_key
        self.secret = secret
        self.passphrase = passphrase
        self.records: list[dict[str, Any]] = []
        self.requests: list[Seen] = []
        #: each later page repeats this many records of the previous page (cursor/offset APIs)
        self.page_overlap = 0
        #: serve each page's records in random order
        self.shuffle_pages = False
        self._random = random.Random(seed)
        self._faults: dict[str, deque[_Pending]] = {}
        #: bodies served byte for byte, in order, to the next requests of ``closed`` (fixtures)
        self.canned: deque[bytes] = deque()
        #: the canned bodies served so far
        self.served: list[bytes] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.port = 0

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> Self:
        app = web.Application()
        for route in self.routes():
            app.router.add_route(route.method, route.path, self._wrap(route))
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await self._site.start()
        server = self._site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- test controls --------------------------------------------------------------------------

    def fail(self, fault: Fault, *, endpoint: str = "closed", times: int = 1) -> None:
        """Serve ``fault`` for the next ``times`` requests of ``endpoint`` (``*``: any)."""
        self._faults.setdefault(endpoint, deque()).append(_Pending(fault, times))

    def serve_body(self, body: bytes) -> None:
        """Answer the next request of ``closed`` with exactly ``body`` (after authentication);
        later requests get the fake's own answer again."""
        self.canned.append(body)

    def count(self, endpoint: str = "closed") -> int:
        return sum(1 for seen in self.requests if endpoint in ("*", seen.endpoint))

    def seen(self, endpoint: str = "closed") -> list[Seen]:
        return [s for s in self.requests if s.endpoint == endpoint]

    def reset_counts(self) -> None:
        self.requests.clear()

    # --- what a subclass provides ---------------------------------------------------------------

    @abstractmethod
    def routes(self) -> list[_Route]: ...

    @abstractmethod
    def authenticate(self, request: web.Request) -> web.Response | None:
        """None when key and signature are right, else the exchange's auth error answer."""

    @abstractmethod
    def auth_error(self) -> web.Response: ...

    @abstractmethod
    def rate_limit_body(self) -> dict[str, Any]: ...

    @abstractmethod
    def error_body(self, code: str) -> dict[str, Any]: ...

    @abstractmethod
    def not_envelope_body(self) -> Any: ...

    def admit(self, route: _Route, request: web.Request) -> web.StreamResponse | None:
        """Called on every request's arrival, before faults and authentication: an answer here
        refuses the request (an exchange's request-weight limit). None (the default) serves it."""
        return None

    def stamp(self, route: _Route, request: web.Request, response: web.StreamResponse) -> None:
        """Called with every answer before it is sent (headers such as the used weight); a
        response already under way (a dropped connection) can no longer take headers."""
        return None

    def route(
        self, method: str, path: str, endpoint: str, handler: Handler, *, private: bool
    ) -> _Route:
        return _Route(method, path, endpoint, private, handler)

    # --- paging helpers for subclasses ----------------------------------------------------------

    def page(self, rows: list[dict[str, Any]], start: int, limit: int) -> list[dict[str, Any]]:
        """``limit`` rows from ``start`` - but a later page starts ``page_overlap`` rows early
        (as if that many records had arrived meanwhile) - maybe shuffled."""
        begin = max(0, start - self.page_overlap) if start > 0 else 0
        chunk = list(rows[begin : begin + limit])
        if self.shuffle_pages:
            self._random.shuffle(chunk)
        return chunk

    # --- plumbing -------------------------------------------------------------------------------

    def _take(self, endpoint: str) -> Fault | None:
        for key in (endpoint, "*"):
            queue = self._faults.get(key)
            if queue:
                pending = queue[0]
                pending.times -= 1
                if pending.times <= 0:
                    queue.popleft()
                return pending.fault
        return None

    def _wrap(self, route: _Route) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            self.requests.append(
                Seen(
                    endpoint=route.endpoint,
                    method=request.method,
                    path=request.path,
                    query=dict(request.query),
                    headers=dict(request.headers),
                    at=time.monotonic(),
                )
            )
            refused = self.admit(route, request)
            if refused is not None:
                self.stamp(route, request, refused)
                return refused
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                response = await self._answer(route, request)
            finally:
                self.in_flight -= 1
            self.stamp(route, request, response)
            return response

        return handle

    async def _answer(self, route: _Route, request: web.Request) -> web.StreamResponse:
        fault = self._take(route.endpoint)
        if fault is not None and fault.kind == "slow":
            await asyncio.sleep(fault.delay)
            fault = None
        if fault is not None and fault.kind in ("truncated", "disconnect"):
            return await self._drop(fault, request)
        if fault is not None:
            return self._serve_fault(fault)
        if route.private:
            refused = self.authenticate(request)
            if refused is not None:
                return refused
        if route.endpoint == "closed" and self.canned:
            body = self.canned.popleft()
            self.served.append(body)
            return web.Response(body=body, content_type="application/json")
        return await route.handler(request)

    async def _drop(self, fault: Fault, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            status=200, headers={"Content-Type": "application/json", "Content-Length": "4096"}
        )
        if fault.kind == "truncated":
            await response.prepare(request)
            await response.write(b'{"code":"0","data":[{"posId":"1",')
        transport = request.transport
        if transport is not None:
            transport.close()
        return response

    def _serve_fault(self, fault: Fault) -> web.Response:
        if fault.kind == "rate_limit":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            return web.json_response(self.rate_limit_body(), status=fault.status, headers=headers)
        if fault.kind == "http":
            return web.Response(
                status=fault.status,
                text=f"<html><body><h1>{fault.status}</h1>upstream error</body></html>",
                content_type="text/html",
            )
        if fault.kind == "html":
            return web.Response(text=HTML_PAGE, content_type="text/html")
        if fault.kind == "malformed":
            return web.Response(text='{"code":"0","data":[{"id":', content_type="application/json")
        if fault.kind == "not_envelope":
            return web.json_response(self.not_envelope_body())
        if fault.kind == "auth":
            return self.auth_error()
        if fault.kind == "exchange_error":
            assert fault.code is not None
            return web.json_response(self.error_body(fault.code), status=fault.status)
        raise AssertionError(f"unknown fault {fault.kind}")


@dataclass(frozen=True)
class MarketSpec:
    """A USDT-margined perpetual the fakes list: base coin and each exchange's contract size."""

    base: str
    okx_ct_val: str = "0.01"
    gate_multiplier: str = "0.0001"
    price: str = "60000"
    extra: dict[str, Any] = field(default_factory=dict)


DEFAULT_MARKETS = (
    MarketSpec("BTC", okx_ct_val="0.01", gate_multiplier="0.0001", price="60000"),
    MarketSpec("ETH", okx_ct_val="0.1", gate_multiplier="0.01", price="3000"),
    MarketSpec("1000PEPE", okx_ct_val="10", gate_multiplier="10", price="0.012"),
)


def query_int(request: web.Request, name: str, default: int | None = None) -> int | None:
    value = request.query.get(name)
    if value is None or value == "":
        return default
    return int(value)
