"""Fake Binance USDⓈ-M futures: ``/fapi/v1/exchangeInfo`` and ``/fapi/v1/userTrades``.

Wire format per Binance's "Account Trade List (USER_DATA)": a bare JSON array of fills, oldest
first; errors ``{"code": -XXXX, "msg": "..."}``. Requests are authenticated like Binance:
``X-MBX-APIKEY`` header and ``signature`` = hex HMAC-SHA256 of the rest of the query string.

Opt-in, for the request-budget tests and bench (off by default: the other tests see no change):

- ``FakeBinance(weight_limit=IpWeightLimit(...))``: the fake is one IP and enforces Binance's
  per-IP request weight (see :class:`IpWeightLimit`), optionally with the trading engine's
  steady load on the same IP;
- ``fake.add_account(api_key, secret)``: many API accounts on one fake (one IP), each with its
  own records, told apart by ``X-MBX-APIKEY``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Self

from aiohttp import web

from kits.fake_exchanges.server import (
    DEFAULT_MARKETS,
    FakeExchange,
    MarketSpec,
    _Route,
    query_int,
)

SERVER_TIME = 1_780_000_000_000
SEVEN_DAYS_MS = 7 * 24 * 3600 * 1000

_ids = itertools.count(900_000_001)


def fill(
    *,
    order_id: int,
    side: str,
    price: str,
    qty: str,
    realized_pnl: str,
    commission: str,
    time: int,
    symbol: str = "BTCUSDT",
    position_side: str = "BOTH",
    commission_asset: str = "USDT",
    fill_id: int | None = None,
    maker: bool = False,
) -> dict[str, Any]:
    """One fill exactly as userTrades serves it."""
    quote_qty = Decimal(price) * Decimal(qty)
    return {
        "symbol": symbol,
        "id": fill_id if fill_id is not None else next(_ids),
        "orderId": order_id,
        "side": side,
        "price": price,
        "qty": qty,
        "realizedPnl": realized_pnl,
        "quoteQty": format(quote_qty, "f"),
        "commission": commission,
        "commissionAsset": commission_asset,
        "time": time,
        "positionSide": position_side,
        "marginAsset": "USDT",
        "buyer": side == "BUY",
        "maker": maker,
    }


# --- the per-IP request weight ------------------------------------------------------------------
#
# Binance's documentation, as this fake implements it:
#
# * USDⓈ-M futures allow 2,400 request weight per minute per IP (exchangeInfo's ``rateLimits``:
#   REQUEST_WEIGHT, MINUTE, 1, 2400). "The limits on the API are based on the IPs, not the API
#   keys." Every answer carries ``X-MBX-USED-WEIGHT-(intervalNum)(intervalLetter)``, "the current
#   used weight for the IP for all request rate limiters defined".
#   https://developers.binance.com/docs/binance-spot-api-docs/rest-api/limits (IP Limits),
#   the same text for futures: https://binance-docs.github.io/apidocs/futures/en/#limits
# * Weights: ``GET /fapi/v1/userTrades`` 5
#   (https://developers.binance.com/docs/derivatives/usds-margined-futures/trade/rest-api/Account-Trade-List),
#   ``GET /fapi/v1/exchangeInfo`` 1 (ccxt 4.5.90's binance ``fapiPublic`` table, ``cost: 1``,
#   which is Binance's weight for the fapi: ``rateLimit`` 50 ms per unit).
# * The minute is a fixed clock interval, not a sliding one: "a 1 MINUTE interval starts every
#   minute. Request submitted at 00:01:23.456 counts towards the 00:01:00 minute's limit. Once
#   the 00:02:00 minute starts, the count will reset to zero again."
#   https://developers.binance.com/docs/binance-spot-api-docs/websocket-api/rate-limits
# * Past the limit: HTTP 429. "When a 429 is received, it's your obligation as an API to back off
#   and not spam the API. Repeatedly violating rate limits and/or failing to back off after
#   receiving 429s will result in an automated IP ban (HTTP status 418). IP bans are tracked and
#   scale in duration for repeat offenders, from 2 minutes to 3 days. A Retry-After header is
#   sent with a 418 or 429 responses and will give the number of seconds required to wait, in the
#   case of a 429, to prevent a ban, or, in the case of a 418, until the ban is over."
#   (the limits pages above; also https://developers.binance.com/en/docs/products/oms/basics/4.rate-limits)
# * Both answer error -1003 TOO_MANY_REQUESTS: "Too much request weight used; current limit is
#   %s request weight per %s. Please use WebSocket Streams for live updates to avoid polling the
#   API." / "Way too much request weight used; IP banned until %s. Please use WebSocket Streams
#   for live updates to avoid bans." (https://developers.binance.com/docs/derivatives/portfolio-margin-pro/error-code,
#   the shared error-code list).
#
# What the docs leave open, and this fake's choice:
# * a request is counted when it arrives, the one that crosses the limit included (its 429 shows
#   a used weight above the limit); requests refused with 418 are not counted;
# * "back off" = send nothing more until the window that got the 429 ends: any request before
#   then is "failing to back off" and starts a ban;
# * the ban scale: the n-th ban lasts ``ban_min × 2**(n-1)``, at most ``ban_max`` (2 min, 4, 8,
#   ... up to 3 days); the docs give only the range.

#: the weight of each endpoint the fake serves (see above)
WEIGHTS: dict[str, int] = {"closed": 5, "markets": 1}
USED_WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"
#: the used weight the IP's limit gave a request on arrival (what its answer's header says)
_USED = web.RequestKey("used_weight", int)
THREE_DAYS = 3 * 24 * 3600.0


@dataclass(frozen=True)
class Verdict:
    """What the IP's weight says about one request."""

    status: int  # 200: serve it; 429 or 418: refuse it
    used: int  # the IP's used weight in the current window, after this request
    retry_after: int | None = None  # seconds, for 429 / 418
    banned_until: float | None = None  # clock time, for 418


