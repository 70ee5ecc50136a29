"""kopf wiring: what triggers a reconcile.

kopf is edge-triggered; this operator is level-based. Every trigger runs the same reconcile of a
VideoFineTune with the RayJobs kopf has indexed for it:
- an event of the VideoFineTune itself (including the initial listing when the operator starts);
- an event of one of its RayJobs (KubeRay moving the status on, a RayJob gone);
- a resync of every VideoFineTune every `resync_seconds`, so a missed event still converges;
- a requeue a plan asks for (waiting for a RayJob to go, a TTL coming due).

Only low-level kopf handlers (events, indexes, startup) are used, so kopf itself writes nothing
to the objects: no finalizer of its own, no annotations. The one finalizer is ours (`reconcile.FINALIZER`).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import signal
from typing import Any

import kopf

from disney_operator import api
from disney_operator.controller import Controller, Key
from disney_operator.kube import Kube, load_client
from disney_operator.metrics import OperatorMetrics
from disney_operator.peering import PeeringGate
from disney_operator.rayjob import LABEL_MANAGED_BY, LABEL_VFT, MANAGED_BY, RAY_GROUP, RAY_VERSION, RAYJOBS
from disney_operator.reconcile import Plan
from disney_operator.settings import Settings, settings_from_env

log = logging.getLogger("disney_operator")
OURS = {LABEL_MANAGED_BY: MANAGED_BY}


def _plain(body: Any) -> dict[str, Any]:
    return copy.deepcopy(dict(body))


@kopf.index(api.GROUP, api.VERSION, api.PLURAL)  # type: ignore[arg-type]
def vfts(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
    return {(namespace, name): _plain(body)}


@kopf.index(RAY_GROUP, RAY_VERSION, RAYJOBS, labels=OURS)  # type: ignore[arg-type]
def rayjobs(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
    return {(namespace, labels[LABEL_VFT]): _plain(body)}


class Runtime:
    """The controller, the live indexes and the loop: shared by every handler through kopf's memo."""

    def __init__(
        self,
        controller: Controller,
        settings: Settings,
        loop: asyncio.AbstractEventLoop,
        gate: PeeringGate | None = None,
    ) -> None:
        self.controller, self.settings, self.loop = controller, settings, loop
        self.gate = gate or PeeringGate(None)
        self.vfts: kopf.Index[Key, dict[str, Any]] | None = None
        self.rayjobs_index: kopf.Index[Key, dict[str, Any]] | None = None
        self._due: dict[Key, asyncio.TimerHandle] = {}
        self.metrics = OperatorMetrics(controller, self.all_vfts, self.gate.active)

    def all_vfts(self) -> list[dict[str, Any]]:
        """Every VideoFineTune kopf has seen (for the metrics, from the HTTP server's thread while the
        loop changes the index: the keys copied first, each looked up with get)."""
        index = self.vfts
        if index is None:
            return []
        found = (list(index.get(key) or []) for key in list(index))
        return [store[0] for store in found if store]

    def vft(self, key: Key) -> dict[str, Any] | None:
        """The newest VideoFineTune kopf has seen under this key (controller.Source)."""
        found = list(self.vfts.get(key, [])) if self.vfts is not None else []
        return found[0] if found else None

    def rayjobs(self, key: Key) -> list[dict[str, Any]]:
        """Its RayJobs, as kopf has seen them (controller.Source)."""
        return list(self.rayjobs_index.get(key, [])) if self.rayjobs_index is not None else []

    def reconcile(self, vft: dict[str, Any]) -> None:
        """In a worker thread: one reconcile; its requeue (if any) is scheduled on the loop.
        Nothing while another replica works (peering): kopf pauses only its own watch streams."""
        if not self.gate.active():
            return
        key = (vft["metadata"]["namespace"], vft["metadata"]["name"])
        try:
            with self.metrics.reconcile():
                plan: Plan | None = self.controller.reconcile(vft, self.rayjobs(key))
        except Exception:
            log.exception("%s/%s: reconcile failed; retried at the next event or resync", *key)
            plan = Plan(requeue_after=min(10.0, self.settings.resync_seconds))
        if plan is not None and plan.requeue_after is not None:
            self.loop.call_soon_threadsafe(self.requeue, key, plan.requeue_after)

    def reconcile_key(self, key: Key) -> None:
        vft = self.vft(key)
        if vft is not None:
            self.reconcile(vft)

    def requeue_all(self) -> None:
        """On the loop: every VideoFineTune known, now."""
        for key in list(self.vfts or ()):
            self.requeue(key, 0.0)

    def requeue(self, key: Key, delay: float) -> None:
        old = self._due.pop(key, None)
        if old is not None and old.when() <= self.loop.time() + delay:
            self._due[key] = old  # an earlier one is due anyway
            return
        if old is not None:
            old.cancel()

        def fire() -> None:
            self._due.pop(key, None)
            self.loop.run_in_executor(None, self.reconcile_key, key)

        self._due[key] = self.loop.call_later(max(delay, 0.05), fire)

    async def resync(self) -> None:
        """Every VideoFineTune, every resync_seconds, a few at a time."""
        gate = asyncio.Semaphore(8)

        async def one(key: Key) -> None:
            async with gate:
                await self.loop.run_in_executor(None, self.reconcile_key, key)

        while True:
            await asyncio.sleep(self.settings.resync_seconds)
            if self.vfts is not None:
                await asyncio.gather(*(one(k) for k in list(self.vfts)))


