"""Prometheus metrics and ``/healthz``, served with aiohttp when ``metrics.listen`` is set.

Most counters are derived from the log events themselves (a structlog processor): the audit
log and the metrics can never disagree about what was charged.

A job's label is ``job_name``, not ``job``: Prometheus gives every scraped series the target's
own ``job`` label and would rename ours to ``exported_job`` (or, with ``honor_labels``, drop the
target's). The alert rules in ``deploy/prometheus/`` are written against these names;
``tests/test_prometheus_live.py`` fails when a metric they use is not scraped.
See docs/audit-log.md.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from structlog.typing import EventDict, WrappedLogger

from daemon.logs import queued
from reconcile.storage.retention import TableSize

#: the events counted by toogo_failures_total, as its ``kind`` label (spaces as underscores)
FAILURE_EVENTS = ("charge failed", "stream failed", "job failed", "sweep aborted")


@runtime_checkable
class CountsRequests(Protocol):
    """A source provider that counts its HTTP requests per platform (the exchange registry)."""

    def requests_by_platform(self) -> Mapping[str, int]: ...


@runtime_checkable
class HasBudgets(Protocol):
    """A source provider keeping the exchanges' budgets (the exchange registry)."""

    budgets: Any


#: ban statuses always exported (0 until one comes): a rule over them is never silently empty
BAN_STATUSES = ("403", "418", "429")


class BudgetCollector(Collector):
    """The exchange budgets, read at each scrape (a ban shows at once, not after the cycle):

    - ``toogo_exchange_weight_used_total{platform,egress}``: the daemon's own request weight;
    - ``toogo_exchange_budget_wait_seconds_total{platform,egress}``: time requests waited for
      the budget or a ban (per-account budgets under ``egress="accounts"``);
    - ``toogo_exchange_rate_limited_total{platform,egress,status}``: answers that stop the
      egress (429, 418, bybit's 403);
    - ``toogo_exchange_ip_weight{platform,egress}``: the exchange's last reading of the IP's
      use in its window (Binance ``X-MBX-USED-WEIGHT-1M``), the engine's included;
    - ``toogo_exchange_banned{platform,egress}``: 1 while no request may go through.
    """

    def __init__(self) -> None:
        self.budgets: Any = None

    def collect(self) -> Iterable[Any]:
        used = CounterMetricFamily(
            "toogo_exchange_weight_used",
            "Request weight the daemon spent",
            labels=["platform", "egress"],
        )
        waited = CounterMetricFamily(
            "toogo_exchange_budget_wait_seconds",
            "Seconds requests waited for a budget or a ban",
            labels=["platform", "egress"],
        )
        limited = CounterMetricFamily(
            "toogo_exchange_rate_limited",
            "Answers that stop the egress (429, 418, 403 ban)",
            labels=["platform", "egress", "status"],
        )
        observed = GaugeMetricFamily(
            "toogo_exchange_ip_weight",
            "The exchange's reading of the IP's used weight",
            labels=["platform", "egress"],
        )
        banned = GaugeMetricFamily(
            "toogo_exchange_banned",
            "1 while the exchange bans this egress",
            labels=["platform", "egress"],
        )
        if self.budgets is not None:
            now = time.time()
            for (platform, egress), stats in sorted(self.budgets.egress_stats().items()):
                used.add_metric([platform, egress], stats.spent)
                waited.add_metric([platform, egress], stats.waited)
                for status in sorted({*BAN_STATUSES, *map(str, stats.refused)}):
                    limited.add_metric(
                        [platform, egress, status], stats.refused.get(int(status), 0)
                    )
                if stats.observed is not None:
                    observed.add_metric([platform, egress], stats.observed)
                banned.add_metric([platform, egress], 1.0 if now < stats.banned_until else 0.0)
            for platform, stats in sorted(self.budgets.account_totals().items()):
                used.add_metric([platform, "accounts"], stats.spent)
                waited.add_metric([platform, "accounts"], stats.waited)
        yield from (used, waited, limited, observed, banned)