class Weights(dict[str, float]):
    """Weight by who; like a Counter, an absent name weighs 0 (and is not added by the read)."""

    def __missing__(self, key: str) -> float:
        return 0


@dataclass
class WindowTotal:
    """One window's weight, by client (``client``: the fake's HTTP clients, ``engine``)."""

    start: float
    weight: Weights = field(default_factory=Weights)
    peak: float = 0.0


@dataclass
class IpWeightLimit:
    """One IP's request weight at Binance USDⓈ-M futures (the notes above).

    ``limit`` weight per ``window`` seconds, windows fixed on the clock (index ``now // window``:
    60 s is the clock minute). ``engine_load``: weight per window the trading engine on the same
    IP sends, evenly, a request every ``engine_tick`` seconds (while the fake runs); the engine
    does not know of the fake's other clients and does not back off either. ``clock`` is wall
    time by default (Binance's windows are clock minutes); a test may pass its own, with
    ``engine_tick=0`` (no background engine) and call :meth:`engine_step` itself.
    """

    limit: int = 2400
    window: float = 60.0
    ban_min: float = 120.0
    ban_max: float = THREE_DAYS
    engine_load: float = 0.0
    engine_tick: float = 0.1
    clock: Callable[[], float] = time.time
    #: answers by (who, status): ("client", 200), ("engine", 429), ...
    answers: Counter[tuple[str, int]] = field(default_factory=Counter)
    #: weight counted (admitted or answered 429) by who
    weight: Weights = field(default_factory=Weights)
    #: bans issued, in order: (start, end)
    bans: list[tuple[float, float]] = field(default_factory=list)
    #: every closed and the current window
    windows: list[WindowTotal] = field(default_factory=list)
    #: (clock, used weight) after each client request
    samples: list[tuple[float, int]] = field(default_factory=list)
    _index: int | None = None
    _used: float = 0.0
    _warned_until: float = 0.0
    _banned_until: float = 0.0
    _engine_at: float | None = None
    _task: asyncio.Task[None] | None = None

    # --- what the tests read ------------------------------------------------------------------

    def count(self, status: int, who: str | None = None) -> int:
        return sum(n for (w, s), n in self.answers.items() if s == status and who in (None, w))

    @property
    def rate_limited(self) -> int:
        """429 answers (every client, the engine included)."""
        return self.count(429)

    @property
    def banned(self) -> int:
        """418 answers (every client, the engine included)."""
        return self.count(418)

    def used(self) -> int:
        self._roll(self.clock())
        return int(self._used)

    def min_seconds(self, weight: float) -> float:
        """The least time ``weight`` takes in what the engine leaves of the IP's limit."""
        return weight / (self.limit - self.engine_load) * self.window

    def interval_text(self) -> str:
        minutes = self.window / 60
        if minutes.is_integer():
            return f"{minutes:g} MINUTE"
        return f"{self.window:g} SECOND"

    # --- the rule -------------------------------------------------------------------------------

    def _roll(self, now: float) -> None:
        index = math.floor(now / self.window)
        if index != self._index:
            self._index = index
            self._used = 0.0
            self.windows.append(WindowTotal(start=index * self.window))

    def _ban(self, now: float) -> float:
        duration = min(self.ban_max, self.ban_min * 2.0 ** len(self.bans))
        self._banned_until = now + duration
        self.bans.append((now, self._banned_until))
        return self._banned_until

    def charge(self, weight: float, who: str = "client") -> Verdict:
        """Count one request of ``weight`` arriving now, and say how it is answered."""
        now = self.clock()
        self._roll(now)
        current = self.windows[-1]
        if now < self._banned_until or now < self._warned_until:
            until = self._banned_until if now < self._banned_until else self._ban(now)
            self.answers[(who, 418)] += 1
            return Verdict(418, int(self._used), max(1, math.ceil(until - now)), until)
        self._used += weight
        self.weight[who] += weight
        current.weight[who] += weight
        current.peak = max(current.peak, self._used)
        if self._used > self.limit:
            window_end = (self._index or 0) * self.window + self.window
            self._warned_until = window_end
            self.answers[(who, 429)] += 1
            return Verdict(429, int(self._used), max(1, math.ceil(window_end - now)))
        self.answers[(who, 200)] += 1
        return Verdict(200, int(self._used))

    # --- the engine on the same IP ----------------------------------------------------------------

    def engine_step(self) -> Verdict | None:
        """The engine's weight since its last request, sent as one request now (None: none due)."""
        now = self.clock()
        self._roll(now)
        start = self.windows[-1].start
        since = start if self._engine_at is None else max(self._engine_at, start)
        self._engine_at = now
        weight = self.engine_load * (now - since) / self.window
        if weight <= 0:
            return None
        return self.charge(weight, who="engine")

    async def _engine(self) -> None:
        while True:
            await asyncio.sleep(self.engine_tick)
            self.engine_step()

    def start_engine(self) -> None:
        """The engine's background requests; its first counts its load from the window's start
        (an engine that has long been running)."""
        if self.engine_load > 0 and self.engine_tick > 0 and self._task is None:
            self._task = asyncio.create_task(self._engine(), name="fake binance engine load")

    async def stop_engine(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@dataclass
class Account:
    """One API account on a fake serving several (``FakeBinance.add_account``)."""

    api_key: str
    secret: str
    records: list[dict[str, Any]] = field(default_factory=list)


def _market(spec: MarketSpec) -> dict[str, Any]:
    symbol = f"{spec.base}USDT"
    return {
        "symbol": symbol,
        "pair": symbol,
        "contractType": "PERPETUAL",
        "deliveryDate": 4133404800000,
        "onboardDate": 1569398400000,
        "status": "TRADING",
        "maintMarginPercent": "2.5000",
        "requiredMarginPercent": "5.0000",
        "baseAsset": spec.base,
        "quoteAsset": "USDT",
        "marginAsset": "USDT",
        "pricePrecision": 2,
        "quantityPrecision": 3,
        "baseAssetPrecision": 8,
        "quotePrecision": 8,
        "underlyingType": "COIN",
        "underlyingSubType": ["PoW"],
        "settlePlan": 0,
        "triggerProtect": "0.0500",
        "liquidationFee": "0.012500",
        "marketTakeBound": "0.05",
        "maxMoveOrderLimit": 10000,
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": "556.80",
                "maxPrice": "4529764",
                "tickSize": "0.10",
            },
            {"filterType": "LOT_SIZE", "stepSize": "0.001", "maxQty": "1000", "minQty": "0.001"},
            {
                "filterType": "MARKET_LOT_SIZE",
                "stepSize": "0.001",
                "maxQty": "120",
                "minQty": "0.001",
            },
            {"filterType": "MAX_NUM_ORDERS", "limit": 200},
            {"filterType": "MAX_NUM_ALGO_ORDERS", "limit": 10},
            {"filterType": "MIN_NOTIONAL", "notional": "100"},
            {
                "filterType": "PERCENT_PRICE",
                "multiplierUp": "1.0500",
                "multiplierDown": "0.9500",
                "multiplierDecimal": "4",
            },
        ],
        "orderTypes": [
            "LIMIT",
            "MARKET",
            "STOP",
            "STOP_MARKET",
            "TAKE_PROFIT",
            "TAKE_PROFIT_MARKET",
            "TRAILING_STOP_MARKET",
        ],
        "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"],
    }


