"""The workers' and the operator's metrics, scraped over HTTP and parsed as Prometheus parses them."""

from __future__ import annotations

import multiprocessing
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from disney_operator.metrics import OperatorMetrics, phase_counts
from disney_train.config import RunConfig
from disney_train.metrics.exporter import STAGES, GpuReading, WorkerMetrics
from disney_train.runs import RunFiles
from disney_train.storage import IO
from tests.support.seaweed import free_ports

INFO = {"model": "s3://models/x", "variant": "t2v", "device": "cpu", "precision": "fp32", "zero_stage": "2"}


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """{sample name: [(labels, value)]} from a /metrics endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return out


def value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    found = [v for lab, v in samples[name] if all(lab.get(k) == x for k, x in labels.items())]
    assert len(found) == 1, (name, labels, samples.get(name))
    return found[0]


@pytest.fixture
def worker() -> Iterator[tuple[WorkerMetrics, int]]:
    port = free_ports(1)[0]
    m = WorkerMetrics("run-a", 1)
    assert m.serve("127.0.0.1", port)
    yield m, port
    m.close()


def test_worker_series_follow_the_loop() -> None:
    port = free_ports(1)[0]
    m = WorkerMetrics("run-a", 1)
    assert m.serve("127.0.0.1", port)
    try:
        before = scrape(port)
        # not known yet: absent, never a 0 that would look like a reset
        assert "disney_train_restarts_total" not in before and "disney_train_resizes_total" not in before
        assert value(before, "disney_train_stage", stage="starting") == 1
        m.record_starts(3, 1)
        _loop(m)
        s = scrape(port)
    finally:
        m.close()
    _check_loop(s)


def _loop(m: WorkerMetrics) -> None:
    m.started(info=INFO, world_size=2, step=40)
    for i, (loss, wait) in enumerate([(0.5, 0.01), (float("nan"), 2.0)]):
        m.optimizer_step(
            step=41 + i,
            epoch=2,
            loss=loss,
            learning_rate=1e-4,
            grad_norm=None if i else 0.75,
            compute_seconds=0.2,
            wait_seconds=wait,
            samples=4,
            frames=4 * 49,
        )
    m.set_stage("training")
    with m.stage("checkpointing"):
        m.checkpoint(1.5, 123456)
    assert m.current_stage == "training"
    m.set_stage("finishing")
    with m.stage("validating"):
        pass
    m.set_stage("validating")


def _check_loop(s: dict[str, list[tuple[dict[str, str], float]]]) -> None:
    every = [lab for samples in s.values() for lab, _ in samples]
    assert all(lab.get("run") == "run-a" and lab.get("rank") == "1" for lab in every)
    assert value(s, "disney_train_step") == 42
    assert value(s, "disney_train_samples_total") == 8
    assert value(s, "disney_train_frames_total") == 8 * 49
    assert value(s, "disney_train_restarts_total") == 3  # continued from the run's record, not reset
    assert value(s, "disney_train_resizes_total") == 1
    assert value(s, "disney_train_loss") != value(s, "disney_train_loss")  # NaN is exported as NaN
    assert value(s, "disney_train_grad_norm") != value(s, "disney_train_grad_norm")  # unknown: NaN, not 0
    assert value(s, "disney_train_step_duration_seconds_count") == 2
    assert value(s, "disney_train_data_wait_seconds_sum") == pytest.approx(2.01)
    assert value(s, "disney_train_data_wait_seconds_bucket", le="0.01") == 1
    assert value(s, "disney_train_checkpoint_bytes") == 123456
    assert value(s, "disney_train_checkpoint_duration_seconds_count") == 1
    assert value(s, "disney_train_world_size") == 2
    assert value(s, "disney_train_info", device="cpu", zero_stage="2") == 1
    assert {lab["stage"]: v for lab, v in s["disney_train_stage"]} == {st: float(st == "validating") for st in STAGES}
    assert not [n for n in s if "gpu" in n]  # no GPU, no GPU series
    assert not [n for n in s if n.endswith("_created")]


def test_starts_record_restarts_and_resizes(tmp_path: Path) -> None:
    cfg = RunConfig.model_validate(
        {"name": "r", "model": {"uri": "m"}, "data": {"uri": "d"}, "output": {"uri": str(tmp_path)}}
    )
    files = RunFiles(cfg)
    assert files.record_start(2) | {"time": 0} == {"starts": 1, "resizes": 0, "world_size": 2, "time": 0}
    assert files.record_start(2)["resizes"] == 0  # a restart at the same size
    again = files.record_start(4)
    assert (again["starts"], again["resizes"]) == (3, 1)
    assert RunFiles(cfg).record_start(4)["starts"] == 4  # read back from the run's files


def test_counters_and_units_follow_prometheus_naming(worker: tuple[WorkerMetrics, int]) -> None:
    m, _ = worker
    for family in m.registry.collect():
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), family.name
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name
        assert family.name.startswith("disney_train_")


def test_s3_traffic_of_forked_decode_workers_is_counted(worker: tuple[WorkerMetrics, int]) -> None:
    """A DataLoader's decode workers are forked processes: their reads land in the same counters."""
    _, port = worker
    before = value(scrape(port), "disney_train_s3_read_bytes_total")
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=IO.add, args=("read_bytes", 1000))
    child.start()
    child.join(10)
    assert child.exitcode == 0
    IO.add("retries", 2)
    s = scrape(port)
    assert value(s, "disney_train_s3_read_bytes_total") == before + 1000
    assert value(s, "disney_train_s3_retries_total") >= 2


