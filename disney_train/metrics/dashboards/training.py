"""The 'disney-train / training' dashboard: one run's progress, speed, checkpoints, storage and GPUs, a
function per row."""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import statetimeline
from grafana_foundation_sdk.models import common, units
from grafana_foundation_sdk.models.dashboard import (
    FieldColorModeId,
    ValueMap,
    ValueMappingResult,
    VariableRefresh,
    VariableSort,
)

from disney_train.metrics.dashboards.panels import (
    DATASOURCE,
    RATE,
    RUN,
    RUN_PODS,
    STAGE_COLORS,
    Layout,
    new_dashboard,
    quantiles,
    query,
    stat_panel,
    threshold_config,
    timeseries_panel,
    to_dict,
)
from disney_train.metrics.exporter import STAGES


def training_dashboard() -> dict[str, Any]:
    """'disney-train / training': one run's progress, speed, checkpoints, storage and GPUs."""
    board = new_dashboard(
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
    grid = Layout(board)
    for row in (_run, _run_timing, _stage_per_rank, _optimisation, _throughput, _checkpoints, _storage, _gpus):
        row(grid)
    return to_dict(board)


def _run(grid: Layout) -> None:
    """The 'Run' row: what runs, where it is, its loss and restarts."""
    r = RUN
    grid.row("Run")
    grid.add(
        4,
        4,
        stat_panel(
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
        stat_panel(
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
        stat_panel(
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
        stat_panel(
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
        stat_panel(
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
        stat_panel(
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
        stat_panel(
            "Restarts",
            "Restarts of the worker group from its checkpoint, over the run's life (the counter carries over).",
            units.Short,
            [(f"max(disney_train_restarts_total{{{r}}})", "restarts")],
            decimals=0,
            thresholds=((1, "orange"), (3, "red")),
            base="green",
        ),
    )


def _run_timing(grid: Layout) -> None:
    """The 'Run' row, its second line: resizes, time since the last step and checkpoint, speed."""
    r = RUN
    grid.add(
        3,
        4,
        stat_panel(
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
        stat_panel(
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
        stat_panel(
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
        stat_panel(
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
        stat_panel(
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
        stat_panel(
            "Step time p50",
            "Median compute time of an optimizer step (without the wait for data), over all ranks.",
            units.Seconds,
            quantiles("disney_train_step_duration_seconds", r, (0.5,)),
            decimals=2,
        ),
    )


def _stage_per_rank(grid: Layout) -> None:
    """The 'Run' row's timeline: each rank's stage over time."""
    r = RUN
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
        .thresholds(threshold_config(base="green"))
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
        .with_target(query(stage_index, "rank {{rank}}", "A")),
    )


def _optimisation(grid: Layout) -> None:
    """The 'Optimisation' row."""
    r = RUN
    grid.row("Optimisation")
    grid.add(
        12,
        8,
        timeseries_panel(
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
        timeseries_panel(
            "Learning rate",
            "Learning rate after the last optimizer step (the same on every rank).",
            units.ScientificNotation,
            [(f"max(disney_train_learning_rate{{{r}}})", "learning rate")],
        ),
    )
    grid.add(
        6,
        8,
        timeseries_panel(
            "Gradient norm",
            "Global gradient norm of the last optimizer step, before clipping (the same on every rank).",
            units.NoUnit,
            [(f"max(disney_train_grad_norm{{{r}}})", "grad norm")],
        ),
    )


def _throughput(grid: Layout) -> None:
    """The 'Throughput' row."""
    r = RUN
    grid.row("Throughput")
    grid.add(
        8,
        8,
        timeseries_panel(
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
        timeseries_panel(
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
        timeseries_panel(
            "Step time",
            "Compute time of an optimizer step (forward, backward, update; without the wait for data): "
            "p50 and p95 from the histogram over all ranks, and the mean.",
            units.Seconds,
            [*quantiles("disney_train_step_duration_seconds", r, (0.5, 0.95)), (step_mean, "mean")],
        ),
    )
    wait = f"rate(disney_train_data_wait_seconds_sum{{{r}}}{RATE})"
    compute = f"rate(disney_train_step_duration_seconds_sum{{{r}}}{RATE})"
    grid.add(
        12,
        8,
        timeseries_panel(
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
        timeseries_panel(
            "Data wait",
            "Time an optimizer step waited for its batches: p50 and p95 from the histogram over all ranks.",
            units.Seconds,
            quantiles("disney_train_data_wait_seconds", r, (0.5, 0.95)),
        ),
    )


def _checkpoints(grid: Layout) -> None:
    """The 'Checkpoints' row."""
    r = RUN
    grid.row("Checkpoints")
    grid.add(
        8,
        8,
        timeseries_panel(
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
        timeseries_panel(
            "Checkpoint size",
            "Size of the last checkpoint written (rank 0).",
            units.BytesIEC,
            [(f"max(disney_train_checkpoint_bytes{{{r}}})", "size")],
        ),
    )
    grid.add(
        8,
        8,
        timeseries_panel(
            "Time since last checkpoint",
            "Age of the last committed checkpoint: what a crash would lose. Drops at each checkpoint.",
            units.Seconds,
            [(f"time() - max(disney_train_last_checkpoint_timestamp_seconds{{{r}}})", "age")],
        ),
    )


def _storage(grid: Layout) -> None:
    """The 'Storage (S3)' row."""
    r = RUN
    grid.row("Storage (S3)")
    grid.add(
        12,
        8,
        timeseries_panel(
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
        timeseries_panel(
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


def _gpus(grid: Layout) -> None:
    """The 'GPU' row: the DCGM exporter's figures for the run's worker pods."""
    r = RUN
    grid.row("GPU")
    grid.add(
        12,
        8,
        timeseries_panel(
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
        timeseries_panel(
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
        timeseries_panel(
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
        timeseries_panel(
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
