"""Carrying out a reconcile: plan (pure) with the run's last-read progress and evaluation summary, then
write the plan.

Writes go in an order that survives a crash between any two of them: the finalizer before the
RayJob (so a deletion always finds it), the run's ConfigMap before the RayJob whose head mounts it, the
RayJob before the status that names it, events last.
Every step is idempotent, and the RayJob's name is a function of (spec, attempt), so an operator
killed anywhere and restarted converges to the same objects, never duplicates. A status write
carries the resourceVersion it was planned from: a 409 means the object moved on, and the event that
moved it brings a fresh reconcile.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from disney_operator.kube import ConflictError, Kube, RefusedError
from disney_operator.progress import ProgressReader
from disney_operator.queue import PENDING, waiting_in
from disney_operator.rayjob import ANNOTATION_TEMPLATE, LABEL_QUEUE
from disney_operator.reconcile import FINALIZER, Plan, plan, refused
from disney_operator.settings import Settings

log = logging.getLogger(__name__)

Key = tuple[str, str]
RECENT = 30.0  # seconds our own writes may run ahead of the watch


def _template(rayjob: dict[str, Any]) -> str | None:
    return (rayjob["metadata"].get("annotations") or {}).get(ANNOTATION_TEMPLATE)


def key_of(vft: dict[str, Any]) -> Key:
    return vft["metadata"]["namespace"], vft["metadata"]["name"]


class Source(Protocol):
    """Where the newest known objects are (kopf's indexes, in the operator)."""

    def vft(self, key: Key) -> dict[str, Any] | None: ...

    def rayjobs(self, key: Key) -> list[dict[str, Any]]: ...


class Controller:
    def __init__(
        self,
        kube: Kube,
        settings: Settings,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        source: Source | None = None,
    ) -> None:
        self.kube, self.settings, self.clock, self.source = kube, settings, clock, source
        self.progress = ProgressReader(
            settings.progress_seconds, endpoints=settings.progress_endpoints, secrets=kube.secret_data
        )
        self._locks: dict[Key, threading.Lock] = {}
        self._guard = threading.Lock()
        # Read-your-writes, for the watch lags behind our own writes: what our last writes of a
        # VideoFineTune returned (and the resourceVersions they replaced), and the RayJobs we applied
        # (their bodies) or deleted (None) in the last RECENT seconds.
        self._written: dict[Key, tuple[list[str], dict[str, Any]]] = {}
        self._rayjob_writes: dict[Key, dict[str, tuple[float, dict[str, Any] | None]]] = {}
        self._run_objects_applied: dict[Key, float] = {}  # when a running run's ConfigMap/NetworkPolicy last were
        self.conflicts = 0
        self._outcome = threading.local()  # per reconcile thread: did its last reconcile meet a 409?

    def _lock(self, key: Key) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def forget(self, key: Key) -> None:
        with self._guard:
            self._locks.pop(key, None)
        self.progress.forget(key)
        self._written.pop(key, None)
        self._rayjob_writes.pop(key, None)
        self._run_objects_applied.pop(key, None)

    def reconcile(self, vft: dict[str, Any], rayjobs: list[dict[str, Any]]) -> Plan | None:
        """Reconcile one VideoFineTune; None when a write met a newer object (409) or it is gone.

        With a source, the objects are read again once the lock is held: a caller that waited for
        it may hold a body that a reconcile before it has already acted on (planning from it
        could undo what that one did)."""
        key = key_of(vft)
        self._outcome.conflict = False
        with self._lock(key):
            if self.source is not None:
                latest = self.source.vft(key)
                if latest is None:
                    return None
                vft, rayjobs = latest, self.source.rayjobs(key)
            written = self._written.get(key)
            if written is not None and vft["metadata"].get("resourceVersion") in written[0]:
                vft = written[1]
            rayjobs = self._rayjobs_view(key, rayjobs)
            self.progress.refresh(key, vft, rayjobs)
            p = plan(
                vft,
                rayjobs,
                self.progress.latest(key),
                self.clock(),
                self.settings,
                evaluation=self.progress.latest_evaluation(key),
                workloads=self._workloads(key, rayjobs),
            )
            try:
                self._execute(key, vft, p)
            except ConflictError as err:
                with self._guard:
                    self.conflicts += 1
                self._outcome.conflict = True
                log.debug("%s/%s: %s; the newer object is reconciled when it arrives", *key, err)
                return None
            return p

    def _workloads(self, key: Key, rayjobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Kueue's Workloads of the run's queued RayJobs (read at each reconcile of a queued run: Kueue's
        admissions and preemptions move the RayJob's suspend, whose events bring the reconcile)."""
        found: list[dict[str, Any]] = []
        for rj in rayjobs:
            uid = rj["metadata"].get("uid")
            if uid and LABEL_QUEUE in (rj["metadata"].get("labels") or {}):
                found += self.kube.workloads(key[0], uid)
        for workload in found:  # a waiting one's place, from Kueue's visibility API
            queue_name = waiting_in(workload)
            if queue_name:
                places = self.kube.pending_workloads(key[0], queue_name)
                name = workload["metadata"]["name"]
                workload[PENDING] = next((p for p in places if (p.get("metadata") or {}).get("name") == name), None)
        return found

    def last_conflicted(self) -> bool:
        """Whether this thread's last reconcile ended on a 409 (for the metrics)."""
        return bool(getattr(self._outcome, "conflict", False))

    def _rayjobs_view(self, key: Key, rayjobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The RayJobs as the watch shows them, with our own recent writes the watch has not shown yet."""
        mine = self._rayjob_writes.get(key)
        if not mine:
            return rayjobs
        view = {rj["metadata"]["name"]: rj for rj in rayjobs}
        now = time.monotonic()
        for name, (when, body) in list(mine.items()):
            seen = view.get(name)
            if now - when > RECENT:
                del mine[name]
            elif body is None:  # deleted by us: gone, or going (KubeRay's finalizer may hold it a while)
                if seen is None:
                    del mine[name]
                elif not seen["metadata"].get("deletionTimestamp"):
                    view[name] = {**seen, "metadata": {**seen["metadata"], "deletionTimestamp": "(deleted)"}}
            elif seen is not None and _template(seen) == _template(body):
                del mine[name]  # the watch has caught up
            else:
                view[name] = {**body, "status": (seen or body).get("status") or {}}
        return list(view.values())

    def _chaos(self, step: str) -> None:
        if self.settings.chaos == f"exit-after:{step}":
            log.error("chaos: exiting after %s", step)
            os._exit(3)

    def _wrote(self, key: Key, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        replaced = self._written[key][0] if key in self._written else []
        self._written[key] = ([*replaced[-7:], before["metadata"]["resourceVersion"]], after)
        return after

    def _delete_rayjobs(self, key: Key, names: list[str]) -> None:
        """RayJobs of earlier attempts, with their ConfigMaps and NetworkPolicies (of the same names)."""
        recent = self._rayjob_writes.setdefault(key, {})
        for name in names:
            self.kube.delete_rayjob(key[0], name)
            self.kube.delete_config_map(key[0], name)
            if self.settings.network_policies:
                self.kube.delete_network_policy(key[0], name)
            recent[name] = (time.monotonic(), None)
            log.info("%s/%s: deleted RayJob %s and its ConfigMap", *key, name)

    def _apply_run(self, key: Key, p: Plan) -> None:
        """The run's ConfigMap before the RayJob whose head mounts it, its NetworkPolicy before its pods start,
        then the RayJob. RefusedError when the API server refuses one of them."""
        # with the RayJob always; for a running one (re-made if deleted by hand) at most once a resync, not at
        # every reconcile a progress record or RayJob event brings
        now = time.monotonic()
        due = now - self._run_objects_applied.get(key, -math.inf) >= self.settings.resync_seconds
        if p.apply is not None or due:
            if p.config_map is not None:
                self.kube.apply_config_map(p.config_map)
            if p.network_policy is not None:
                self.kube.apply_network_policy(p.network_policy)
            self._run_objects_applied[key] = now
        if p.apply is not None:
            applied = self.kube.apply_rayjob(p.apply)
            self._rayjob_writes.setdefault(key, {})[p.apply["metadata"]["name"]] = (time.monotonic(), applied)
            log.info("%s/%s: applied RayJob %s", *key, p.apply["metadata"]["name"])
            self._chaos("rayjob")

    def _execute(self, key: Key, vft: dict[str, Any], p: Plan) -> None:
        if p.add_finalizer:
            vft = self._wrote(
                key, vft, self.kube.set_finalizers(vft, [*(vft["metadata"].get("finalizers") or []), FINALIZER])
            )
            self._chaos("finalizer")
        self._delete_rayjobs(key, p.delete)
        try:
            self._apply_run(key, p)
        except RefusedError as err:  # the rest of the plan gives way to saying why, in the status
            log.warning("%s/%s: %s", *key, err)
            p = refused(vft, str(err), self.clock())
        if p.scale_cluster is not None:
            self.kube.scale_raycluster(key[0], *p.scale_cluster)
            log.info("%s/%s: RayCluster %s scaled to %d worker pods", *key, *p.scale_cluster)
        if p.status is not None:
            vft = self._wrote(key, vft, self.kube.replace_status(vft, p.status))
            self._chaos("status")
        for ev in p.events:
            self.kube.event(vft, ev)
        if p.remove_finalizer:
            left = [f for f in vft["metadata"].get("finalizers") or [] if f != FINALIZER]
            self.kube.set_finalizers(vft, left)
            log.info("%s/%s: RayJobs gone, released", *key)
        if p.delete_self:
            self.kube.delete_vft(vft)
            log.info("%s/%s: finished longer than ttlSecondsAfterFinished ago: deleted", *key)
