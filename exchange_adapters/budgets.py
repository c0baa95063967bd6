"""Request budgets: what the exchanges allow per IP (egress) or per account, shared by every client
of the process, and the daemon's share of it.

The trading engine reaches the exchanges from the same IP (or proxy) as the daemon, so the
exchange's per-IP budget is the engine's too: going past it gets the IP banned and stops live
trading for every user. Each limit the exchange states is one :class:`Budget`:

- one per platform per **egress** (``direct`` or the proxy's ``kind://host:port``) where the
  exchange counts per IP: Binance USDⓈ-M 2,400 request weight a minute, Bybit 600 requests per 5 s;
- one per platform per **account** where it counts per UID: OKX positions-history 10 per 2 s,
  Gate 200 per 10 s, Bitget 20 per second. (An account is an ``hg_trading_api_config`` row; two
  rows with keys of one exchange UID share the exchange's budget but not ours.)

The daemon takes ``share`` of each (default 0.4: the larger part stays the engine's), as a token
bucket refilled at ``share × limit / window`` with at most one second's refill (or one request's
cost) in hand, so no window of the exchange's, fixed or sliding, sees more than the share plus
that second. Where the exchange reports the IP's whole use (Binance ``X-MBX-USED-WEIGHT-1M``, the
engine's use included), a reading at or above ``ceiling`` of the limit stops every request
through that egress until the exchange's window turns.

A 429 or 418 (and Bybit's 403) stops every request to that platform through that egress until its
``Retry-After`` (or the platform's default ban): no request is sent during a ban. A request that
would wait longer than ``max_wait`` fails at once with :class:`~reconcile.errors.RateLimited`
without touching the exchange; the stream is tried again next cycle.
See docs/exchanges.md.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import structlog

from exchange_adapters.answers import ResponseCapture, parse_retry_after
from reconcile.errors import RateLimited

log = structlog.get_logger("exchange_adapters")

DIRECT = "direct"
#: the daemon's part of each budget unless configured (``exchanges.<platform>.budget.share``)
DEFAULT_SHARE = 0.4
#: an observed use at or above this part of the limit pauses the egress until the window turns
CEILING = 0.95


@dataclass(frozen=True)
class BudgetOptions:
    """One limit as the exchange states it, and the daemon's part of it."""

    limit: float  # weight (or requests) per window
    window: float  # seconds
    share: float = DEFAULT_SHARE

    @property
    def rate(self) -> float:
        """The daemon's refill, units per second."""
        return self.limit * self.share / self.window


@dataclass(frozen=True)
class Limits:
    """What one platform allows and how it says so (per platform spec)."""

    #: per IP (egress); None: the exchange states no per-IP budget for what we call
    egress: BudgetOptions | None = None
    #: per account (UID)
    account: BudgetOptions | None = None
    #: request weight per ccxt implicit endpoint (1 when not listed)
    weights: Mapping[str, int] = field(default_factory=dict)
    #: header carrying the IP's used weight in the current window, all its clients included
    used_header: str | None = None
    #: HTTP statuses that stop the egress, and the ban when no Retry-After comes with them
    bans: Mapping[int, float] = field(default_factory=lambda: {429: 60.0, 418: 120.0})

    def weight(self, endpoint: str) -> int:
        return self.weights.get(endpoint, 1)


@dataclass
class BudgetStats:
    """What a budget did, for metrics (all totals since start)."""

    spent: float = 0.0  # the daemon's own weight
    waited: float = 0.0  # seconds requests waited for the budget (or a ban)
    refused: dict[int, int] = field(default_factory=dict)  # status -> answers that ban
    observed: float | None = None  # the exchange's last reading of the IP's use
    banned_until: float = 0.0  # wall-clock seconds


