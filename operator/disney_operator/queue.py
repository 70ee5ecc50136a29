"""Kueue's view of a queued run, as pure functions of the Workload Kueue made for its RayJob.

Kueue (`kueue.x-k8s.io`, v1beta2) makes one Workload per RayJob with a queue-name label, owned by the RayJob.
Its conditions say where the run is: `QuotaReserved` / `Admitted` True once its ClusterQueue's quota holds all
of its pods, `Evicted` True (reason `Preempted`, ...) while Kueue takes them back, both reset when it is
admitted again; `status.schedulingStats.evictions` counts evictions by reason. A waiting Workload's place is
in Kueue's visibility API (`pendingworkloads` of its LocalQueue): the controller adds its entry there to the
Workload as `pending` (PENDING). The operator reads Workloads, never writes them: suspending and resuming a
queued RayJob is Kueue's.
"""

from __future__ import annotations

from typing import Any

from disney_operator import api
from disney_operator.status import Observed, short

KUEUE_GROUP = "kueue.x-k8s.io"
KUEUE_VERSION = "v1beta2"
WORKLOADS = "workloads"
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"  # on each Workload: the uid of the job it is for
VISIBILITY_GROUP = "visibility.kueue.x-k8s.io"
PENDING = "pending"  # the key the controller adds to a waiting Workload: its entry in pendingworkloads
PREEMPTED = "Preempted"


def _condition(workload: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    conds = (workload.get("status") or {}).get("conditions") or []
    return next((c for c in conds if c.get("type") == ctype), None)


def _true(workload: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    c = _condition(workload, ctype)
    return c if c is not None and c.get("status") == "True" else None


def workload_of(workloads: list[dict[str, Any]], rayjob: dict[str, Any] | None) -> dict[str, Any] | None:
    """The Workload of this RayJob (owned by its uid: a same-named RayJob of before is another), the newest."""
    if rayjob is None:
        return None
    uid = rayjob["metadata"].get("uid")
    if not uid:  # our own write, not yet seen by the watch
        return None
    owned = [
        w
        for w in workloads
        if any(o.get("kind") == "RayJob" and o.get("uid") == uid for o in w["metadata"].get("ownerReferences") or [])
    ]
    return max(owned, key=lambda w: w["metadata"].get("creationTimestamp") or "", default=None)


def waiting_in(workload: dict[str, Any]) -> str | None:
    """The LocalQueue a Workload waits in (None: admitted, or not waiting)."""
    return None if admitted(workload) else (workload.get("spec") or {}).get("queueName")


def admitted(workload: dict[str, Any] | None) -> bool:
    """Kueue admitted it and is not taking it back."""
    return workload is not None and _true(workload, "Admitted") is not None and _true(workload, "Evicted") is None


def preemptions(workload: dict[str, Any]) -> int:
    stats = (workload.get("status") or {}).get("schedulingStats") or {}
    return sum(int(e.get("count") or 0) for e in stats.get("evictions") or [] if e.get("reason") == PREEMPTED)


def waiting(queue: str, rayjob: str, workload: dict[str, Any] | None) -> Observed:
    """The phase of a queued RayJob Kueue has not admitted (or is taking back): Queued, with Kueue's reason."""
    if workload is None:
        return Observed(
            "Queued",
            "WaitingForKueue",
            f"RayJob {rayjob} waits for Kueue to take it into queue {queue} (no Workload seen yet: is Kueue "
            "running and managing ray.io/rayjob, and the chart's kueue.enabled set?)",
        )
    evicted = _true(workload, "Evicted")
    if evicted is not None:
        why = short(evicted.get("message") or "")
        return Observed(
            "Queued",
            evicted.get("reason") or "Evicted",
            f"Kueue took the run's quota back ({why}): its Ray cluster stops; it resumes from the latest "
            f"checkpoint when queue {queue} admits it again",
        )
    reserved = _condition(workload, "QuotaReserved")
    reason = (reserved or {}).get("reason") or "Pending"
    why = short((reserved or {}).get("message") or "waiting for quota")
    return Observed("Queued", reason, f"waiting in queue {queue}: {why}")


def queue_status(queue: str, workload: dict[str, Any] | None, old: api.QueueStatus | None) -> api.QueueStatus:
    """status.queue: the Workload's admission, Kueue's reason while it waits, how often Kueue preempted it, and
    why last (kept while the run's next Workload is made)."""
    new = api.QueueStatus(name=queue)
    if old is not None and old.name == queue:
        new.lastPreemption = old.lastPreemption
    if workload is None:
        return new
    new.workload = workload["metadata"]["name"]
    new.clusterQueue = ((workload.get("status") or {}).get("admission") or {}).get("clusterQueue")
    new.admitted = admitted(workload)
    if new.admitted:
        new.admittedTime = (_true(workload, "Admitted") or {}).get("lastTransitionTime")
    else:
        seen = waiting(queue, "", workload)
        new.reason, new.message = seen.reason, seen.message
    pending = workload.get(PENDING) or {}
    if not new.admitted and isinstance(pending.get("positionInLocalQueue"), int):
        new.positionInLocalQueue = pending["positionInLocalQueue"]
        new.positionInClusterQueue = pending.get("positionInClusterQueue")
    new.preemptions = preemptions(workload)
    evicted = _true(workload, "Evicted")
    if evicted is not None and evicted.get("reason") == PREEMPTED:
        new.lastPreemption = short(evicted.get("message") or PREEMPTED)
    return new
