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
from collections.abc import Callable, Iterable
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
STAGES = ("starting", "caching", "training", "checkpointing", "validating", "finished")
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
    """Figures read when Prometheus scrapes: S3 traffic (shared with the decode workers) and the GPU."""

    def __init__(self, labels: tuple[str, str], gpu: Callable[[], GpuReading] | None) -> None:
        self.labels, self.gpu = list(labels), gpu

    def collect(self) -> Iterable[Any]:
        io = IO.snapshot()
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

    def __init__(
        self,
        run: str,
        rank: int,
        gpu: Callable[[], GpuReading] | None = None,
        *,
        restarts: int = 0,
        resizes: int = 0,
    ) -> None:
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
        self.stage = gauge("stage", "1 for what the worker is doing now, 0 for the others.", ("stage",))
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
        self.errors = counter("errors", "Errors the run survived, by kind.", ("kind",))
        self.registry.register(_ScrapeTime(self.key, gpu))
        self.set_stage("starting")
        # every series exists from the start: a rate over a counter that appears late loses its first increase
        for kind in ("s3", "progress_write"):
            self.errors.labels(*self.key, kind)
        for m in (self.samples, self.frames, self.step_seconds, self.data_wait):
            m.labels(*self.key)
        # set before the first scrape: a 0 served in between would look like a reset
        self.restart_count = restarts
        self.restarts.labels(*self.key).inc(restarts)
        self.resizes.labels(*self.key).inc(resizes)
        self.checkpoint_seconds.labels(*self.key)
        self._failures_seen = IO.snapshot()["failures"]
        self._server: Any = None

    # -------------------------------------------------------------- updates from the loop

    def started(self, *, info: dict[str, str], world_size: int, step: int) -> None:
        self.info.labels(*self.key, *(info[k] for k in INFO_LABELS)).set(1)
        self.world_size.labels(*self.key).set(world_size)
        self.step.labels(*self.key).set(step)

    def set_stage(self, stage: str) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        for s in STAGES:
            self.stage.labels(*self.key, s).set(1 if s == stage else 0)

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
        k = self.key
        self.loss.labels(*k).set(loss)
        self.learning_rate.labels(*k).set(learning_rate)
        self.grad_norm.labels(*k).set(math.nan if grad_norm is None else grad_norm)
        self.step.labels(*k).set(step)
        self.epoch.labels(*k).set(epoch)
        self.step_seconds.labels(*k).observe(compute_seconds)
        self.data_wait.labels(*k).observe(wait_seconds)
        self.samples.labels(*k).inc(samples)
        self.frames.labels(*k).inc(frames)
        self.last_step_time.labels(*k).set(time.time())
        self._count_s3_failures()

    def checkpoint(self, seconds: float, size: int | None) -> None:
        self.checkpoint_seconds.labels(*self.key).observe(seconds)
        self.last_checkpoint_time.labels(*self.key).set(time.time())
        if size is not None:
            self.checkpoint_bytes.labels(*self.key).set(size)

    def error(self, kind: str) -> None:
        self.errors.labels(*self.key, kind).inc()

    def _count_s3_failures(self) -> None:
        now = IO.snapshot()["failures"]
        if now > self._failures_seen:
            self.errors.labels(*self.key, "s3").inc(now - self._failures_seen)
            self._failures_seen = now

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
            except OSError as err:
                if err.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                    log.error("metrics not served on %s:%d (%s); training goes on without them", host, port, err)
                    return False
                time.sleep(0.5)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
