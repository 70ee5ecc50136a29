"""The 'disney-train / operator' dashboard: reconciles, VideoFineTunes by phase, writes to the Kubernetes API."""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.models import common, units

from disney_train.metrics.dashboards.panels import (
    PHASE_COLORS,
    RATE,
    Layout,
    fixed_color,
    new_dashboard,
    quantiles,
    stat_panel,
    timeseries_panel,
    to_dict,
)


def operator_dashboard() -> dict[str, Any]:
    """'disney-train / operator': reconciles, VideoFineTunes by phase and writes to the Kubernetes API."""
    board = new_dashboard(
        "disney-train-operator",
        "disney-train / operator",
        "The disney-train operator: reconciles, their errors and duration, VideoFineTunes by phase, API writes.",
    )
    grid = Layout(board)
    for row in (_operator, _reconciles, _videofinetunes_and_api):
        row(grid)
    return to_dict(board)


# the VideoFineTunes by phase, a colour per phase
PHASES = [("max by (phase) (disney_operator_videofinetunes)", "{{phase}}")]


def _operator(grid: Layout) -> None:
    """The 'Operator' row: is it up, the leader, the VideoFineTunes by phase."""
    grid.row("Operator")
    grid.add(
        5,
        4,
        stat_panel(
            "Operator",
            "Version of the running operator and the API group it serves (disney_operator_info).",
            units.NoUnit,
            [("max by (version, group) (disney_operator_info)", "{{version}} ({{group}})")],
            instant=True,
            names=True,
            no_value="not running",
        ),
    )
    by_phase = stat_panel(
        "VideoFineTunes by phase",
        "VideoFineTunes the operator knows, by status phase, now.",
        units.Short,
        PHASES,
        decimals=0,
    ).text_mode(common.BigValueTextMode.VALUE_AND_NAME)
    for phase, color in PHASE_COLORS.items():
        by_phase = by_phase.override_by_name(phase, [fixed_color(color)])
    grid.add(8, 4, by_phase)
    grid.add(
        3,
        4,
        stat_panel(
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
        stat_panel(
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
        stat_panel(
            "Reconcile p95",
            "95th percentile of the time one reconcile takes.",
            units.Seconds,
            quantiles("disney_operator_reconcile_duration_seconds", "", (0.95,)),
            decimals=3,
            graph=True,
        ),
    )


def _reconciles(grid: Layout) -> None:
    """The 'Reconciles' row: rate, errors and duration."""
    grid.row("Reconciles")
    grid.add(
        12,
        8,
        timeseries_panel(
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
        timeseries_panel(
            "Reconcile errors by type",
            "Reconciles that raised, per second, by exception type.",
            units.OpsPerSecond,
            [(f"sum by (error) (rate(disney_operator_reconcile_errors_total{RATE}))", "{{error}}")],
        ),
    )
    grid.add(
        12,
        8,
        timeseries_panel(
            "Reconcile duration",
            "Time of one reconcile: p50, p95 and p99 from the histogram.",
            units.Seconds,
            quantiles("disney_operator_reconcile_duration_seconds", "", (0.5, 0.95, 0.99)),
        ),
    )
    grid.add(
        12,
        8,
        timeseries_panel(
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


def _videofinetunes_and_api(grid: Layout) -> None:
    """The 'VideoFineTunes and the Kubernetes API' row."""
    grid.row("VideoFineTunes and the Kubernetes API")
    vfts = timeseries_panel(
        "VideoFineTunes by phase",
        "VideoFineTunes by status phase over time (stacked: the top is their total).",
        units.Short,
        PHASES,
        decimals=0,
        stacked=True,
    )
    for phase, color in PHASE_COLORS.items():
        vfts = vfts.override_by_name(phase, [fixed_color(color)])
    grid.add(12, 8, vfts)
    grid.add(
        12,
        8,
        timeseries_panel(
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