def _restart_clean(why: str) -> None:
    """Stop (kopf says goodbye to its peers) and let Kubernetes restart this replica with an empty index,
    rather than resume later from one that kept what was deleted meanwhile (PeeringGate)."""
    os.kill(os.getpid(), signal.SIGTERM)


@kopf.on.startup()
async def _startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    ours = settings_from_env()
    settings.posting.enabled = False  # our own Events, best-effort (kube.Kube.event)
    settings.execution.max_workers = 16
    settings.watching.server_timeout = 600
    settings.watching.client_timeout = 660
    loop = asyncio.get_running_loop()
    kube = Kube(load_client(pool=24), ours.field_manager)
    gate = PeeringGate(memo.get("peering"), on_lost=_restart_clean)
    runtime = Runtime(Controller(kube, ours), ours, loop, gate)

    def taking_over() -> None:  # every VideoFineTune now, not at the next resync (kopf's re-listing
        loop.call_soon_threadsafe(runtime.requeue_all)  # may have come through while the gate was closed)

    gate.on_working = taking_over
    gate.start(kube.custom)
    runtime.controller.source = runtime

    def progressed(key: Key) -> None:  # a new progress record, read in the background: reconcile again
        loop.call_soon_threadsafe(runtime.requeue, key, 0.0)

    runtime.controller.progress.on_change = progressed
    memo["runtime"] = runtime
    if ours.metrics_port:
        runtime.metrics.serve(ours.metrics_address, ours.metrics_port)
        log.info("metrics at http://%s:%d/metrics", ours.metrics_address, ours.metrics_port)
    memo["resync"] = loop.create_task(runtime.resync())
    log.info(
        "disney-train operator: resync every %ss, progress every %ss, image %s",
        ours.resync_seconds,
        ours.progress_seconds,
        ours.image,
    )


@kopf.on.cleanup()
async def _cleanup(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("resync")
    if task is not None:
        task.cancel()
    if "runtime" in memo:
        memo["runtime"].gate.stop()
        memo["runtime"].controller.progress.close()
        memo["runtime"].metrics.close()


def _runtime(memo: kopf.Memo, vfts: Any, rayjobs: Any) -> Runtime:
    runtime: Runtime = memo["runtime"]
    runtime.vfts, runtime.rayjobs_index = vfts, rayjobs  # kopf's live indexes
    return runtime


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)  # type: ignore[arg-type]
def _vft_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, vfts: Any, rayjobs: Any, **_: Any) -> None:
    runtime = _runtime(memo, vfts, rayjobs)
    if event["type"] == "DELETED":
        runtime.controller.forget((body["metadata"]["namespace"], body["metadata"]["name"]))
        return
    runtime.reconcile(_plain(body))


@kopf.on.event(RAY_GROUP, RAY_VERSION, RAYJOBS, labels=OURS)  # type: ignore[arg-type]
def _rayjob_event(namespace: str, labels: kopf.Labels, memo: kopf.Memo, vfts: Any, rayjobs: Any, **_: Any) -> None:
    runtime = _runtime(memo, vfts, rayjobs)
    runtime.reconcile_key((namespace, labels[LABEL_VFT]))
