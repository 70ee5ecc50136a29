"""The Grafana dashboards: the committed JSON is the generator's, and the generator's panels hold together.

Checked here without Grafana or Prometheus: the drift of charts/disney-train/dashboards from
disney_train.metrics.dashboards, the structure (data sources, ids, layout, units), that every query
selects the run and names only metrics the workers, the operator or the DCGM exporter export, and,
with promtool, that every query parses and returns data from series shaped like the real ones.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from disney_operator.metrics import OperatorMetrics
from disney_train.metrics import dashboards
from disney_train.metrics.dashboards import (
    CHART_DASHBOARDS,
    DASHBOARDS,
    dashboard_queries,
    render_all,
    stale_dashboards,
    variable_queries,
    write_dashboards,
)
from disney_train.metrics.exporter import GpuReading, WorkerMetrics
from tests.support.promql import promtool

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / CHART_DASHBOARDS
REGENERATE = "disney-train dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# ------------------------------------------------------------------ the metric catalogue (what is exported)


def _exported(registry: CollectorRegistry) -> tuple[set[str], set[str], set[str]]:
    """(gauges, counters as their `_total` series, histograms) of a registry: the exporters' own
    names, so a metric renamed there without its panels fails here."""
    kinds: dict[str, set[str]] = {"gauge": set(), "counter": set(), "histogram": set()}
    for family in registry.collect():
        kinds[family.type].add(family.name + ("_total" if family.type == "counter" else ""))
    return kinds["gauge"], kinds["counter"], kinds["histogram"]


def _worker_registry() -> CollectorRegistry:
    """A GPU worker's metrics with every family present."""
    m = WorkerMetrics("x", 0, gpu=lambda: GpuReading(allocated=1.0, reserved=2.0, total=3.0, utilization=0.5))
    return m.registry


def _operator_registry() -> CollectorRegistry:
    controller: Any = SimpleNamespace(kube=SimpleNamespace(writes=Counter()), conflicts=0)
    return OperatorMetrics(controller, list).registry


