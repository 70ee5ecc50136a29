"""Prometheus metrics of one training worker, served by the worker itself (prometheus-client).

Every series carries `run` (the run name) and `rank` (the worker's world rank). The worker of
local rank i on a node serves `http://<node IP>:<metrics.port + i>/metrics`: on Kubernetes the pod
IP (the RayJob declares the ports `metrics-<i>`), locally 127.0.0.1. Why per-worker
prometheus-client rather than Ray's `ray.util.metrics`: see the README ("Metrics").

Counters that must survive a restart of the worker group (restarts, resizes) start from the
run's own record (`starts.json`), so a new process continues the old series instead of resetting it.
"""

from __future__ import annotations

import errno
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from disney_train.storage import IO

log = logging.getLogger(__name__)
disable_created_metrics()  # type: ignore[no-untyped-call]  # no `*_created` series: Prometheus 2 stores them as plain gauges

PREFIX = "disney_train"
LABELS = ("run", "rank")
INFO_LABELS = ("model", "variant", "device", "precision", "zero_stage")
# starting: the process is up; caching: the latent cache stage; loading: model, DeepSpeed, resume;
# finishing: after the last step (final checkpoint, LoRA, validation)
STAGES = ("starting", "caching", "loading", "training", "checkpointing", "validating", "finishing")
# seconds: a tiny CPU step takes ~0.1 s, a CogVideoX-5b step on one GPU ~10-60 s
STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
CHECKPOINT_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


@dataclass(frozen=True)
class GpuReading:
    allocated: float
    reserved: float
    total: float
    utilization: float | None  # 0..1; None where NVML is not there


def cuda_reading(device_index: int) -> GpuReading:
    """What torch knows of this worker's GPU (read at each scrape)."""
    import torch

    util: float | None
    try:
        util = float(torch.cuda.utilization(device_index)) / 100.0  # needs pynvml (nvidia-ml-py)
    except Exception:
        util = None
    return GpuReading(
        allocated=float(torch.cuda.memory_allocated(device_index)),
        reserved=float(torch.cuda.memory_reserved(device_index)),
        total=float(torch.cuda.get_device_properties(device_index).total_memory),
        utilization=util,
    )


class _ScrapeTime(Collector):
    """Figures read when Prometheus scrapes: the stage (one value, so a scrape never sees two), S3
    traffic and failures (shared with the decode workers), the errors, and the GPU."""

    def __init__(self, owner: WorkerMetrics, gpu: Callable[[], GpuReading] | None) -> None:
        self.owner, self.labels, self.gpu = owner, list(owner.key), gpu
        self.failures_before = IO.snapshot()["failures"]

    def describe(self) -> Iterable[Any]:
        return []  # nothing read at registration (the GPU, say)

    def collect(self) -> Iterable[Any]:
        o = self.owner
        stage = GaugeMetricFamily(
            f"{PREFIX}_stage", "1 for what the worker is doing now, 0 for the others.", labels=[*LABELS, "stage"]
        )
        current = o.current_stage
        for st in STAGES:
            stage.add_metric([*self.labels, st], 1.0 if st == current else 0.0)
        yield stage
        io = IO.snapshot()
        errors = CounterMetricFamily(f"{PREFIX}_errors", "Errors the run survived, by kind.", labels=[*LABELS, "kind"])
        errors.add_metric([*self.labels, "s3"], float(max(0, io["failures"] - self.failures_before)))
        errors.add_metric([*self.labels, "progress_write"], float(o.progress_write_errors))
        yield errors
        for field, name, doc in (
            ("read_bytes", "s3_read_bytes", "Bytes read from S3 by this worker and its decode processes."),
            ("written_bytes", "s3_written_bytes", "Bytes written to S3 (checkpoints, cache, progress)."),
            ("retries", "s3_retries", "S3 requests retried after a transient error."),
        ):
            c = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=LABELS)
            c.add_metric(self.labels, float(io[field]))
            yield c
        if self.gpu is None:
            return
        try:
            g = self.gpu()
        except Exception as err:  # a scrape never fails for a GPU that cannot be read
            log.warning("GPU figures not read: %s", err)
            return
        for name, value, doc in (
            ("gpu_memory_allocated_bytes", g.allocated, "GPU memory held by tensors (torch)."),
            ("gpu_memory_reserved_bytes", g.reserved, "GPU memory reserved by torch's caching allocator."),
            ("gpu_memory_total_bytes", g.total, "The GPU's memory."),
            ("gpu_utilization_ratio", g.utilization, "GPU busy fraction over the last sample period (NVML)."),
        ):
            if value is not None:
                m = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=LABELS)
                m.add_metric(self.labels, value)
                yield m


