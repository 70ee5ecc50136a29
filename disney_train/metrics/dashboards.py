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
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common, units
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DashboardLinkType,
    DataSourceRef,
    DynamicConfigValue,
    FieldColorModeId,
    GridPos,
    Threshold,
    ThresholdsMode,
    ValueMap,
    ValueMappingResult,
    VariableHide,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import QueryEditorMode

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

# Where the chart keeps the generated JSON, relative to the repository root (an installed package
# cannot know the checkout it came from, so callers pass the folder; the CLI passes this one).
CHART_DASHBOARDS = Path("charts", "disney-train", "dashboards")

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


def _q(expr: str, legend: str, ref: str, *, instant: bool = False) -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)
    q = q.editor_mode(QueryEditorMode.CODE)
    return q.instant() if instant else q.range()


def _thresholds(*steps: tuple[float, str], base: str = "green") -> dashboard_builders.ThresholdsConfig:
    """Absolute thresholds from `base`; without them Grafana colours everything above 80 red."""
    return (
        dashboard_builders.ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=None, color=base), *(Threshold(value=v, color=c) for v, c in steps)])
    )


def _fixed_color(color: str) -> DynamicConfigValue:
    return DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": color})


def _stat(
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
        .thresholds(_thresholds(*thresholds, base=base))
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
        p = p.with_target(_q(expr, legend, chr(ord("A") + i), instant=instant))
    return p


def _timeseries(
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
        .thresholds(_thresholds(base="green"))
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
        p = p.with_target(_q(expr, legend, chr(ord("A") + i)))
    return p


def _quantiles(metric: str, selector: str, qs: tuple[float, ...]) -> list[tuple[str, str]]:
    """p50/p95/... of a histogram over all its series: histogram_quantile over sum by (le) of the bucket rates."""
    series = f"{metric}_bucket{{{selector}}}" if selector else f"{metric}_bucket"
    return [
        (
            f"histogram_quantile({q}, sum by (le) (rate({series}{RATE})))",
            f"p{round(q * 100)}",
        )
        for q in qs
    ]


class _Layout:
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


def _dashboard(uid: str, title: str, description: str) -> dashboard_builders.Dashboard:
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


def _to_dict(board: dashboard_builders.Dashboard) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    return data


# ------------------------------------------------------------------------------------------ training


def training_dashboard() -> dict[str, Any]:
    """'disney-train / training': one run's progress, speed, checkpoints, storage and GPUs."""
    board = _dashboard(
        "disney-train-training",
        "disney-train / training",
        "One fine-tuning run (pick it in `run`): progress, loss, throughput, checkpoints, S3 and GPUs.",
    )
    board.with_variable(
        dashboard_builders.QueryVariable("namespace")
        .label("Namespace")
        .description("The VideoFineTune's namespace (All: any, and runs outside Kubernetes).")
        .datasource(DATASOURCE)
        .query("label_values(disney_train_stage, namespace)")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(False)
        .include_all(True)
        .all_value(".*")
    )
    board.with_variable(
        dashboard_builders.QueryVariable("run")
        .label("Run")
        .description("The run (VideoFineTune) whose workers' series are shown.")
        .datasource(DATASOURCE)
        .query('label_values(disney_train_stage{namespace=~"$namespace"}, run)')
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(False)
        .include_all(False)
    )
    grid = _Layout(board)
    r = RUN

    grid.row("Run")
    grid.add(
        4,
        4,
        _stat(
            "Stage",
            "What the workers are doing now (disney_train_stage); one entry per stage some rank is in. "
            "Empty once the workers are gone.",
            units.NoUnit,
            [(f"max by (stage) (disney_train_stage{{{r}}}) == 1", "{{stage}}")],
            instant=True,
            names=True,
            no_value="not running",
        ),
    )
    grid.add(
        8,
        4,
        _stat(
            "Model",
            "The run's model, variant, device, precision and DeepSpeed ZeRO stage (disney_train_info).",
            units.NoUnit,
            [
                (
                    f"max by (model, variant, device, precision, zero_stage) (disney_train_info{{{r}}})",
                    "{{model}} {{variant}} · {{device}} · {{precision}} · ZeRO {{zero_stage}}",
                )
            ],
            names=True,
        ),
    )
    grid.add(
        3,
        4,
        _stat(
            "Optimizer step",
            "Optimizer steps the run has done.",
            units.Short,
            [(f"max(disney_train_step{{{r}}})", "step")],
            decimals=0,
        ),
    )
    grid.add(
        3,
        4,
        _stat(
            "Epoch",
            "Epoch the data reader is in.",
            units.Short,
            [(f"max(disney_train_epoch{{{r}}})", "epoch")],
            decimals=0,
        ),
    )
    grid.add(
        3,
        4,
        _stat(
            "World size",
            "Workers in the group (changes when elastic training resizes it).",
            units.Short,
            [(f"max(disney_train_world_size{{{r}}})", "workers")],
            decimals=0,
        ),
    )
    grid.add(
        3,
        4,
        _stat(
            "Loss",
            "Training loss of the last optimizer step, the mean over ranks.",
            units.NoUnit,
            [(f"avg(disney_train_loss{{{r}}})", "loss")],
            decimals=4,
            graph=True,
        ),
    )
    grid.add(
        3,
        4,
        _stat(
            "Restarts",
            "Restarts of the worker group from its checkpoint, over the run's life (the counter carries over).",
            units.Short,
            [(f"max(disney_train_restarts_total{{{r}}})", "restarts")],
            decimals=0,
            thresholds=((1, "orange"), (3, "red")),
            base="green",
        ),
    )
    grid.add(
        3,
        4,
        _stat(
            "Resizes",
            "Changes of the worker group's size (elastic training), over the run's life.",
            units.Short,
            [(f"max(disney_train_resizes_total{{{r}}})", "resizes")],
            decimals=0,
            thresholds=((1, "orange"),),
            base="green",
        ),
    )
    grid.add(
        4,
        4,
        _stat(
            "Since last step",
            "Time since the last optimizer step ended on any rank. A CogVideoX step takes ~10-60 s on one GPU; "
            "much more means the run stalls (data, a hung collective) or is checkpointing/validating.",
            units.Seconds,
            [(f"time() - max(disney_train_last_step_timestamp_seconds{{{r}}})", "age")],
            instant=True,
            decimals=0,
            thresholds=((600, "orange"), (1800, "red")),
            base="green",
            no_value="not running",
        ),
    )
    grid.add(
        4,
        4,
        _stat(
            "Since last checkpoint",
            "Time since the last checkpoint was committed: what a crash now would lose.",
            units.Seconds,
            [(f"time() - max(disney_train_last_checkpoint_timestamp_seconds{{{r}}})", "age")],
            instant=True,
            decimals=0,
            no_value="none yet",
        ),
    )
    grid.add(
        3,
        4,
        _stat(
            "Checkpoint size",
            "Size of the last checkpoint written (reported by rank 0).",
            units.BytesIEC,
            [(f"max(disney_train_checkpoint_bytes{{{r}}})", "size")],
            no_value="none yet",
        ),
    )
    grid.add(
        4,
        4,
        _stat(
            "Clips / s",
            "Training throughput: clips per second, summed over ranks.",
            units.Short,
            [(f"sum(rate(disney_train_samples_total{{{r}}}{RATE}))", "clips/s")],
            decimals=2,
            graph=True,
        ),
    )
    grid.add(
        3,
        4,
        _stat(
            "Step time p50",
            "Median compute time of an optimizer step (without the wait for data), over all ranks.",
            units.Seconds,
            _quantiles("disney_train_step_duration_seconds", r, (0.5,)),
            decimals=2,
        ),
    )
    stage_index = " + ".join(
        f'max by (rank) (disney_train_stage{{{r}, stage="{s}"}}) * {i}' for i, s in enumerate(STAGES, start=1)
    )
    grid.add(
        24,
        6,
        statetimeline.Panel()
        .title("Stage per rank")
        .description(
            "What each rank was doing over time (disney_train_stage): "
            + ", ".join(STAGES)
            + ". Gaps: the worker was not running (or not scraped)."
        )
        .datasource(DATASOURCE)
        .unit(units.NoUnit)
        .thresholds(_thresholds(base="green"))
        .color_scheme(dashboard_builders.FieldColor().mode(FieldColorModeId.THRESHOLDS))
        .mappings(
            [
                ValueMap(
                    options={
                        "0": ValueMappingResult(text="none", color="transparent", index=0),
                        **{
                            str(i): ValueMappingResult(text=s, color=c, index=i)
                            for i, (s, c) in enumerate(zip(STAGES, STAGE_COLORS, strict=True), start=1)
                        },
                    }
                )
            ]
        )
        .show_value(common.VisibilityMode.AUTO)
        .merge_values(True)
        .row_height(0.9)
        .fill_opacity(70)
        .line_width(0)
        .legend(common_builders.VizLegendOptions().show_legend(False).display_mode(common.LegendDisplayMode.LIST))
        .with_target(_q(stage_index, "rank {{rank}}", "A")),
    )

    grid.row("Optimisation")
    grid.add(
        12,
        8,
        _timeseries(
            "Loss",
            "Training loss of each rank's last optimizer step (mean of its micro-batches) and the mean over ranks.",
            units.NoUnit,
            [(f"disney_train_loss{{{r}}}", "rank {{rank}}"), (f"avg(disney_train_loss{{{r}}})", "mean")],
            min_val=None,
            decimals=4,
        ),
    )
    grid.add(
        6,
        8,
        _timeseries(
            "Learning rate",
            "Learning rate after the last optimizer step (the same on every rank).",
            units.ScientificNotation,
            [(f"max(disney_train_learning_rate{{{r}}})", "learning rate")],
        ),
    )
    grid.add(
        6,
        8,
        _timeseries(
            "Gradient norm",
            "Global gradient norm of the last optimizer step, before clipping (the same on every rank).",
            units.NoUnit,
            [(f"max(disney_train_grad_norm{{{r}}})", "grad norm")],
        ),
    )

    grid.row("Throughput")
    grid.add(
        8,
        8,
        _timeseries(
            "Clips per second",
            "Clips trained on per second, summed over ranks, and per rank.",
            units.Short,
            [
                (f"sum(rate(disney_train_samples_total{{{r}}}{RATE}))", "all ranks"),
                (f"sum by (rank) (rate(disney_train_samples_total{{{r}}}{RATE}))", "rank {{rank}}"),
            ],
        ),
    )
    grid.add(
        8,
        8,
        _timeseries(
            "Frames per second",
            "Video frames trained on per second, summed over ranks.",
            units.Short,
            [(f"sum(rate(disney_train_frames_total{{{r}}}{RATE}))", "frames/s")],
        ),
    )
    step_mean = (
        f"sum(rate(disney_train_step_duration_seconds_sum{{{r}}}{RATE}))"
        f" / sum(rate(disney_train_step_duration_seconds_count{{{r}}}{RATE}))"
    )
    grid.add(
        8,
        8,
        _timeseries(
            "Step time",
            "Compute time of an optimizer step (forward, backward, update; without the wait for data): "
            "p50 and p95 from the histogram over all ranks, and the mean.",
            units.Seconds,
            [*_quantiles("disney_train_step_duration_seconds", r, (0.5, 0.95)), (step_mean, "mean")],
        ),
    )
    wait = f"rate(disney_train_data_wait_seconds_sum{{{r}}}{RATE})"
    compute = f"rate(disney_train_step_duration_seconds_sum{{{r}}}{RATE})"
    grid.add(
        12,
        8,
        _timeseries(
            "Data wait share of step time",
            "Share of the wall time of optimizer steps spent waiting for data: wait / (wait + compute). "
            "Near 0 the GPU is the bottleneck; a high share means the data path (S3, decoding) is.",
            units.PercentUnit,
            [
                (f"sum({wait}) / (sum({wait}) + sum({compute}))", "all ranks"),
                (
                    f"sum by (rank) ({wait}) / (sum by (rank) ({wait}) + sum by (rank) ({compute}))",
                    "rank {{rank}}",
                ),
            ],
            max_val=1,
        ),
    )
    grid.add(
        12,
        8,
        _timeseries(
            "Data wait",
            "Time an optimizer step waited for its batches: p50 and p95 from the histogram over all ranks.",
            units.Seconds,
            _quantiles("disney_train_data_wait_seconds", r, (0.5, 0.95)),
        ),
    )

    grid.row("Checkpoints")
    grid.add(
        8,
        8,
        _timeseries(
            "Checkpoint duration",
            "Time to gather and write a checkpoint: the mean of the checkpoints each rank finished in the "
            "window (a point per window with a checkpoint).",
            units.Seconds,
            [
                (
                    f"increase(disney_train_checkpoint_duration_seconds_sum{{{r}}}{RATE})"
                    f" / (increase(disney_train_checkpoint_duration_seconds_count{{{r}}}{RATE}) > 0)",
                    "rank {{rank}}",
                )
            ],
            points=True,
        ),
    )
    grid.add(
        8,
        8,
        _timeseries(
            "Checkpoint size",
            "Size of the last checkpoint written (rank 0).",
            units.BytesIEC,
            [(f"max(disney_train_checkpoint_bytes{{{r}}})", "size")],
        ),
    )
    grid.add(
        8,
        8,
        _timeseries(
            "Time since last checkpoint",
            "Age of the last committed checkpoint: what a crash would lose. Drops at each checkpoint.",
            units.Seconds,
            [(f"time() - max(disney_train_last_checkpoint_timestamp_seconds{{{r}}})", "age")],
        ),
    )

    grid.row("Storage (S3)")
    grid.add(
        12,
        8,
        _timeseries(
            "S3 throughput",
            "Bytes per second read from S3 (by the workers and their decode processes) and written "
            "(checkpoints, cache, progress), summed over ranks.",
            units.BytesPerSecondSI,
            [
                (f"sum(rate(disney_train_s3_read_bytes_total{{{r}}}{RATE}))", "read"),
                (f"sum(rate(disney_train_s3_written_bytes_total{{{r}}}{RATE}))", "written"),
            ],
        ),
    )
    grid.add(
        12,
        8,
        _timeseries(
            "S3 retries and errors",
            "Per second, summed over ranks: S3 requests retried after a transient error, and the errors the run "
            "survived by kind (disney_train_errors_total).",
            units.Short,
            [
                (f"sum(rate(disney_train_s3_retries_total{{{r}}}{RATE}))", "S3 retries"),
                (f"sum by (kind) (rate(disney_train_errors_total{{{r}}}{RATE}))", "errors: {{kind}}"),
            ],
        ),
    )

    grid.row("GPU")
    grid.add(
        12,
        8,
        _timeseries(
            "GPU memory",
            "Per rank (torch): memory held by tensors (allocated) and by the caching allocator (reserved); "
            "and the GPU's memory. Empty on CPU runs.",
            units.BytesIEC,
            [
                (f"disney_train_gpu_memory_allocated_bytes{{{r}}}", "allocated rank {{rank}}"),
                (f"disney_train_gpu_memory_reserved_bytes{{{r}}}", "reserved rank {{rank}}"),
                (f"max(disney_train_gpu_memory_total_bytes{{{r}}})", "total"),
            ],
        ),
    )
    grid.add(
        12,
        8,
        _timeseries(
            "GPU utilisation",
            "Busy fraction of each rank's GPU over the last sample period (NVML through torch). "
            "Empty on CPU runs or where NVML is missing.",
            units.PercentUnit,
            [(f"disney_train_gpu_utilization_ratio{{{r}}}", "rank {{rank}}")],
            max_val=1,
        ),
    )
    grid.add(
        12,
        8,
        _timeseries(
            "GPU utilisation (DCGM)",
            "GPU utilisation of the run's worker pods from the NVIDIA DCGM exporter (DCGM_FI_DEV_GPU_UTIL). "
            "Needs the DCGM exporter with its Kubernetes pod mapping (the namespace/pod/container labels of "
            "the workload); empty otherwise.",
            units.Percent,
            [(f"DCGM_FI_DEV_GPU_UTIL{{{RUN_PODS}}}", "{{pod}} GPU {{gpu}}")],
            max_val=100,
        ),
    )
    fb_bytes = 1024 * 1024
    grid.add(
        12,
        8,
        _timeseries(
            "GPU framebuffer (DCGM)",
            "Framebuffer memory used on each GPU of the run's worker pods and its size (used + free), from the "
            "NVIDIA DCGM exporter (DCGM_FI_DEV_FB_USED/FREE, MiB). Needs the DCGM exporter with its Kubernetes "
            "pod mapping; empty otherwise.",
            units.BytesIEC,
            [
                (f"DCGM_FI_DEV_FB_USED{{{RUN_PODS}}} * {fb_bytes}", "used {{pod}} GPU {{gpu}}"),
                (
                    f"(DCGM_FI_DEV_FB_USED{{{RUN_PODS}}} + DCGM_FI_DEV_FB_FREE{{{RUN_PODS}}}) * {fb_bytes}",
                    "total {{pod}} GPU {{gpu}}",
                ),
            ],
        ),
    )
    return _to_dict(board)


# ------------------------------------------------------------------------------------------ operator


def operator_dashboard() -> dict[str, Any]:
    """'disney-train / operator': reconciles, VideoFineTunes by phase and writes to the Kubernetes API."""
    board = _dashboard(
        "disney-train-operator",
        "disney-train / operator",
        "The disney-train operator: reconciles, their errors and duration, VideoFineTunes by phase, API writes.",
    )
    grid = _Layout(board)
    phases = [("max by (phase) (disney_operator_videofinetunes)", "{{phase}}")]

    grid.row("Operator")
    grid.add(
        5,
        4,
        _stat(
            "Operator",
            "Version of the running operator and the API group it serves (disney_operator_info).",
            units.NoUnit,
            [("max by (version, group) (disney_operator_info)", "{{version}} ({{group}})")],
            instant=True,
            names=True,
            no_value="not running",
        ),
    )
    by_phase = _stat(
        "VideoFineTunes by phase",
        "VideoFineTunes the operator knows, by status phase, now.",
        units.Short,
        phases,
        decimals=0,
    ).text_mode(common.BigValueTextMode.VALUE_AND_NAME)
    for phase, color in PHASE_COLORS.items():
        by_phase = by_phase.override_by_name(phase, [_fixed_color(color)])
    grid.add(8, 4, by_phase)
    grid.add(
        3,
        4,
        _stat(
            "Replicas",
            "Operator replicas running, and working: one works, the others stand by for it (kopf peering; "
            "disney_operator_active). Working 0 with replicas running: none can read the peering object.",
            units.Short,
            [("sum(disney_operator_active)", "working"), ("count(disney_operator_active)", "running")],
            instant=True,
            names=True,
            decimals=0,
            no_value="not running",
        ),
    )
    grid.add(
        4,
        4,
        _stat(
            "Reconciles / s",
            "Reconciles per second, all results.",
            units.OpsPerSecond,
            [(f"sum(rate(disney_operator_reconciles_total{RATE}))", "reconciles/s")],
            decimals=2,
            graph=True,
        ),
    )
    grid.add(
        4,
        4,
        _stat(
            "Reconcile p95",
            "95th percentile of the time one reconcile takes.",
            units.Seconds,
            _quantiles("disney_operator_reconcile_duration_seconds", "", (0.95,)),
            decimals=3,
            graph=True,
        ),
    )

    grid.row("Reconciles")
    grid.add(
        12,
        8,
        _timeseries(
            "Reconciles by result",
            "Reconciles per second by result: ok, conflict (a status write refused with 409; the next event "
            "reconciles again) or error (the reconcile raised).",
            units.OpsPerSecond,
            [(f"sum by (result) (rate(disney_operator_reconciles_total{RATE}))", "{{result}}")],
        ),
    )
    grid.add(
        12,
        8,
        _timeseries(
            "Reconcile errors by type",
            "Reconciles that raised, per second, by exception type.",
            units.OpsPerSecond,
            [(f"sum by (error) (rate(disney_operator_reconcile_errors_total{RATE}))", "{{error}}")],
        ),
    )
    grid.add(
        12,
        8,
        _timeseries(
            "Reconcile duration",
            "Time of one reconcile: p50, p95 and p99 from the histogram.",
            units.Seconds,
            _quantiles("disney_operator_reconcile_duration_seconds", "", (0.5, 0.95, 0.99)),
        ),
    )
    grid.add(
        12,
        8,
        _timeseries(
            "Write conflicts",
            "Status writes refused with 409 per second (the object had moved on), and reconciles that ended "
            "in such a conflict.",
            units.OpsPerSecond,
            [
                (f"sum(rate(disney_operator_write_conflicts_total{RATE}))", "write conflicts"),
                (
                    f'sum(rate(disney_operator_reconciles_total{{result="conflict"}}{RATE}))',
                    "reconciles ending in conflict",
                ),
            ],
        ),
    )

    grid.row("VideoFineTunes and the Kubernetes API")
    vfts = _timeseries(
        "VideoFineTunes by phase",
        "VideoFineTunes by status phase over time (stacked: the top is their total).",
        units.Short,
        phases,
        decimals=0,
        stacked=True,
    )
    for phase, color in PHASE_COLORS.items():
        vfts = vfts.override_by_name(phase, [_fixed_color(color)])
    grid.add(12, 8, vfts)
    grid.add(
        12,
        8,
        _timeseries(
            "API writes by verb and resource",
            "Writes the operator makes to the Kubernetes API per second, by verb and resource.",
            units.OpsPerSecond,
            [
                (
                    f"sum by (verb, resource) (rate(disney_operator_api_writes_total{RATE}))",
                    "{{verb}} {{resource}}",
                )
            ],
        ),
    )
    return _to_dict(board)


# ------------------------------------------------------------------------------------------ public API

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