TRAIN_GAUGES, TRAIN_COUNTERS, TRAIN_HISTOGRAMS = _exported(_worker_registry())
OPERATOR_GAUGES, OPERATOR_COUNTERS, OPERATOR_HISTOGRAMS = _exported(_operator_registry())
DCGM = {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE"}  # the NVIDIA DCGM exporter's


def _series_names(gauges: set[str], counters: set[str], histograms: set[str]) -> set[str]:
    return gauges | counters | {h + s for h in histograms for s in ("_bucket", "_sum", "_count")}


CATALOGUE = {
    "training.json": _series_names(TRAIN_GAUGES, TRAIN_COUNTERS, TRAIN_HISTOGRAMS) | DCGM,
    "operator.json": _series_names(OPERATOR_GAUGES, OPERATOR_COUNTERS, OPERATOR_HISTOGRAMS),
}
METRIC = re.compile(r"\b(disney_train_[a-z0-9_]+|disney_operator_[a-z0-9_]+|DCGM_[A-Za-z0-9_]+)\b")
SELECTED = re.compile(r"\b(disney_train_[a-z0-9_]+|disney_operator_[a-z0-9_]+|DCGM_[A-Za-z0-9_]+)(\{[^}]*\})?")
QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')


def _used(expr: str) -> set[str]:
    return set(METRIC.findall(QUOTED.sub('""', expr)))


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels") or [])
    return out


def _promql(expr: str) -> str:
    """The expr as Prometheus gets it from Grafana, for run `x` and a one-minute rate interval."""
    return (
        expr.replace("$__rate_interval", "1m")
        .replace("${run}", "x")
        .replace("$run", "x")
        .replace("$namespace", ".*")  # All
    )


@pytest.fixture(scope="module")
def boards() -> dict[str, dict[str, Any]]:
    return {name: build() for name, build in DASHBOARDS.items()}


# ------------------------------------------------------------------ drift and determinism


def test_committed_dashboards_are_the_generators() -> None:
    stale = stale_dashboards(FOLDER)
    assert not stale, (
        f"{', '.join(stale)} in {CHART_DASHBOARDS} differ from disney_train/metrics/dashboards/; "
        f"regenerate them: {REGENERATE}"
    )
    assert sorted(p.name for p in FOLDER.glob("*.json")) == sorted(DASHBOARDS), "a dashboard file nobody generates"


def test_rendering_is_deterministic() -> None:
    first, second = render_all(), render_all()
    assert first == second
    assert sorted(first) == ["operator.json", "training.json"]
    for text in first.values():
        assert text.endswith("}\n")
        assert text == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def test_write_and_stale(tmp_path: Path) -> None:
    folder = tmp_path / "dashboards"
    assert stale_dashboards(folder) == ["training.json", "operator.json"]
    paths = write_dashboards(folder)
    assert sorted(p.name for p in paths) == ["operator.json", "training.json"]
    assert stale_dashboards(folder) == []
    (folder / "operator.json").write_text("{}\n")
    (folder / "other.json").write_text("{}\n")
    assert stale_dashboards(folder) == ["operator.json"]
    write_dashboards(folder)
    assert stale_dashboards(folder) == []
    assert (folder / "other.json").read_text() == "{}\n"  # not ours: left alone


# ------------------------------------------------------------------ structure


def test_dashboard_settings(boards: dict[str, dict[str, Any]]) -> None:
    assert boards["training.json"]["uid"] == "disney-train-training"
    assert boards["training.json"]["title"] == "disney-train / training"
    assert boards["operator.json"]["uid"] == "disney-train-operator"
    assert boards["operator.json"]["title"] == "disney-train / operator"
    for board in boards.values():
        assert board["tags"] == ["disney-train"]
        assert board["refresh"] == "30s"
        assert board["time"] == {"from": "now-6h", "to": "now"}
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"


def test_run_variable(boards: dict[str, dict[str, Any]]) -> None:
    variables = {v["name"]: v for v in boards["training.json"]["templating"]["list"]}
    run, ns = variables["run"], variables["namespace"]
    assert run["type"] == ns["type"] == "query"
    assert run["datasource"] == ns["datasource"] == DATASOURCE
    assert run["multi"] is False and run["includeAll"] is False
    assert ns["includeAll"] is True and ns["allValue"] == ".*"  # also matches a local run's absent label
    assert variable_queries(boards["training.json"]) == [
        ("namespace", "label_values(disney_train_stage, namespace)"),
        ("run", 'label_values(disney_train_stage{namespace=~"$namespace"}, run)'),
    ]
    assert variable_queries(boards["operator.json"]) == []


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_panels(boards: dict[str, dict[str, Any]], name: str) -> None:
    panels = _panels(boards[name])
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"
    assert all(isinstance(i, int) and i > 0 for i in ids)
    for p in panels:
        if p["type"] == "row":
            continue
        where = f"{name}: panel {p['id']} {p.get('title')!r}"
        assert p.get("title"), where
        assert p.get("description"), f"{where} has no description"
        assert p.get("datasource") == DATASOURCE, f"{where}: datasource {p.get('datasource')}"
        assert p["fieldConfig"]["defaults"].get("unit"), f"{where} has no unit"
        targets = p.get("targets") or []
        assert targets, f"{where} has no query"
        refs = [t["refId"] for t in targets]
        assert all(refs) and len(refs) == len(set(refs)), f"{where}: refIds {refs}"
        for t in targets:
            assert t.get("expr", "").strip(), f"{where}: empty expr"
            assert t.get("datasource", DATASOURCE) == DATASOURCE, f"{where}: target datasource {t['datasource']}"
            assert t.get("legendFormat"), f"{where}: no legend"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_layout(boards: dict[str, dict[str, Any]], name: str) -> None:
    """Panels lie within the 24 columns and none covers another (a collapsed row's panels among themselves)."""
    groups = [boards[name]["panels"]] + [p["panels"] for p in boards[name]["panels"] if p.get("panels")]
    for group in groups:
        taken: dict[tuple[int, int], str] = {}
        for p in group:
            g = p["gridPos"]
            assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    assert (x, y) not in taken, f"{name}: {p['title']!r} overlaps {taken[(x, y)]!r} at {(x, y)}"
                    taken[(x, y)] = p["title"]


def test_dashboard_queries_walks_rows() -> None:
    board = copy.deepcopy(DASHBOARDS["operator.json"]())
    row = next(p for p in board["panels"] if p["type"] == "row")
    nested = copy.deepcopy(next(p for p in board["panels"] if p["type"] == "timeseries"))
    nested["title"] = "nested"
    nested["targets"][0]["expr"] = "up"
    row["panels"] = [nested]
    row["collapsed"] = True
    assert ("nested", "up") in dashboard_queries(board)
    plain = dashboard_queries(DASHBOARDS["operator.json"]())
    assert len(dashboard_queries(board)) == len(plain) + 1
    assert len(plain) == sum(len(p.get("targets") or []) for p in _panels(DASHBOARDS["operator.json"]()))


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_queries_name_known_metrics(boards: dict[str, dict[str, Any]], name: str) -> None:
    queries = dashboard_queries(boards[name])
    assert queries
    used: set[str] = set()
    for title, expr in queries:
        names = _used(expr)
        assert names, f"{title}: {expr} names no metric"
        unknown = names - CATALOGUE[name]
        assert not unknown, f"{title}: {expr} uses {sorted(unknown)}, not in the metric catalogue"
        used |= names
    # every exported series family has a panel (histograms through any of their series)
    families = {
        re.sub(r"_(bucket|sum|count)$", "", n) if n.endswith(("_bucket", "_sum", "_count")) else n for n in used
    }
    expected = {re.sub(r"_(bucket|sum|count)$", "", n) for n in CATALOGUE[name]}
    assert expected - families == set(), f"metrics without a panel: {sorted(expected - families)}"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_rate_windows_and_quantiles(boards: dict[str, dict[str, Any]], name: str) -> None:
    for title, expr in dashboard_queries(boards[name]):
        bare = QUOTED.sub('""', expr)
        for window in re.findall(r"\[[^\]]*\]", bare):
            assert window == "[$__rate_interval]", f"{title}: {expr} has the window {window}"
        if "_bucket" in bare:
            assert re.search(r"histogram_quantile\(0\.\d+, sum by \(le\) \(rate\(", bare), f"{title}: {expr}"


def test_training_queries_select_the_run(boards: dict[str, dict[str, Any]]) -> None:
    run = re.compile(r'(?:^|[{,\s])run=~?"\$run"')
    pods = re.compile(r'(?:^|[{,\s])pod=~"\$run-')
    namespace = re.compile(r'(?:^|[{,\s])namespace=~"\$namespace"')
    for title, expr in dashboard_queries(boards["training.json"]):
        for metric, selector in SELECTED.findall(expr):
            wanted = pods if metric.startswith("DCGM_") else run
            assert wanted.search(selector or ""), f"{title}: {metric}{selector} does not select the run in {expr}"
            assert namespace.search(selector or ""), f"{title}: {metric}{selector} ignores the namespace in {expr}"


# ------------------------------------------------------------------ promtool: syntax and data


def _all_queries(boards: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(name, title, _promql(expr)) for name in sorted(boards) for title, expr in dashboard_queries(boards[name])]


def test_queries_parse(boards: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    queries = _all_queries(boards)
    rules = {
        "groups": [
            {
                "name": "dashboards",
                "rules": [{"record": f"dashboard:query_{i}", "expr": expr} for i, (_, _, expr) in enumerate(queries)],
            }
        ]
    }
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    res = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(queries)} rules found" in res.stdout, res.stdout


def _input_series() -> list[dict[str, str]]:
    """Fifteen-second samples over ten minutes, shaped like the real series: run `x`, two ranks."""
    out: list[dict[str, str]] = []

    def add(metric: str, labels: dict[str, str], values: str) -> None:
        body = ", ".join(f'{k}="{v}"' for k, v in labels.items())
        out.append({"series": f"{metric}{{{body}}}", "values": values})

    n = "x40"
    for rank in ("0", "1"):
        w = {"run": "x", "rank": rank, "namespace": "ns", "pod": f"x-1-abcde-worker-{rank}"}
        for g, v in {
            "loss": "1-0.01",
            "learning_rate": "0.0001+0",
            "grad_norm": "1+0",
            "step": "0+1",
            "epoch": "0+0",
            "world_size": "2+0",
            "last_step_timestamp_seconds": "0+15",
            "last_checkpoint_timestamp_seconds": "0+15",
            "gpu_memory_allocated_bytes": "1e9+0",
            "gpu_memory_reserved_bytes": "2e9+0",
            "gpu_memory_total_bytes": "8e10+0",
            "gpu_utilization_ratio": "0.9+0",
        }.items():
            add(f"disney_train_{g}", w, v + n)
        if rank == "0":
            add("disney_train_checkpoint_bytes", w, "1e9+0" + n)
        add(
            "disney_train_info",
            {**w, "model": "cogvideox", "variant": "2b", "device": "cuda", "precision": "bf16", "zero_stage": "2"},
            "1+0" + n,
        )
        for s in dashboards.STAGES:
            add("disney_train_stage", {**w, "stage": s}, ("1+0" if s == "training" else "0+0") + n)
        for h in TRAIN_HISTOGRAMS | OPERATOR_HISTOGRAMS:
            labels = {} if h.startswith("disney_operator") else w
            if h.startswith("disney_operator") and rank == "1":
                continue
            for le in ("0.5", "1", "+Inf"):
                add(f"{h}_bucket", {**labels, "le": le}, "0+1" + n)
            add(f"{h}_sum", labels, "0+0.7" + n)
            add(f"{h}_count", labels, "0+1" + n)
        for c in TRAIN_COUNTERS - {"disney_train_errors_total"}:
            add(c, w, "0+4" + n)
        add("disney_train_errors_total", {**w, "kind": "s3"}, "0+1" + n)
        gpu = {"gpu": rank, "UUID": f"GPU-{rank}", "Hostname": "node", "namespace": "ns", "pod": w["pod"]}
        add("DCGM_FI_DEV_GPU_UTIL", {**gpu, "container": "ray-worker"}, "90+0" + n)
        add("DCGM_FI_DEV_FB_USED", {**gpu, "container": "ray-worker"}, "30000+0" + n)
        add("DCGM_FI_DEV_FB_FREE", {**gpu, "container": "ray-worker"}, "50000+0" + n)
    # another run's worker and GPU: must not make a query fail (many-to-many) nor be needed
    add("disney_train_loss", {"run": "xy", "rank": "0"}, "1+0" + n)
    add("DCGM_FI_DEV_GPU_UTIL", {"gpu": "0", "pod": "xy-1-abcde-worker-0"}, "5+0" + n)
    for result in ("ok", "conflict", "error"):
        add("disney_operator_reconciles_total", {"result": result}, "0+2" + n)
    add("disney_operator_reconcile_errors_total", {"error": "ApiException"}, "0+1" + n)
    for phase in ("Pending", "Running", "Suspended", "Succeeded", "Failed"):
        add("disney_operator_videofinetunes", {"phase": phase}, "1+0" + n)
    add("disney_operator_api_writes_total", {"verb": "patch", "resource": "videofinetunes"}, "0+1" + n)
    add("disney_operator_write_conflicts_total", {}, "0+1" + n)
    add("disney_operator_info", {"version": "0.1.0", "group": "disney.example.com"}, "1+0" + n)
    add("disney_operator_active", {}, "1+0" + n)
    return out


def test_queries_return_data(boards: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    """Over series shaped like the exported ones, every query returns samples, none of them NaN, and
    they carry the labels its legend names.

    `absent(q == q)` is empty exactly when q has a non-NaN sample (NaN == NaN is false); a query whose
    vector matching or grouping is wrong returns nothing (or fails) and shows up here.
    `absent(count by (l) (q) unless on (l) vector(1))` is empty exactly when some sample of q has label l.
    """
    checks = [f"absent(({expr}) == ({expr}))" for _, _, expr in _all_queries(boards)]
    for panel in (p for board in boards.values() for p in _panels(board)):
        for target in panel.get("targets") or []:
            for label in sorted(set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target["legendFormat"]))):
                q = _promql(target["expr"])
                checks.append(f"absent(count by ({label}) ({q}) unless on ({label}) vector(1))")
    tests = {
        "rule_files": [],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "15s",
                "input_series": _input_series(),
                "promql_expr_test": [{"expr": check, "eval_time": "9m", "exp_samples": []} for check in checks],
            }
        ],
    }
    path = tmp_path / "tests.yaml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    res = subprocess.run([promtool(), "test", "rules", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_cli_writes_and_checks(tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "disney_train.cli", "dashboards", "--out", str(tmp_path)]
    assert subprocess.run([*cli, "--check"], capture_output=True, cwd=ROOT).returncode == 1  # nothing there
    assert subprocess.run(cli, capture_output=True, cwd=ROOT).returncode == 0
    assert subprocess.run([*cli, "--check"], capture_output=True, cwd=ROOT).returncode == 0
    (tmp_path / "operator.json").write_text("{}\n")
    stale = subprocess.run([*cli, "--check"], capture_output=True, text=True, cwd=ROOT)
    assert stale.returncode == 1 and "operator.json" in stale.stderr
