"""The Grafana dashboards of disney-train, generated with grafana-foundation-sdk.

Two dashboards, both on a Prometheus data source picked by the `datasource` variable:

- "disney-train / training" (`training.json`, uid `disney-train-training`): one run at a time (the
  `run` variable); what the workers export (see `disney_train.metrics.exporter`) plus the NVIDIA DCGM
  exporter's GPU figures where the cluster runs it.
- "disney-train / operator" (`operator.json`, uid `disney-train-operator`): the operator's reconciles,
  the VideoFineTunes by phase and its writes to the Kubernetes API.

The JSON is committed (the Helm chart ships it from `charts/disney-train/dashboards`, see
`CHART_DASHBOARDS`) and must equal what this module renders: `write_dashboards` regenerates it,
`stale_dashboards` tells which files differ; `tests/test_dashboards.py` fails on drift. Rendering is
deterministic: pretty JSON, sorted keys, a trailing newline, explicit panel ids and grid positions.

Every Prometheus query of the training dashboard selects `run="$run"` (DCGM series: the run's worker
pods, `pod=~"$run-[0-9]+-[a-z0-9]{5}-.*"`, as the RayJob is `<run>-<attempt>-<hash5>`) and takes its
rate windows as `$__rate_interval`.

    panels          selectors, the data source, panel builders and the grid `Layout`
    training        the training dashboard, a function per row
    operator_board  the operator dashboard
    files           render, write and check the files; the queries of a dashboard
"""

from disney_train.metrics.dashboards.files import (
    CHART_DASHBOARDS,
    DASHBOARDS,
    dashboard_queries,
    render,
    render_all,
    stale_dashboards,
    variable_queries,
    write_dashboards,
)
from disney_train.metrics.dashboards.operator_board import operator_dashboard
from disney_train.metrics.dashboards.training import training_dashboard
from disney_train.metrics.exporter import STAGES

__all__ = [
    "CHART_DASHBOARDS",
    "DASHBOARDS",
    "STAGES",
    "dashboard_queries",
    "operator_dashboard",
    "render",
    "render_all",
    "stale_dashboards",
    "training_dashboard",
    "variable_queries",
    "write_dashboards",
]