class FakeBinance(FakeExchange):
    platform = "binance"

    def __init__(
        self,
        *,
        markets: tuple[MarketSpec, ...] = DEFAULT_MARKETS,
        weight_limit: IpWeightLimit | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.markets = markets
        #: None: no request-weight limit (the default); else this fake is one IP under it
        self.weight_limit = weight_limit
        #: API key -> account, when the fake serves several (empty: the one of ``api_key``)
        self.accounts: dict[str, Account] = {}

    async def start(self) -> Self:
        await super().start()
        if self.weight_limit is not None:
            self.weight_limit.start_engine()
        return self

    async def stop(self) -> None:
        if self.weight_limit is not None:
            await self.weight_limit.stop_engine()
        await super().stop()

    def add_account(self, api_key: str, secret: str) -> list[dict[str, Any]]:
        """Serve one more API account; returns its record list (fill it)."""
        account = Account(api_key, secret)
        self.accounts[api_key] = account
        return account.records

    # --- the request weight ---------------------------------------------------------------------

    def admit(self, route: _Route, request: web.Request) -> web.StreamResponse | None:
        limit = self.weight_limit
        if limit is None:
            return None
        verdict = limit.charge(WEIGHTS[route.endpoint])
        limit.samples.append((limit.clock(), verdict.used))
        request[_USED] = verdict.used
        if verdict.status == 200:
            return None
        headers = {"Retry-After": str(verdict.retry_after)}
        if verdict.status == 429:
            msg = (
                f"Too much request weight used; current limit is {limit.limit} request weight "
                f"per {limit.interval_text()}. Please use WebSocket Streams for live updates "
                "to avoid polling the API."
            )
        else:
            until = round((verdict.banned_until or 0) * 1000)
            msg = (
                f"Way too much request weight used; IP banned until {until}. Please use "
                "WebSocket Streams for live updates to avoid bans."
            )
        return web.json_response(
            {"code": -1003, "msg": msg}, status=verdict.status, headers=headers
        )

    def stamp(self, route: _Route, request: web.Request, response: web.StreamResponse) -> None:
        if self.weight_limit is not None and not response.prepared:
            used = request.get(_USED, self.weight_limit.used())
            response.headers[USED_WEIGHT_HEADER] = str(used)

    def routes(self) -> list[_Route]:
        return [
            self.route(
                "GET", "/fapi/v1/exchangeInfo", "markets", self._exchange_info, private=False
            ),
            self.route("GET", "/fapi/v1/userTrades", "closed", self._user_trades, private=True),
        ]

    # --- envelopes ------------------------------------------------------------------------------

    def error_body(self, code: str) -> dict[str, Any]:
        messages = {
            "-1000": "An unknown error occured while processing the request.",
            "-1001": "Internal error; unable to process your request. Please try again.",
            "-1021": "Timestamp for this request is outside of the recvWindow.",
            "-1121": "Invalid symbol.",
            "-2015": "Invalid API-key, IP, or permissions for action.",
        }
        return {"code": int(code), "msg": messages.get(code, "error")}

    def rate_limit_body(self) -> dict[str, Any]:
        return {
            "code": -1003,
            "msg": "Too many requests; current limit is 2400 requests per "
            "minute. Please use the websocket for live updates to avoid polling the API.",
        }

    def not_envelope_body(self) -> Any:
        return {"status": "ok", "trades": "see /fapi/v2/userTrades"}

    def auth_error(self) -> web.Response:
        return web.json_response(self.error_body("-2015"), status=401)

    def authenticate(self, request: web.Request) -> web.Response | None:
        key = request.headers.get("X-MBX-APIKEY")
        if self.accounts:
            account = self.accounts.get(key or "")
            if account is None:
                return self.auth_error()
            secret = account.secret
        elif key != self.api_key:
            return self.auth_error()
        else:
            secret = self.secret
        raw = request.query_string
        payload, sep, signature = raw.rpartition("&signature=")
        expected = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
        signed = sep and hmac.compare_digest(signature, expected)
        if not signed or "timestamp" not in request.query:
            return web.json_response(
                {"code": -1022, "msg": "Signature for this request is not valid."}, status=400
            )
        return None

    # --- handlers -------------------------------------------------------------------------------

    async def _exchange_info(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "timezone": "UTC",
                "serverTime": SERVER_TIME,
                "futuresType": "U_MARGINED",
                "rateLimits": [
                    {
                        "rateLimitType": "REQUEST_WEIGHT",
                        "interval": "MINUTE",
                        "intervalNum": 1,
                        "limit": self.weight_limit.limit if self.weight_limit else 2400,
                    },
                    {
                        "rateLimitType": "ORDERS",
                        "interval": "MINUTE",
                        "intervalNum": 1,
                        "limit": 1200,
                    },
                ],
                "exchangeFilters": [],
                "assets": [
                    {"asset": "USDT", "marginAvailable": True, "autoAssetExchange": "-10000"}
                ],
                "symbols": [_market(spec) for spec in self.markets],
            }
        )

    async def _user_trades(self, request: web.Request) -> web.Response:
        symbol = request.query.get("symbol")
        if not symbol:
            return web.json_response(
                {
                    "code": -1102,
                    "msg": "Mandatory parameter 'symbol' was not sent, was empty/null, "
                    "or malformed.",
                },
                status=400,
            )
        if symbol not in {f"{m.base}USDT" for m in self.markets}:
            return web.json_response(self.error_body("-1121"), status=400)
        start = query_int(request, "startTime")
        end = query_int(request, "endTime")
        limit = min(query_int(request, "limit", 500) or 500, 1000)
        if start is not None and end is not None and end - start > SEVEN_DAYS_MS:
            return web.json_response(
                {"code": -4166, "msg": "Search window is restricted to recent 7 days only."},
                status=400,
            )
        if start is None and end is None:
            end = SERVER_TIME
        if start is None:
            start = (end or SERVER_TIME) - SEVEN_DAYS_MS
        if end is None:
            end = start + SEVEN_DAYS_MS
        records = (
            self.accounts[request.headers["X-MBX-APIKEY"]].records
            if self.accounts
            else self.records
        )
        rows = sorted(
            (r for r in records if r["symbol"] == symbol and start <= r["time"] <= end),
            key=lambda r: (r["time"], r["id"]),
        )
        return web.json_response(self.page(rows, 0, limit))
