"""The dashboards' vocabulary: the run's selectors, the data source, and small builders of panels,
queries and thresholds over grafana-foundation-sdk; `Layout` places panels on the 24-column grid."""

from __future__ import annotations

import json
from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DashboardLinkType,
    DataSourceRef,
    DynamicConfigValue,
    FieldColorModeId,
    GridPos,
    Threshold,
    ThresholdsMode,
    VariableHide,
)
from grafana_foundation_sdk.models.prometheus import QueryEditorMode

TAGS = ["disney-train"]
REFRESH = "30s"
TIME_FROM, TIME_TO = "now-6h", "now"
GRID_WIDTH = 24

# Every panel and target queries the data source the `datasource` variable picks.
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
# A run is (namespace, run): two VideoFineTunes of one name in two namespaces are two runs. `All`
# namespaces is `.*`, which also matches series without the label (a local run).
RUN = 'namespace=~"$namespace", run="$run"'
# Worker pods of a run are named `<run>-<attempt>-<hash5>-...` (the RayJob's name is the run's and a dash).
RUN_PODS = 'namespace=~"$namespace", pod=~"$run-[0-9]+-[a-z0-9]{5}-.*"'
RATE = "[$__rate_interval]"
# one per stage of disney_train.metrics.exporter.STAGES (`disney_train_stage{stage}`), in its order
STAGE_COLORS = ("yellow", "purple", "super-light-purple", "green", "blue", "orange", "text")
PHASE_COLORS = {"Pending": "yellow", "Running": "blue", "Suspended": "text", "Succeeded": "green", "Failed": "red"}

Panel = stat.Panel | timeseries.Panel | statetimeline.Panel


# ------------------------------------------------------------------------------------------ helpers


def query(expr: str, legend: str, ref: str, *, instant: bool = False) -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)
    q = q.editor_mode(QueryEditorMode.CODE)
    return q.instant() if instant else q.range()


def threshold_config(*steps: tuple[float, str], base: str = "green") -> dashboard_builders.ThresholdsConfig:
    """Absolute thresholds from `base`; without them Grafana colours everything above 80 red."""
    return (
        dashboard_builders.ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=None, color=base), *(Threshold(value=v, color=c) for v, c in steps)])
    )


def fixed_color(color: str) -> DynamicConfigValue:
    return DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": color})


def stat_panel(
    title: str,
    description: str,
    unit: str,
    targets: list[tuple[str, str]],
    *,
    instant: bool = False,
    decimals: int | None = None,
    graph: bool = False,
    names: bool = False,
    thresholds: tuple[tuple[float, str], ...] = (),
    base: str = "blue",
    no_value: str | None = None,
) -> stat.Panel:
    """A single figure (the last non-null value); `names` shows the series' legends instead of values."""
    p = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .thresholds(threshold_config(*thresholds, base=base))
        .color_mode(common.BigValueColorMode.VALUE)
        .graph_mode(common.BigValueGraphMode.AREA if graph else common.BigValueGraphMode.NONE)
        .text_mode(common.BigValueTextMode.NAME if names else common.BigValueTextMode.VALUE)
        .justify_mode(common.BigValueJustifyMode.CENTER)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    if decimals is not None:
        p = p.decimals(decimals)
    if no_value is not None:
        p = p.no_value(no_value)
    for i, (expr, legend) in enumerate(targets):
        p = p.with_target(query(expr, legend, chr(ord("A") + i), instant=instant))
    return p


def timeseries_panel(
    title: str,
    description: str,
    unit: str,
    targets: list[tuple[str, str]],
    *,
    min_val: float | None = 0,
    max_val: float | None = None,
    decimals: int | None = None,
    points: bool = False,
    stacked: bool = False,
) -> timeseries.Panel:
    p = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .thresholds(threshold_config(base="green"))
        .color_scheme(dashboard_builders.FieldColor().mode(FieldColorModeId.PALETTE_CLASSIC))
        .draw_style(common.GraphDrawStyle.LINE)
        .line_interpolation(common.LineInterpolation.LINEAR)
        .line_width(1)
        .fill_opacity(25 if stacked else 10)
        .show_points(common.VisibilityMode.ALWAYS if points else common.VisibilityMode.NEVER)
        .point_size(5)
        .span_nulls(False)
        .stacking(
            common_builders.StackingConfig().mode(common.StackingMode.NORMAL if stacked else common.StackingMode.NONE)
        )
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs([])
        )
        .tooltip(
            common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING)
        )
    )
    if min_val is not None:
        p = p.min(min_val)
    if max_val is not None:
        p = p.max(max_val)
    if decimals is not None:
        p = p.decimals(decimals)
    for i, (expr, legend) in enumerate(targets):
        p = p.with_target(query(expr, legend, chr(ord("A") + i)))
    return p


def quantiles(metric: str, selector: str, qs: tuple[float, ...]) -> list[tuple[str, str]]:
    """p50/p95/... of a histogram over all its series: histogram_quantile over sum by (le) of the bucket rates."""
    series = f"{metric}_bucket{{{selector}}}" if selector else f"{metric}_bucket"
    return [
        (
            f"histogram_quantile({q}, sum by (le) (rate({series}{RATE})))",
            f"p{round(q * 100)}",
        )
        for q in qs
    ]


class Layout:
    """Places panels left to right in lines of 24 columns; a row header starts a new line.

    The SDK's own placement does not wrap a panel that does not fit the line, so every panel gets an
    explicit id and grid position here.
    """

    def __init__(self, board: dashboard_builders.Dashboard) -> None:
        self.board = board
        self.x = self.y = self.line_height = 0
        self.next_id = 1

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def _newline(self) -> None:
        self.y += self.line_height
        self.x = self.line_height = 0

    def row(self, title: str) -> None:
        self._newline()
        row = dashboard_builders.Row(title).id(self._id()).grid_pos(GridPos(h=1, w=GRID_WIDTH, x=0, y=self.y))
        self.board.with_row(row.collapsed(False))
        self.y += 1

    def add(self, width: int, height: int, panel: Panel) -> None:
        if self.x + width > GRID_WIDTH:
            self._newline()
        self.board.with_panel(panel.id(self._id()).grid_pos(GridPos(h=height, w=width, x=self.x, y=self.y)))
        self.x += width
        self.line_height = max(self.line_height, height)


def new_dashboard(uid: str, title: str, description: str) -> dashboard_builders.Dashboard:
    builtin = (
        dashboard_builders.AnnotationQuery()
        .name("Annotations & Alerts")
        .datasource(DataSourceRef(type_val="grafana", uid="-- Grafana --"))
        .enable(True)
        .hide(True)
        .icon_color("rgba(0, 211, 255, 1)")
        .type("dashboard")
        .built_in(1)
    )
    datasource = (
        dashboard_builders.DatasourceVariable("datasource")
        .label("Data source")
        .description("The Prometheus that scrapes the workers and the operator.")
        .type("prometheus")
        .hide(VariableHide.DONT_HIDE)
    )
    return (
        dashboard_builders.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .timezone("browser")
        .time(TIME_FROM, TIME_TO)
        .refresh(REFRESH)
        .annotation(builtin)
        .link(
            dashboard_builders.DashboardLink("disney-train")
            .type(DashboardLinkType.DASHBOARDS)
            .tags(TAGS)
            .as_dropdown(True)
            .include_vars(False)
            .keep_time(True)
            .target_blank(False)
        )
        .with_variable(datasource)
    )


def to_dict(board: dashboard_builders.Dashboard) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    return data
