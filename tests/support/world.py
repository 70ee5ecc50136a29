"""A VideoFineTune and its RayJobs (and Kueue's Workloads) as the API server would hold them after each plan of
`reconcile.plan` is written: the pure decision driven round by round, for the reconcile and queue tests."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from disney_operator.reconcile import FINALIZER, Plan, plan
from disney_operator.settings import Settings

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
SETTINGS = Settings()


class World:
    """A VideoFineTune and its RayJobs as the API server would hold them after each plan is written."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.vft = body
        self.rayjobs: dict[str, dict[str, Any]] = {}
        self.workloads: list[dict[str, Any]] = []  # Kueue's, when a test plays it
        self.settings = SETTINGS
        self.now = T0
        self.rv = 1

    def step(
        self, progress: dict[str, Any] | None = None, advance: float = 1.0, evaluation: dict[str, Any] | None = None
    ) -> Plan:
        self.now += timedelta(seconds=advance)
        p = plan(
            copy.deepcopy(self.vft),
            copy.deepcopy(list(self.rayjobs.values())),
            progress,
            self.now,
            self.settings,
            evaluation=copy.deepcopy(evaluation),
            workloads=copy.deepcopy(self.workloads),
        )
        meta = self.vft["metadata"]
        if p.add_finalizer:
            meta["finalizers"] = [*meta.get("finalizers", []), FINALIZER]
        for name in p.delete:
            self.rayjobs.pop(name)
        if p.apply is not None:
            name = p.apply["metadata"]["name"]
            old = self.rayjobs.get(name, {})
            made = {**copy.deepcopy(p.apply), "status": old.get("status", {})}
            made["metadata"]["uid"] = old.get("metadata", {}).get("uid") or f"uid-{name}-{self.rv}"
            self.rv += 1
            self.rayjobs[name] = made
        if p.status is not None:
            self.vft["status"] = copy.deepcopy(p.status)
        if p.remove_finalizer:
            meta["finalizers"] = [f for f in meta["finalizers"] if f != FINALIZER]
        return p

    def settle(self, evaluation: dict[str, Any] | None = None) -> None:
        """Plan until a plan writes nothing (at most a few rounds)."""
        for _ in range(5):
            if not self.step(evaluation=evaluation).writes():
                return
        raise AssertionError("no steady state after 5 rounds")

    def only(self) -> dict[str, Any]:
        assert len(self.rayjobs) == 1, list(self.rayjobs)
        return next(iter(self.rayjobs.values()))

    def kuberay(self, **status: Any) -> None:
        self.only()["status"] = status

    def running(self, ready: int = 1, cap: int | None = None) -> None:
        self.kuberay(
            jobDeploymentStatus="Running",
            jobStatus="RUNNING",
            rayClusterName="c1",
            rayClusterStatus={"readyWorkerReplicas": ready, "maxWorkerReplicas": cap if cap is not None else ready},
        )

    def spec(self, **changes: Any) -> None:
        self.vft["spec"].update(changes)
        self.vft["metadata"]["generation"] += 1

    def cond(self, ctype: str) -> dict[str, Any]:
        found: dict[str, Any] = next(c for c in self.vft["status"]["conditions"] if c["type"] == ctype)
        return found

    def types(self) -> list[str]:
        return [c["type"] for c in self.vft["status"]["conditions"]]