class WorkerMetrics:
    """The metrics of one worker, in a registry of its own."""

    def __init__(self, run: str, rank: int, gpu: Callable[[], GpuReading] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.key = (run, str(rank))
        r, lab = self.registry, LABELS

        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> Gauge:
            return Gauge(f"{PREFIX}_{name}", doc, (*lab, *extra), registry=r)

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(f"{PREFIX}_{name}", doc, (*lab, *extra), registry=r)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(f"{PREFIX}_{name}", doc, lab, buckets=buckets, registry=r)

        self.info = gauge("info", "1, with the run's model, variant, device, precision and ZeRO stage.", INFO_LABELS)
        self.loss = gauge("loss", "Training loss of this rank's last optimizer step (mean of its micro-batches).")
        self.learning_rate = gauge("learning_rate", "Learning rate after the last optimizer step.")
        self.grad_norm = gauge("grad_norm", "Global gradient norm of the last optimizer step (before clipping).")
        self.step = gauge("step", "Optimizer steps done by the run.")
        self.epoch = gauge("epoch", "Epoch the data reader is in.")
        self.world_size = gauge("world_size", "Workers in the group.")
        self.last_step_time = gauge("last_step_timestamp_seconds", "Unix time the last optimizer step ended.")
        self.step_seconds = histogram(
            "step_duration_seconds", "Compute time of an optimizer step (forward, backward, update).", STEP_BUCKETS
        )
        self.data_wait = histogram("data_wait_seconds", "Time an optimizer step waited for its batches.", WAIT_BUCKETS)
        self.samples = counter("samples", "Clips trained on by this rank.")
        self.frames = counter("frames", "Video frames trained on by this rank.")
        self.restarts = counter("restarts", "Starts of the run's worker group after its first (its starts.json).")
        self.resizes = counter("resizes", "Starts of the worker group at another size than the start before.")
        self.checkpoint_seconds = histogram(
            "checkpoint_duration_seconds", "Time to gather and write a checkpoint.", CHECKPOINT_BUCKETS
        )
        self.checkpoint_bytes = gauge("checkpoint_bytes", "Size of the last checkpoint written (rank 0).")
        self.last_checkpoint_time = gauge(
            "last_checkpoint_timestamp_seconds", "Unix time the last checkpoint was committed."
        )
        self.current_stage = "starting"
        self.progress_write_errors = 0
        self.registry.register(_ScrapeTime(self, gpu))
        # every series exists from the start: a rate over a counter that appears late loses its first increase
        for m in (self.samples, self.frames, self.step_seconds, self.data_wait, self.checkpoint_seconds):
            m.labels(*self.key)
        self._server: Any = None
        self._per_step: tuple[Any, ...] | None = None

    # -------------------------------------------------------------- updates from the loop

    def started(self, *, info: dict[str, str], world_size: int, step: int) -> None:
        self.info.labels(*self.key, *(info[k] for k in INFO_LABELS)).set(1)
        self.world_size.labels(*self.key).set(world_size)
        self.step.labels(*self.key).set(step)

    def record_starts(self, restarts: int, resizes: int) -> None:
        """The run's restarts and resizes so far (its starts.json). Not exported until known: a 0
        served in the meantime would look like a reset, or a new run."""
        self.restarts.labels(*self.key).inc(restarts)
        self.resizes.labels(*self.key).inc(resizes)

    def set_stage(self, stage: str) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        self.current_stage = stage

    @contextmanager
    def stage(self, stage: str) -> Iterator[None]:
        """A stage inside another (checkpointing, validating): the one before comes back after it."""
        before = self.current_stage
        self.set_stage(stage)
        try:
            yield
        finally:
            self.set_stage(before)

    def optimizer_step(
        self,
        *,
        step: int,
        epoch: int,
        loss: float,
        learning_rate: float,
        grad_norm: float | None,
        compute_seconds: float,
        wait_seconds: float,
        samples: int,
        frames: int,
    ) -> None:
        if self._per_step is None:  # the children, looked up once (the gauges appear at the first step)
            k = self.key
            self._per_step = tuple(
                m.labels(*k)
                for m in (
                    self.loss, self.learning_rate, self.grad_norm, self.step, self.epoch, self.last_step_time,
                    self.step_seconds, self.data_wait, self.samples, self.frames,
                )
            )  # fmt: skip
        loss_g, lr_g, norm_g, step_g, epoch_g, time_g, step_h, wait_h, samples_c, frames_c = self._per_step
        loss_g.set(loss)
        lr_g.set(learning_rate)
        norm_g.set(math.nan if grad_norm is None else grad_norm)
        step_g.set(step)
        epoch_g.set(epoch)
        step_h.observe(compute_seconds)
        wait_h.observe(wait_seconds)
        samples_c.inc(samples)
        frames_c.inc(frames)
        time_g.set(time.time())

    def checkpoint(self, seconds: float, size: int | None) -> None:
        self.checkpoint_seconds.labels(*self.key).observe(seconds)
        self.last_checkpoint_time.labels(*self.key).set(time.time())
        if size is not None:
            self.checkpoint_bytes.labels(*self.key).set(size)

    def progress_write_failed(self) -> None:
        self.progress_write_errors += 1

    # -------------------------------------------------------------- serving

    def serve(self, host: str, port: int, wait_seconds: float = 20.0) -> bool:
        """Serve /metrics on host:port. The port may still be held by this rank's previous process
        (a restarted group): wait for it a while, then go on without metrics rather than fail the run."""
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                self._server, _ = start_http_server(port, addr=host, registry=self.registry)
                log.info("metrics of run %s rank %s at http://%s:%d/metrics", *self.key, host, port)
                return True
            except (OSError, OverflowError) as err:  # OverflowError: a port over 65535
                if getattr(err, "errno", None) != errno.EADDRINUSE or time.monotonic() > deadline:
                    log.error("metrics not served on %s:%d (%s); training goes on without them", host, port, err)
                    return False
                time.sleep(0.5)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