def test_s3_failures_are_counted_as_errors(worker: tuple[WorkerMetrics, int]) -> None:
    m, port = worker
    assert value(scrape(port), "disney_train_errors_total", kind="s3") == 0  # failures before it started: not its
    IO.add("failures", 2)  # at any time, not only at a step: the scrape reads them
    m.progress_write_failed()
    s = scrape(port)
    assert value(s, "disney_train_errors_total", kind="s3") == 2
    assert value(s, "disney_train_errors_total", kind="progress_write") == 1


def test_gpu_series_where_a_gpu_is_read() -> None:
    port = free_ports(1)[0]
    m = WorkerMetrics("run-g", 0, gpu=lambda: GpuReading(allocated=1e9, reserved=2e9, total=80e9, utilization=0.5))
    assert m.serve("127.0.0.1", port)
    try:
        s = scrape(port)
    finally:
        m.close()
    assert value(s, "disney_train_gpu_memory_reserved_bytes") == 2e9
    assert value(s, "disney_train_gpu_memory_total_bytes") == 80e9
    assert value(s, "disney_train_gpu_utilization_ratio") == 0.5


def test_a_gpu_that_cannot_be_read_never_breaks_the_scrape() -> None:
    def broken() -> GpuReading:
        raise RuntimeError("NVML gone")

    port = free_ports(1)[0]
    m = WorkerMetrics("run-g", 0, gpu=broken)
    assert m.serve("127.0.0.1", port)
    try:
        s = scrape(port)
    finally:
        m.close()
    assert "disney_train_step" in s or "disney_train_samples_total" in s
    assert not [n for n in s if "gpu" in n]


def test_a_busy_port_waits_then_trains_without_metrics() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        m = WorkerMetrics("run-b", 0)
        assert not m.serve("127.0.0.1", port, wait_seconds=0.6)
    m2 = WorkerMetrics("run-b", 0)
    assert m2.serve("127.0.0.1", port)  # the port freed: the next process of the rank gets it
    m2.close()


def test_phase_counts() -> None:
    vfts: list[dict[str, Any]] = [
        {"status": {"phase": "Running"}},
        {"status": {"phase": "Running"}},
        {"status": {"phase": "Failed"}},
        {},  # not reconciled yet
    ]
    assert phase_counts(vfts) == {"Pending": 1, "Running": 2, "Suspended": 0, "Succeeded": 0, "Failed": 1}


def test_operator_metrics_count_reconciles_by_result() -> None:
    from collections import Counter

    conflicted = [False]  # what the controller says of this thread's last reconcile
    controller: Any = SimpleNamespace(
        kube=SimpleNamespace(writes=Counter({"apply rayjobs": 3})), conflicts=1, last_conflicted=lambda: conflicted[0]
    )
    m = OperatorMetrics(controller, lambda: [{"status": {"phase": "Running"}}])
    port = free_ports(1)[0]
    m.serve("127.0.0.1", port)
    try:
        with m.reconcile():
            pass
        with m.reconcile():
            conflicted[0] = True
        with pytest.raises(KeyError), m.reconcile():
            raise KeyError("x")
        s = scrape(port)
    finally:
        m.close()
    assert value(s, "disney_operator_reconciles_total", result="ok") == 1
    assert value(s, "disney_operator_reconciles_total", result="conflict") == 1
    assert value(s, "disney_operator_reconciles_total", result="error") == 1
    assert value(s, "disney_operator_reconcile_errors_total", error="KeyError") == 1
    assert value(s, "disney_operator_reconcile_duration_seconds_count") == 3
    assert value(s, "disney_operator_videofinetunes", phase="Running") == 1
    assert value(s, "disney_operator_videofinetunes", phase="Failed") == 0
    assert value(s, "disney_operator_api_writes_total", verb="apply", resource="rayjobs") == 3
    assert value(s, "disney_operator_write_conflicts_total") == 1
    assert value(s, "disney_operator_active") == 1


def test_a_standby_replica_says_so_and_counts_no_videofinetunes() -> None:
    """Two replicas' phase counts would add up twice on a dashboard: only the working one reports them."""
    controller: Any = SimpleNamespace(kube=SimpleNamespace(writes={}), conflicts=0)
    m = OperatorMetrics(controller, lambda: [{"status": {"phase": "Running"}}], active=lambda: False)
    port = free_ports(1)[0]
    m.serve("127.0.0.1", port)
    try:
        s = scrape(port)
    finally:
        m.close()
    assert value(s, "disney_operator_active") == 0
    assert "disney_operator_videofinetunes{" not in s


def test_local_prometheus_refuses_a_port_another_server_holds(tmp_path: Path) -> None:
    from disney_train.metrics.prometheus import LocalPrometheus, PrometheusError

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(PrometheusError, match=f"{port} is in use"):
            LocalPrometheus(tmp_path, [], port=port).start()
