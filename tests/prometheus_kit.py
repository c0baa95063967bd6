"""Prometheus's own tools for the rules in deploy/prometheus/ (Debian package ``prometheus``).

Without ``promtool`` / ``prometheus`` on PATH their tests are skipped - unless
TOOGO_REQUIRE_PROMETHEUS=1 (CI), which makes that a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "prometheus"
RULES = DEPLOY / "toogo-reconcile.rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "toogo-reconcile.json"
UNIT_TESTS = sorted((DEPLOY / "tests").glob("*.yml"))
REQUIRE = os.environ.get("TOOGO_REQUIRE_PROMETHEUS") == "1"
#: the metrics a rule reads: the daemon's (toogo_*, process_*) and the scrape's own ``up``; a
#: recording rule's name has a colon and is not one
METRIC = re.compile(r"(?<![\w:])(toogo_\w+|process_\w+|up)\b(?![\w:(])")


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        why = f"{name} not on PATH (Debian: apt-get install prometheus)"
        if REQUIRE:
            pytest.fail(f"{why}, and TOOGO_REQUIRE_PROMETHEUS=1")
        pytest.skip(why)
    return path


def rules() -> list[dict[str, Any]]:
    """Every rule of the rules file, recording and alerting, in order."""
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    return set(METRIC.findall(expr))


def dashboard_queries(job: str) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target of the Grafana dashboard, its variables
    filled in for scrape job ``job`` and every instance."""
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [
        (panel["title"], target["expr"].replace("$job", job).replace("$instance", ".*"))
        for panel in doc["panels"]
        for target in panel["targets"]
    ]