class Budget:
    """A token bucket for one limit, with the exchange's own reading and its bans.

    ``acquire(cost)`` waits (FIFO) until the daemon's share allows ``cost`` and no ban or full
    reading stands; ``record(status, headers)`` takes each answer's reading and bans.
    """

    def __init__(
        self,
        name: str,
        options: BudgetOptions,
        *,
        used_header: str | None = None,
        bans: Mapping[int, float] | None = None,
        max_wait: float = 60.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not (options.limit > 0 and options.window > 0 and 0 < options.share <= 1):
            raise ValueError(f"budget {name}: limit, window and share must be positive")
        self.name = name
        self.options = options
        self.used_header = used_header
        self.bans = dict(bans or {})
        self.max_wait = max_wait
        self.stats = BudgetStats()
        self._clock = clock
        self._sleep = sleep
        self._capacity = max(options.rate * 1.0, 1.0)
        self._tokens = self._capacity
        self._refilled = clock()
        self._lock = asyncio.Lock()
        self._observed_window = -1

    def _window_of(self, at: float) -> int:
        return math.floor(at / self.options.window)

    def _refill(self, now: float) -> None:
        self._tokens = min(
            self._capacity, self._tokens + (now - self._refilled) * self.options.rate
        )
        self._refilled = now

    def _blocked_for(self, cost: float, now: float) -> float:
        """Seconds until a request of ``cost`` may go (0: now)."""
        if now < self.stats.banned_until:
            return self.stats.banned_until - now
        observed = self.stats.observed
        if (
            observed is not None
            and self._observed_window == self._window_of(now)
            and observed + cost > self.options.limit * CEILING
        ):
            return (self._window_of(now) + 1) * self.options.window - now + 0.01
        self._refill(now)
        need = min(cost, self._capacity)
        if self._tokens >= need:
            return 0.0
        return (need - self._tokens) / self.options.rate

    async def acquire(self, cost: float = 1.0) -> None:
        """Wait for ``cost``; :class:`RateLimited` (nothing sent) when that is past ``max_wait``."""
        async with self._lock:
            while True:
                now = self._clock()
                wait = self._blocked_for(cost, now)
                if wait <= 0:
                    break
                if wait > self.max_wait:
                    raise RateLimited(
                        f"{self.name}: no request for another {wait:.0f}s "
                        f"({'banned' if now < self.stats.banned_until else 'budget spent'})",
                        retry_after=wait,
                    )
                self.stats.waited += wait
                await self._sleep(wait)
            self._tokens -= min(cost, self._capacity)
            self.stats.spent += cost

    def record(self, answer: ResponseCapture) -> None:
        """Take one answer's reading of the IP's use and any ban it carries."""
        now = self._clock()
        if self.used_header is not None:
            value = answer.header(self.used_header)
            if value is not None:
                try:
                    self.stats.observed = float(value)
                    self._observed_window = self._window_of(now)
                except ValueError:
                    pass
        status = answer.status
        if status is None or status not in self.bans:
            return
        self.stats.refused[status] = self.stats.refused.get(status, 0) + 1
        retry_after = parse_retry_after(answer.header("Retry-After"))
        seconds = retry_after if retry_after is not None else self.bans[status]
        until = now + seconds
        if until > self.stats.banned_until:
            self.stats.banned_until = until
        log.error(
            "exchange stopped us",
            budget=self.name,
            status=status,
            retry_after_s=round(seconds, 3),
            action="no request through this egress until then",
        )


class Budgets:
    """Every budget of the process, by (platform, egress) and (platform, account id)."""

    def __init__(self, *, max_wait: float = 60.0) -> None:
        self.max_wait = max_wait
        self._egress: dict[tuple[str, str], Budget] = {}
        self._account: dict[tuple[str, int], Budget] = {}

    def for_egress(
        self, platform: str, egress: str, limits: Limits, options: BudgetOptions | None
    ) -> Budget | None:
        if options is None:
            return None
        key = (platform, egress)
        budget = self._egress.get(key)
        if budget is None:
            budget = Budget(
                f"{platform} via {egress}",
                options,
                used_header=limits.used_header,
                bans=limits.bans,
                max_wait=self.max_wait,
            )
            self._egress[key] = budget
        return budget

    def for_account(
        self, platform: str, account_id: int, options: BudgetOptions | None
    ) -> Budget | None:
        if options is None:
            return None
        key = (platform, account_id)
        budget = self._account.get(key)
        if budget is None or budget.options != options:
            budget = Budget(f"{platform} account {account_id}", options, max_wait=self.max_wait)
            self._account[key] = budget
        return budget

    def egress_stats(self) -> dict[tuple[str, str], BudgetStats]:
        return {key: b.stats for key, b in self._egress.items()}

    def account_totals(self) -> dict[str, BudgetStats]:
        """Per platform, the account budgets summed (one series per account would not scale)."""
        totals: dict[str, BudgetStats] = {}
        for (platform, _), budget in self._account.items():
            total = totals.setdefault(platform, BudgetStats())
            total.spent += budget.stats.spent
            total.waited += budget.stats.waited
        return totals
