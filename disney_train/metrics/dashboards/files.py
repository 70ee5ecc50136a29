"""The dashboards as files: rendered deterministically, written into the chart's folder, checked for drift,
and walked for their queries (the tests check every query against a real Prometheus)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from disney_train.metrics.dashboards.operator_board import operator_dashboard
from disney_train.metrics.dashboards.training import training_dashboard

# Where the chart keeps the generated JSON, relative to the repository root (an installed package
# cannot know the checkout it came from, so callers pass the folder; the CLI passes this one).
CHART_DASHBOARDS = Path("charts", "disney-train", "dashboards")


# file name -> the dashboard's JSON model (a fresh dict each call)
DASHBOARDS: dict[str, Callable[[], dict[str, Any]]] = {
    "training.json": training_dashboard,
    "operator.json": operator_dashboard,
}


def render(dashboard: dict[str, Any]) -> str:
    """The file text of a dashboard: pretty JSON, sorted keys, a trailing newline."""
    return json.dumps(dashboard, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render_all() -> dict[str, str]:
    """{file name: JSON text} of every dashboard; the same text on every call."""
    return {name: render(build()) for name, build in DASHBOARDS.items()}


def write_dashboards(folder: Path) -> list[Path]:
    """Writes every dashboard into `folder` (created if missing); returns the files' paths.

    Files already equal to the generator's output are left alone. Other files in the folder are not touched.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in render_all().items():
        path = folder / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


def stale_dashboards(folder: Path) -> list[str]:
    """Names of the dashboard files in `folder` that are missing or differ from the generator's output."""
    stale = []
    for name, text in render_all().items():
        path = folder / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(name)
    return stale


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels") or [])  # a collapsed row keeps its panels inside


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every Prometheus query of a dashboard's panels, rows' panels included.

    The variables' queries are not among them: ours are Grafana's `label_values(...)`, not PromQL (see
    `variable_queries`).
    """
    out = []
    for panel in _panels(dashboard.get("panels") or []):
        for target in panel.get("targets") or []:
            if "expr" in target:
                out.append((str(panel.get("title", "")), str(target["expr"])))
    return out


def variable_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(variable name, query) of a dashboard's query variables: Grafana's Prometheus variable queries
    (`label_values(...)`, `query_result(...)`, ...), which Prometheus itself does not understand."""
    out = []
    for var in (dashboard.get("templating") or {}).get("list") or []:
        if var.get("type") == "query":
            query = var.get("query")
            out.append((str(var["name"]), str(query.get("query", "") if isinstance(query, dict) else query)))
    return out