class Metrics:
    def table_sizes(self, sizes: Iterable[TableSize]) -> None:
        """The own tables' row counts and oldest rows (0: empty), from the retention job."""
        for size in sizes:
            self.table_rows.labels(size.table).set(size.rows)
            self.table_oldest.labels(size.table).set(size.oldest_seconds or 0.0)

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_start_time_seconds, memory, CPU, open files
        self.charges = Counter("toogo_charges", "Orders charged", ["source"], registry=r)
        self.would_charges = Counter(
            "toogo_would_charges",
            "Would-be charges recorded (power.mode: shadow)",
            ["source"],
            registry=r,
        )
        self.duplicates = Counter(
            "toogo_skipped_duplicates", "Charges skipped as already done", ["source"], registry=r
        )
        self.failures = Counter("toogo_failures", "Failures by kind", ["kind"], registry=r)
        self.exchange_requests = Counter(
            "toogo_exchange_requests", "HTTP requests to exchanges", ["platform"], registry=r
        )
        self.exchange_errors = Counter(
            "toogo_exchange_errors", "Failed exchange requests", ["platform"], registry=r
        )
        self.cycle_seconds = Gauge(
            "toogo_cycle_duration_seconds",
            "Duration of the last run of a job",
            ["job_name"],
            registry=r,
        )
        self.last_success = Gauge(
            "toogo_last_success_timestamp_seconds",
            "When a job last succeeded",
            ["job_name"],
            registry=r,
        )
        self.table_rows = Gauge(
            "toogo_table_rows",
            "Rows in each of the daemon's own tables (retention job)",
            ["table"],
            registry=r,
        )
        self.table_oldest = Gauge(
            "toogo_table_oldest_seconds",
            "Age of the oldest row of each own table (lowest id)",
            ["table"],
            registry=r,
        )
        self.job_interval = Gauge(
            "toogo_job_interval_seconds",
            "How often a job is scheduled (schedule.*)",
            ["job_name"],
            registry=r,
        )
        self.database_up = Gauge(
            "toogo_database_up",
            "1 while the database answers the health check, else 0",
            registry=r,
        )
        self.charging = Gauge(
            "toogo_charging",
            "1 when power.mode is charge; 0 in shadow and off (nothing charged)",
            registry=r,
        )
        self.backlog = Gauge(
            "toogo_backlog_orders",
            "Eligible orders not yet charged (look-back window)",
            registry=r,
        )
        self.backlog_age = Gauge(
            "toogo_backlog_oldest_age_seconds",
            "Age of the oldest eligible order not yet charged (look-back window); 0 when none",
            registry=r,
        )
        self.held = Gauge(
            "toogo_held_orders",
            "Closed profitable orders held uncharged: possibly another order's closing leg, or"
            " awaiting the exchange sync (toogo-reconcile held list)",
            registry=r,
        )
        self.audit_violations = Gauge(
            "toogo_audit_violations",
            "Violations of each ledger invariant at the last audit",
            ["check"],
            registry=r,
        )
        self.quarantined = Gauge(
            "toogo_quarantined_records",
            "Unusable exchange records waiting in quarantine (exchange quarantine --retry)",
            registry=r,
        )
        self.cursor_lag = Gauge(
            "toogo_cursor_lag_seconds",
            "Age of the oldest cursor of a stream still polled",
            ["platform"],
            registry=r,
        )
        self.log_queue = Gauge(
            "toogo_log_queued_lines",
            "Log lines waiting for a slow reader (stdout, journald)",
            registry=r,
        )
        self.budgets = BudgetCollector()
        r.register(self.budgets)
        self.healthy = True
        self.health_detail = "starting"
        self._requests_seen: dict[str, int] = {}

    def expect(self, platforms: Iterable[str]) -> None:
        """Export every counter's known label values at 0 from the start: a series that only
        appears with its first increment has no rate until its second, and a rule over it is
        silently empty until then."""
        for source in ("realtime", "sweep", "history"):
            self.charges.labels(source)
            self.would_charges.labels(source)
            self.duplicates.labels(source)
        for kind in FAILURE_EVENTS:
            self.failures.labels(kind.replace(" ", "_"))
        for platform in platforms:
            self.exchange_errors.labels(platform)
            self.exchange_requests.labels(platform)

    def requests_made(self, provider: object) -> None:
        """After a history cycle: add the requests ``provider`` made since the last call."""
        if isinstance(provider, HasBudgets):
            self.budgets.budgets = provider.budgets
        if not isinstance(provider, CountsRequests):
            return
        for platform, total in provider.requests_by_platform().items():
            new = total - self._requests_seen.get(platform, 0)
            if new > 0:
                self.exchange_requests.labels(platform).inc(new)
            self._requests_seen[platform] = total

    def processor(self, _: WrappedLogger, __: str, event: EventDict) -> EventDict:
        """A structlog processor counting the events that matter."""
        name = event.get("event")
        if name == "power consumed":
            self.charges.labels(str(event.get("source"))).inc()
        elif name == "skip duplicate":
            self.duplicates.labels(str(event.get("source"))).inc()
        elif name == "would charge":
            self.would_charges.labels(str(event.get("source"))).inc()
        elif name == "exchange request failed":
            self.exchange_errors.labels(str(event.get("platform"))).inc()
        elif name in FAILURE_EVENTS:
            self.failures.labels(str(name).replace(" ", "_")).inc()
        return event

    def job_done(self, job: str, seconds: float, ok: bool) -> None:
        self.cycle_seconds.labels(job).set(seconds)
        if ok:
            self.last_success.labels(job).set(time.time())

    async def serve(self, listen: str) -> web.AppRunner:
        host, _, port = listen.rpartition(":")
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host or "127.0.0.1", int(port)).start()
        return runner

    async def _metrics(self, _: web.Request) -> web.Response:
        self.log_queue.set(queued())
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        status = 200 if self.healthy else 503
        payload: dict[str, Any] = {"ok": self.healthy, "detail": self.health_detail}
        return web.json_response(payload, status=status)
