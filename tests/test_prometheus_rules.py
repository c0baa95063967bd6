"""The alert and recording rules in deploy/prometheus/, checked by Prometheus's own promtool:
``check rules`` (syntax, PromQL, templates), ``check config`` on the example configuration, and
``test rules`` on the unit tests in deploy/prometheus/tests/ (synthetic series that make each
alert fire, and keep it quiet). A real Prometheus scraping a live daemon evaluates the same
rules in tests/test_prometheus_live.py.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
import yaml

from tests.prometheus_kit import (
    DASHBOARD,
    DEPLOY,
    ROOT,
    RULES,
    UNIT_TESTS,
    binary,
    dashboard_queries,
    metric_names,
    rules,
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("promtool"), *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_promtool_check_rules() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_promtool_check_config_of_the_example() -> None:
    done = promtool("check", "config", str(DEPLOY / "prometheus.example.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_test_rules() -> None:
    assert UNIT_TESTS
    done = promtool("test", "rules", *map(str, UNIT_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("SUCCESS") == len(UNIT_TESTS), done.stdout


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    """A new alert without a unit test that makes it fire, and one that keeps it quiet, fails."""
    fired: set[str] = set()
    quiet: set[str] = set()
    for path in UNIT_TESTS:
        doc: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert doc["rule_files"] == ["../toogo-reconcile.rules.yml"], path
        for case in doc["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    alerts = {r["alert"] for r in rules() if "alert" in r}
    assert alerts - fired == set(), "alerts no unit test makes fire"
    assert alerts - quiet == set(), "alerts no unit test keeps quiet"


@pytest.mark.parametrize("rule", [r for r in rules() if "alert" in r], ids=lambda r: r["alert"])
def test_every_alert_has_a_severity_a_summary_and_a_one_line_runbook(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in {"critical", "warning"}
    annotations = rule["annotations"]
    assert set(annotations) == {"summary", "runbook"}
    assert annotations["runbook"].strip() and "\n" not in annotations["runbook"]


def test_the_runbook_documents_every_rule_with_its_runbook_line() -> None:
    readme = (ROOT / "docs" / "runbook.md").read_text(encoding="utf-8")
    for rule in rules():
        if "record" in rule:
            assert f"`{rule['record']}" in readme, rule["record"]
            continue
        row = f"| `{rule['alert']}` ({rule['labels']['severity']}) |"
        assert row in readme, row
        assert f" | {rule['annotations']['runbook']} |" in readme, rule["alert"]


def test_the_dashboard_reads_only_what_the_daemon_and_the_rules_provide() -> None:
    """The live test runs each query; here, without Prometheus: every panel has a query, ids
    are unique, and the metrics are the daemon's (or a recording rule of the rules file)."""
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)) and all(p["targets"] for p in doc["panels"])
    recorded = {r["record"] for r in rules() if "record" in r}
    for title, query in dashboard_queries("toogo-reconcile"):
        assert metric_names(query) or any(name in query for name in recorded), title
        assert "$" not in query, (title, query)
