"""A real Prometheus scraping a live `toogo-reconcile run` evaluates every rule of
deploy/prometheus/toogo-reconcile.rules.yml: each expression runs without error through the HTTP
API, Prometheus's own rule evaluation reports every rule healthy, and every metric a rule reads
is in the scrape - so renaming a metric (or a label the rules match on) breaks this test. The
Grafana dashboard's queries (deploy/grafana/) are run the same way.

The daemon runs against the real MariaDB and a fake Binance (a stream to sync, a backlog to
charge, a stopped robot's old cursor). Prometheus gets its own temporary directory and a free
port on 127.0.0.1, and scrapes every second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import yaml

from kits.private_mariadb import free_port
from reconcile.storage.db import Database
from tests.metrics_kit import live_daemon, scrape
from tests.prometheus_kit import RULES, binary, dashboard_queries, metric_names, rules

pytestmark = pytest.mark.mysql

T = TypeVar("T")
JOB = "toogo-reconcile"  # the scrape job name the rules expect (ToogoReconcileDown)


@asynccontextmanager
async def prometheus(tmp_path: Path, target: str) -> AsyncIterator[str]:
    """A Prometheus server scraping ``target`` every second with the shipped rules; its URL."""
    exe = binary("prometheus")
    home = tmp_path / "prometheus"
    home.mkdir()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [target]}]}],
    }
    (home / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_port()
    with (home / "prometheus.log").open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            exe,
            f"--config.file={home / 'prometheus.yml'}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            stdout=log,
            stderr=log,
        )
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    assert proc.returncode in (0, -15), (home / "prometheus.log").read_text()[-3000:]


async def api(http: aiohttp.ClientSession, base: str, path: str, **params: str) -> Any:
    async with http.get(f"{base}/api/v1/{path}", params=params) as resp:
        body = await resp.json()
    assert body["status"] == "success", (path, params, body)
    return body["data"]


async def until(what: str, probe: Callable[[], Awaitable[T | None]], timeout: float = 60) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = await probe()
        except aiohttp.ClientError:
            got = None
        if got:
            return got
        await asyncio.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout}s")


async def test_prometheus_evaluates_every_rule_on_a_live_daemon(
    mysql_db: Database, mysql_url: str, tmp_path: Path
) -> None:
    every_rule = rules()
    needed = set().union(*(metric_names(r["expr"]) for r in every_rule))
    schedule = {"history_sync": "2s", "realtime_sweep": "1s", "compensation_sweep": "3s"}
    async with (
        live_daemon(mysql_db, mysql_url, tmp_path, **schedule, audit="2s", retention="2s") as port,
        aiohttp.ClientSession() as http,
        prometheus(tmp_path, f"127.0.0.1:{port}") as prom,
    ):
        # the daemon exports everything the rules read once each job has run
        async def complete() -> str | None:
            text = await scrape(http, port)
            return text if "toogo_cursor_lag_seconds{" in text else None

        text = await until("cursor lag in /metrics", complete)

        async def target_up() -> list[Any] | None:
            found = await api(http, prom, "query", query=f'up{{job="{JOB}"}} == 1')
            return list(found["result"]) or None

        await until("the target up in Prometheus", target_up)

        async def all_scraped() -> set[str] | None:
            names = set(await api(http, prom, "label/__name__/values"))
            return names if needed <= names else None

        try:
            scraped = await until("every metric the rules read, scraped", all_scraped)
        except AssertionError:
            names = set(await api(http, prom, "label/__name__/values"))
            raise AssertionError(f"not scraped: {sorted(needed - names)}") from None
        assert "up" in scraped

        # Prometheus's own evaluation of the rule file: every rule evaluated, healthy
        async def evaluated() -> list[dict[str, Any]] | None:
            data = await api(http, prom, "rules")
            loaded = [r for g in data["groups"] for r in g["rules"]]
            done = all(r.get("lastEvaluation", "").startswith("2") for r in loaded)
            return loaded if done and len(loaded) == len(every_rule) else None

        for loaded in await until("every rule evaluated", evaluated):
            assert loaded["health"] == "ok", loaded

        # the Grafana dashboard's queries too
        for title, query in dashboard_queries(JOB):
            assert metric_names(query) <= scraped, (title, query)
            await api(http, prom, "query", query=query)

        # the recorded series (a rule's first evaluation may precede the first scrape,
        # and a rate needs two samples)
        async def recorded(name: str, count: int) -> list[dict[str, Any]] | None:
            found = await api(http, prom, "query", query=name)
            return list(found["result"]) if len(found["result"]) == count else None

        since = await until(
            "toogo:seconds_since_last_success",
            lambda: recorded("toogo:seconds_since_last_success", 5),
        )
        await until(
            "platform:toogo_exchange_errors:rate5m",
            lambda: recorded("platform:toogo_exchange_errors:rate5m", 1),
        )
        # and each expression through the query API
        results = {}
        for rule in every_rule:
            name = rule.get("alert") or rule["record"]
            data = await api(http, prom, "query", query=rule["expr"])
            results[name] = data["result"]

    assert "toogo_job_interval_seconds{" in text
    # a healthy daemon: what must not fire does not
    for quiet in ("ToogoReconcileDown", "ToogoReconcileAbsent", "ToogoDatabaseDown"):
        assert results[quiet] == [], (quiet, results[quiet])
    for quiet in ("ToogoSweepStale", "ToogoHistorySyncStale", "ToogoCursorLag"):
        assert results[quiet] == [], (quiet, results[quiet])
    # the recording rule sees the five jobs, under the job_name label (not exported_job)
    jobs = {s["metric"]["job_name"]: float(s["value"][1]) for s in since}
    assert set(jobs) == {
        "history_sync",
        "realtime_sweep",
        "compensation_sweep",
        "audit",
        "retention",
    }
    assert all(0 <= v < 60 for v in jobs.values()), jobs
    assert all(s["metric"]["job"] == JOB for s in since)
    assert results["toogo:seconds_since_last_success"]  # the expression itself, too
    errors = results["platform:toogo_exchange_errors:rate5m"]
    assert [s["metric"]["platform"] for s in errors] == ["binance"], errors
