"""The operator's metrics, scraped by a real Prometheus while it reconciles VideoFineTunes on the
real API server; the operator dashboard's queries and the alert rules run against them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from disney_train.metrics.prometheus import LocalPrometheus, ScrapeJob
from tests.support.apiserver import ApiServer, eventually
from tests.support.kuberay import Cluster, OperatorProcess, start_operator
from tests.support.promql import RULES, concrete, dashboard_exprs
from tests.support.seaweed import free_ports

SPEC: dict[str, Any] = {
    "model": {"uri": "s3://models/CogVideoX-2b"},
    "dataset": {"uri": "s3://data/disney"},
    "output": {"uri": "s3://out/runs"},
}


@pytest.fixture(scope="module")
def watched(apiserver: ApiServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OperatorProcess, str]]:
    """An operator of its own, watching one namespace, so the counts are this test's alone."""
    ns = f"mon-{uuid.uuid4().hex[:8]}"
    op = start_operator(apiserver, tmp_path_factory.mktemp("op-metrics") / "operator.log", [ns])
    yield op, ns
    op.stop()


@pytest.fixture(scope="module")
def prom(watched: tuple[OperatorProcess, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPrometheus]:
    op, _ = watched
    p = LocalPrometheus(
        tmp_path_factory.mktemp("prometheus"),
        [ScrapeJob("disney-train-operator", [op.metrics])],
        port=free_ports(1)[0],
        rule_files=[RULES],
    )
    with p:
        yield p


def _value(prom: LocalPrometheus, expr: str) -> float | None:
    result = prom.query(expr)
    return float(result[0]["value"][1]) if result else None


def test_operator_metrics_in_prometheus(
    watched: tuple[OperatorProcess, str], prom: LocalPrometheus, cluster: Cluster
) -> None:
    _, ns = watched
    started = time.time()
    cluster.create(ns, "runs", SPEC)
    rj = cluster.the_rayjob(ns, "runs")
    cluster.run_cluster(ns, rj)
    cluster.wait_status(ns, "runs", phase="Running")
    cluster.create(ns, "waits", SPEC)
    cluster.wait_status(ns, "waits", phase="Pending")

    def by_phase() -> dict[str, float]:
        return {r["metric"]["phase"]: float(r["value"][1]) for r in prom.query("disney_operator_videofinetunes")}

    eventually(
        lambda: by_phase().get("Running") == 1 and by_phase().get("Pending") == 1, 30, what="VideoFineTunes by phase"
    )
    assert by_phase() == {"Pending": 1, "Running": 1, "Suspended": 0, "Succeeded": 0, "Failed": 0}
    ok = _value(prom, 'disney_operator_reconciles_total{result="ok"}')
    assert ok is not None and ok >= 3
    applies = _value(prom, 'disney_operator_api_writes_total{verb="apply",resource="rayjobs"}')
    assert applies == 2
    count = _value(prom, "disney_operator_reconcile_duration_seconds_count")
    assert count is not None and count >= ok
    assert _value(prom, "sum(disney_operator_reconcile_errors_total)") in (None, 0.0)

    # a resync every second: the counters move, so every rate in the dashboard has something to show
    eventually(lambda: (_value(prom, "sum(rate(disney_operator_reconciles_total[10s]))") or 0) > 0, 30)
    problems: list[str] = []
    exprs = dashboard_exprs("operator.json")
    assert len(exprs) >= 5
    for title, expr in exprs:
        q = concrete(expr, "", "10s")
        result = prom.query(q)  # raises on a query Prometheus refuses
        if not result and "error" not in expr:  # no reconcile has failed: an errors panel is empty
            problems.append(f"{title}: {q} returned nothing")
    assert not problems, "\n".join(problems)
    raised = prom.query_range("ALERTS", started, time.time(), 1)  # pending or firing at any moment
    assert not raised, raised
