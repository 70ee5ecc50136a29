"""The operator's Prometheus metrics: reconciles (count, duration, errors), VideoFineTunes by
phase, its writes to the API server and the conflicts among them.

Counts kept elsewhere (`Kube.writes`, `Controller.conflicts`, kopf's index) are read when
Prometheus scrapes, so nothing is counted twice."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from disney_operator import api
from disney_operator.controller import Controller

disable_created_metrics()  # type: ignore[no-untyped-call]  # no `*_created` series: Prometheus 2 stores them as plain gauges
PREFIX = "disney_operator"
PHASES: tuple[str, ...] = ("Pending", "Running", "Suspended", "Succeeded", "Failed")
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("disney-train")
    except PackageNotFoundError:
        return "unknown"


def phase_counts(vfts: Iterable[dict[str, Any]]) -> dict[str, int]:
    """VideoFineTunes per phase; one not reconciled yet (no status) counts as Pending."""
    counts = dict.fromkeys(PHASES, 0)
    for vft in vfts:
        phase = (vft.get("status") or {}).get("phase") or "Pending"
        counts[phase] = counts.get(phase, 0) + 1
    return counts


class _Live(Collector):
    def __init__(
        self, controller: Controller, vfts: Callable[[], Iterable[dict[str, Any]]], active: Callable[[], bool]
    ) -> None:
        self.controller, self.vfts, self.active = controller, vfts, active

    def collect(self) -> Iterator[Any]:
        working = self.active()
        yield GaugeMetricFamily(
            f"{PREFIX}_active", "1 while this replica works; 0 while it stands by for a peer.", value=int(working)
        )
        by_phase = GaugeMetricFamily(
            f"{PREFIX}_videofinetunes", "VideoFineTunes by phase (from the working replica only).", labels=["phase"]
        )
        for phase, n in (phase_counts(self.vfts()) if working else {}).items():
            by_phase.add_metric([phase], n)
        yield by_phase
        writes = CounterMetricFamily(
            f"{PREFIX}_api_writes", "Writes to the API server, by verb and resource.", labels=["verb", "resource"]
        )
        for what, n in sorted(self.controller.kube.writes.items()):
            verb, _, resource = what.partition(" ")
            writes.add_metric([verb, resource], n)
        yield writes
        yield CounterMetricFamily(
            f"{PREFIX}_write_conflicts",
            "Status writes refused with 409 (the object had moved on; its next event reconciles it again).",
            value=self.controller.conflicts,
        )


class OperatorMetrics:
    def __init__(
        self,
        controller: Controller,
        vfts: Callable[[], Iterable[dict[str, Any]]],
        active: Callable[[], bool] = lambda: True,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.reconciles = Counter(f"{PREFIX}_reconciles", "Reconciles done, by result.", ["result"], registry=r)
        self.errors = Counter(
            f"{PREFIX}_reconcile_errors", "Reconciles that raised, by exception type.", ["error"], registry=r
        )
        self.duration = Histogram(
            f"{PREFIX}_reconcile_duration_seconds", "Time of one reconcile.", buckets=DURATION_BUCKETS, registry=r
        )
        for result in ("ok", "conflict", "error"):
            self.reconciles.labels(result)
        info = Gauge(f"{PREFIX}_info", "1, with the operator's version.", ["version", "group"], registry=r)
        info.labels(_version(), api.GROUP).set(1)
        self.controller = controller
        r.register(_Live(controller, vfts, active))
        self._server: Any = None

    @contextmanager
    def reconcile(self) -> Iterator[None]:
        """Times one reconcile of the controller, in this thread, and counts it by how it ended."""
        t0 = time.perf_counter()
        result = "ok"
        try:
            yield
            if self.controller.last_conflicted():
                result = "conflict"
        except Exception as err:
            result = "error"
            self.errors.labels(type(err).__name__).inc()
            raise
        finally:
            self.duration.observe(time.perf_counter() - t0)
            self.reconciles.labels(result).inc()

    def serve(self, address: str, port: int) -> None:
        self._server, _ = start_http_server(port, addr=address, registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
