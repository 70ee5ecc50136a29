"""The PromQL the project ships (dashboards and alert rules), made concrete for a real Prometheus."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from disney_train.metrics.dashboards import dashboard_queries
from disney_train.metrics.prometheus import PrometheusError, prometheus_binary

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "charts" / "disney-train" / "dashboards"
RULES = ROOT / "charts" / "disney-train" / "rules" / "disney-train.rules.yaml"
GPU_ONLY = re.compile(r"disney_train_gpu_|DCGM_")  # no GPU here: these must come back empty


def promtool() -> str:
    """promtool's path; the test fails (never skips) saying how to install it."""
    try:
        return prometheus_binary("promtool")
    except PrometheusError as err:
        pytest.fail(str(err), pytrace=False)


def concrete(expr: str, run: str, rate_interval: str) -> str:
    """Grafana's variables replaced as Grafana would; nothing of Grafana may be left."""
    out = expr
    for name, value in (
        ("__rate_interval", rate_interval),
        ("__interval", "1s"),
        ("__range", "5m"),
        ("run", run),
        ("namespace", ".*"),  # All (a local run has no namespace label)
    ):
        out = out.replace("${" + name + "}", value).replace("$" + name, value)
    if "$" in out:
        raise AssertionError(f"a Grafana variable is left in {out!r}")
    return out


def dashboard_exprs(filename: str) -> list[tuple[str, str]]:
    board: dict[str, Any] = json.loads((DASHBOARDS / filename).read_text())
    return dashboard_queries(board)


def rule_exprs() -> list[tuple[str, str]]:
    """(alert or record name, expr) of every rule in the rules file."""
    doc = yaml.safe_load(RULES.read_text())
    return [(r.get("alert") or r["record"], r["expr"]) for g in doc["groups"] for r in g["rules"]]
