"""Reconcile, as a pure function: (VideoFineTune, its RayJobs, the run's progress and evaluation summary,
now) -> Plan.

The plan says what to write; `controller.py` writes it. Nothing here talks to the API server or S3,
so every transition is unit-tested on its own and the same inputs always give the same writes.

Phases follow the current attempt's RayJob (KubeRay's `jobDeploymentStatus` / `jobStatus`; KubeRay
has no conditions array on RayJobs, so ours carry them):

    no RayJob yet, New, Initializing, ...  -> Pending
    Running                               -> Running
    Suspending, Suspended (spec.suspend)  -> Suspended
    Complete + SUCCEEDED                  -> Succeeded
    Failed, or Complete + FAILED/STOPPED  -> a new attempt (Pending) while backoffLimit allows, else Failed

Under a Kueue queue (spec.queueName, or the operator's default for the namespace) the RayJob is created
suspended and Kueue unsuspends it: until its Workload is admitted, and while Kueue takes it back (preemption),
the phase is Queued with Kueue's reason (`queue.py`). The user's suspend then deletes the RayJob, so that a
suspended run holds no place and no quota in the queue, and Kueue's admission never resumes it.

A VideoFineTune with an evaluation block also has the condition `Evaluated`: True once the summary that
`disney-train eval` writes at the end of the RayJob has been read (its figures in status.evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError

from disney_operator import api, queue
from disney_operator.rayjob import ANNOTATION_TEMPLATE, Desired, SpecError, desired, is_elastic, with_queue
from disney_operator.settings import Settings
from disney_operator.status import (
    EVALUATED,
    Observed,
    conditions,
    dump,
    evaluation_status,
    parse_time,
    progress_status,
    rfc3339,
    short,
    status_in,
    take_evaluation,
    with_evaluated,
)

FINALIZER = f"{api.GROUP}/rayjobs"
FAILED_STATUSES = ("FAILED", "STOPPED")
ENDED = ("Complete", "Failed", "ValidationFailed")  # KubeRay's deployment states with nothing more to come


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass
class Plan:
    add_finalizer: bool = False
    remove_finalizer: bool = False
    apply: dict[str, Any] | None = None  # a RayJob, server-side applied
    config_map: dict[str, Any] | None = None  # its run configuration, applied before it
    network_policy: dict[str, Any] | None = None  # who may reach its pods (settings.network_policies)
    delete: list[str] = field(default_factory=list)  # RayJobs, and their ConfigMaps of the same names
    scale_cluster: tuple[str, int] | None = None  # (RayCluster, worker replicas)
    status: dict[str, Any] | None = None  # the whole new status, when it changed
    events: list[Event] = field(default_factory=list)
    delete_self: bool = False
    requeue_after: float | None = None

    def writes(self) -> bool:
        return bool(
            self.add_finalizer
            or self.remove_finalizer
            or self.apply
            or self.delete
            or self.scale_cluster
            or self.status is not None
            or self.delete_self
        )


@dataclass(frozen=True)
class Attempt:
    """What the current attempt's RayJob says (`observe`): the phase, and for a failed attempt that another
    one follows, the failure."""

    observed: Observed
    failure: str | None = None  # the attempt failed: why (status.lastFailure)
    retry: bool = False  # and the next attempt starts (status.attempt + 1)


def _rayjob_failed(deployment: str, job: str) -> bool:
    return deployment == "Failed" or (deployment == "Complete" and job in FAILED_STATUSES)


def _failure_text(rj_status: dict[str, Any]) -> str:
    parts = [rj_status.get("reason"), rj_status.get("message")]
    return short(": ".join(str(p) for p in parts if p) or "the RayJob failed")


def _spec_error(err: Exception) -> str:
    if isinstance(err, ValidationError):
        first = err.errors()[0]
        return f"spec: {first['msg']} at " + ".".join(str(p) for p in first["loc"])
    if isinstance(err, SpecError):
        return str(err)
    return f"spec: {type(err).__name__}: {err}"


def observe(name: str, rj_status: dict[str, Any], attempt: int, spec: api.VideoFineTuneSpec) -> Attempt:
    """The phase the current attempt's RayJob `name` is in, from KubeRay's status of it (the table in this
    module's docstring); `attempt` is the attempts so far."""
    deployment = rj_status.get("jobDeploymentStatus") or ""
    job = rj_status.get("jobStatus") or ""
    if deployment == "Complete" and job == "SUCCEEDED":
        return Attempt(Observed("Succeeded", "RayJobSucceeded", f"RayJob {name} succeeded"))
    if deployment == "ValidationFailed":  # KubeRay refuses what this operator built: no retry helps
        return Attempt(
            Observed("Failed", "RayJobInvalid", f"KubeRay refused RayJob {name}: {_failure_text(rj_status)}")
        )
    if _rayjob_failed(deployment, job):
        why = _failure_text(rj_status)
        if attempt <= spec.backoffLimit:
            message = f"attempt {attempt} failed ({why}); attempt {attempt + 1} resumes from the latest checkpoint"
            return Attempt(Observed("Pending", "Retrying", message), f"attempt {attempt}: {why}", retry=True)
        message = f"{attempt} attempt(s) failed, backoffLimit {spec.backoffLimit}; last: {why}"
        return Attempt(Observed("Failed", "BackoffLimitExceeded", message), f"attempt {attempt}: {why}")
    if spec.suspend:
        if deployment == "Suspended":
            return Attempt(
                Observed("Suspended", "Suspended", "suspended: the Ray cluster is stopped, the checkpoints stay")
            )
        return Attempt(Observed("Suspended", "Suspending", "suspending: KubeRay is stopping the Ray cluster"))
    if deployment == "Running":
        return Attempt(Observed("Running", "RayJobRunning", f"RayJob {name} is running"))
    if deployment:
        return Attempt(Observed("Pending", deployment, f"RayJob {name}: {deployment}"))
    return Attempt(Observed("Pending", "RayJobCreated", f"RayJob {name}"))  # KubeRay has not taken it up yet


def refused(vft: dict[str, Any], text: str, now: datetime) -> Plan:
    """The plan for a spec that cannot run as it is (the operator's checks, or the API server refusing the
    objects built from it): Pending with reason InvalidSpec and the reason in the status, a Warning event
    when the reason is new; nothing created. A corrected spec is reconciled afresh."""
    out, stamp = Plan(), rfc3339(now)
    meta = vft["metadata"]
    old = status_in(vft)
    new = old.model_copy(deep=True)
    generation = int(meta.get("generation") or 0)
    new.observedGeneration = generation
    text = text.strip()[:1000]
    new.phase, new.message = "Pending", text
    new.conditions = conditions(old.conditions, Observed("Pending", "InvalidSpec", text), generation, stamp)
    evaluated = bool((vft.get("spec") or {}).get("evaluation"))
    new.conditions = with_evaluated(old.conditions, new, evaluated, generation, stamp)
    if old.message != text:
        out.events.append(Event("Warning", "InvalidSpec", text))
    out.status = dump(new) if dump(new) != dump(old) else None
    return out


@dataclass
class _Round:
    """One reconcile's inputs and what it has decided so far."""

    vft: dict[str, Any]
    old: api.VideoFineTuneStatus
    new: api.VideoFineTuneStatus
    now: datetime
    summary: api.EvaluationStatus | None  # the run's evaluation summary, for a spec with an evaluation block
    progress: dict[str, Any] | None
    out: Plan
    workloads: list[dict[str, Any]] = field(default_factory=list)  # Kueue's, of the run's RayJobs

    @property
    def meta(self) -> dict[str, Any]:
        return self.vft["metadata"]  # type: ignore[no-any-return]

    @property
    def stamp(self) -> str:
        return rfc3339(self.now)

    @property
    def evaluated(self) -> bool:
        return bool((self.vft.get("spec") or {}).get("evaluation"))

    def finish(self) -> Plan:
        """The run's records and evaluation into the new status; the status written when it changed."""
        if self.progress is not None:  # the run's last record may arrive after its end
            self.new.progress = progress_status(self.progress)
        take_evaluation(self.old, self.new, self.summary, self.meta, self.evaluated, self.stamp)
        self.out.events += _evaluated_now(self.old, self.new)
        self.out.status = dump(self.new) if dump(self.new) != dump(self.old) else None
        return self.out


def plan(
    vft: dict[str, Any],
    rayjobs: list[dict[str, Any]],
    progress: dict[str, Any] | None,
    now: datetime,
    settings: Settings,
    evaluation: dict[str, Any] | None = None,
    workloads: list[dict[str, Any]] | None = None,
) -> Plan:
    """`progress` and `evaluation` are the run's last-read progress record and evaluation summary (None:
    none read; the status keeps what it shows). The summary counts only for a spec with an evaluation block.
    `workloads`: Kueue's Workloads of the run's RayJobs (a queued run's admission)."""
    meta = vft["metadata"]
    mine = sorted(rayjobs, key=lambda rj: rj["metadata"]["name"])
    if meta.get("deletionTimestamp"):
        return _deleting(meta, mine)
    old = status_in(vft)
    new = old.model_copy(deep=True)
    new.observedGeneration = int(meta.get("generation") or 0)
    evaluated = bool((vft.get("spec") or {}).get("evaluation"))
    summary = evaluation_status(evaluation) if evaluated and evaluation is not None else None
    r = _Round(
        vft,
        old,
        new,
        now,
        summary,
        progress,
        Plan(add_finalizer=FINALIZER not in (meta.get("finalizers") or [])),
        workloads or [],
    )
    if old.phase in api.TERMINAL:
        return _finished(r)
    try:
        spec = with_queue(api.VideoFineTuneSpec.model_validate(vft.get("spec") or {}), meta["namespace"], settings)
        wanted = desired(vft, spec, old.attempt, settings)
    except (ValueError, ArithmeticError) as err:  # pydantic's, SpecError, a number no RayJob can hold
        out_refused = refused(vft, _spec_error(err), now)
        out_refused.add_finalizer = r.out.add_finalizer
        return out_refused
    return _running(r, spec, wanted, mine)


def _deleting(meta: dict[str, Any], mine: list[dict[str, Any]]) -> Plan:
    """Deletion: remove the RayJobs (never anything in S3), then let the object go."""
    out = Plan()
    if FINALIZER not in (meta.get("finalizers") or []):
        return out
    if mine:
        out.delete = [rj["metadata"]["name"] for rj in mine if not rj["metadata"].get("deletionTimestamp")]
        out.requeue_after = 2.0
    else:
        out.remove_finalizer = True
    return out


def _finished(r: _Round) -> Plan:
    """Finished: nothing more to run; the TTL removes the object (its run's data stays in S3)."""
    ttl = (r.vft.get("spec") or {}).get("ttlSecondsAfterFinished")
    done = parse_time(r.old.completionTime)
    if ttl is not None and done is not None:
        due = done + timedelta(seconds=int(ttl))
        if r.now >= due:
            r.out.delete_self = True
        else:
            r.out.requeue_after = (due - r.now).total_seconds()
    if r.new.workers is not None and r.new.workers.ready:
        r.new.workers = api.WorkersStatus(desired=r.new.workers.desired, ready=0, summary=f"0/{r.new.workers.desired}")
    return r.finish()  # the run's last record, and its evaluation's summary, may arrive after its end


def _running(r: _Round, spec: api.VideoFineTuneSpec, wanted: Desired, mine: list[dict[str, Any]]) -> Plan:
    """A run that is not finished: its current attempt's RayJob made, kept or replaced, and the status."""
    name = wanted.rayjob["metadata"]["name"]
    current = next((rj for rj in mine if rj["metadata"]["name"] == name), None)
    if spec.queueName and spec.suspend:  # out of the queue: the RayJob goes, and its Workload with it
        current = None
    others = [rj for rj in mine if rj is not current]
    r.out.delete = [rj["metadata"]["name"] for rj in others if not rj["metadata"].get("deletionTimestamp")]
    workload = queue.workload_of(r.workloads, current)
    rj_status: dict[str, Any] = (current or {}).get("status") or {}
    observed = _start(r, spec, wanted, others) if current is None else _current(r, spec, wanted, current, workload)
    _queue_status(r, spec.queueName, workload)
    _observed_status(r, spec, observed, name, current, rj_status)
    return r.finish()


def _current(
    r: _Round, spec: api.VideoFineTuneSpec, wanted: Desired, current: dict[str, Any], workload: dict[str, Any] | None
) -> Observed:
    """The current attempt's RayJob: kept to the spec, its phase (Queued while Kueue has not admitted it), a
    failed attempt retried, an elastic run scaled."""
    name, rj_status = current["metadata"]["name"], current.get("status") or {}
    _keep(r.out, current, wanted, queued=bool(spec.queueName))
    attempt = observe(name, rj_status, r.old.attempt, spec)
    observed = attempt.observed
    if attempt.failure is not None:
        r.new.lastFailure = attempt.failure
    if attempt.retry:
        r.new.attempt = r.old.attempt + 1
        r.out.events.append(Event("Warning", "AttemptFailed", observed.message))
    waits = observed.phase not in api.TERMINAL and not attempt.retry and not queue.admitted(workload)
    if spec.queueName and waits:
        observed = queue.waiting(spec.queueName, name, workload)
    _scale(r, spec, rj_status, observed)
    return observed


def _queue_status(r: _Round, queue_name: str | None, workload: dict[str, Any] | None) -> None:
    """status.queue of a queued run, and the events of its admission and preemption."""
    if queue_name is None:
        r.new.queue = None
        return
    old = r.old.queue
    r.new.queue = new = queue.queue_status(queue_name, workload, old)
    if new.admitted and not (old is not None and old.admitted and old.workload == new.workload):
        r.out.events.append(Event("Normal", "Admitted", f"Kueue admitted the run (ClusterQueue {new.clusterQueue})"))
    if new.preemptions > (old.preemptions if old is not None and old.workload == new.workload else 0):
        r.out.events.append(Event("Warning", "Preempted", new.lastPreemption or "Kueue preempted the run"))


def _start(r: _Round, spec: api.VideoFineTuneSpec, wanted: Desired, others: list[dict[str, Any]]) -> Observed:
    """No RayJob of the current attempt yet: make it, once the previous attempt's is gone."""
    name = wanted.rayjob["metadata"]["name"]
    phase: api.Phase = "Suspended" if spec.suspend else "Pending"
    if spec.queueName and spec.suspend:  # out of the queue: nothing is made
        if others:
            r.out.requeue_after = 2.0
            gone = others[0]["metadata"]["name"]
            return Observed("Suspended", "Suspending", f"suspending: RayJob {gone} leaves queue {spec.queueName}")
        return Observed("Suspended", "Suspended", f"suspended: out of queue {spec.queueName}, the checkpoints stay")
    if others:  # never two Ray clusters training one run: the old one goes first
        r.out.requeue_after = 2.0
        return Observed(
            phase, "Replacing", f"waiting for RayJob {others[0]['metadata']['name']} to go before starting {name}"
        )
    r.out.apply, r.out.config_map, r.out.network_policy = wanted.rayjob, wanted.config_map, wanted.network_policy
    r.out.events.append(Event("Normal", "RayJobCreated", f"RayJob {name} (attempt {r.old.attempt})"))
    if spec.queueName:
        return Observed("Queued", "RayJobCreated", f"RayJob {name}, suspended until queue {spec.queueName} admits it")
    return Observed(phase, "RayJobCreated", f"RayJob {name}")


def _keep(out: Plan, current: dict[str, Any], wanted: Desired, queued: bool = False) -> None:
    """The current RayJob follows the spec (an ended one takes no changes; a queued one neither: its suspend
    is Kueue's, and a change that matters makes a new RayJob). Its ConfigMap and NetworkPolicy are applied at
    every reconcile while it runs (no change, no write): one deleted by hand is back within a resync, before
    a restarted head needs its mount."""
    deployment = (current.get("status") or {}).get("jobDeploymentStatus") or ""
    if deployment in ENDED:
        return
    template = (current["metadata"].get("annotations") or {}).get(ANNOTATION_TEMPLATE)
    if not queued and template != wanted.rayjob["metadata"]["annotations"][ANNOTATION_TEMPLATE]:
        out.apply = wanted.rayjob
    out.config_map, out.network_policy = wanted.config_map, wanted.network_policy


def _scale(r: _Round, spec: api.VideoFineTuneSpec, rj_status: dict[str, Any], observed: Observed) -> None:
    """kubectl scale of an elastic run: move the live Ray cluster's worker cap now (KubeRay passes no RayJob
    change on to its RayCluster). The cap is read from KubeRay's mirror of the cluster's status."""
    cluster = rj_status.get("rayClusterName")
    replicas = spec.workers.replicas
    applied = r.old.workers.desired if r.old.workers is not None else None
    cap = (rj_status.get("rayClusterStatus") or {}).get("maxWorkerReplicas")
    live = cap if cap is not None else applied
    if is_elastic(spec) and cluster and observed.phase == "Running" and live != replicas:
        r.out.scale_cluster = (cluster, replicas)
        if applied != replicas:
            r.out.events.append(Event("Normal", "Scaled", f"worker pods {live} -> {replicas} on {cluster}"))


def _observed_status(
    r: _Round,
    spec: api.VideoFineTuneSpec,
    observed: Observed,
    name: str,
    current: dict[str, Any] | None,
    rj_status: dict[str, Any],
) -> None:
    """The status fields of what was observed: phase, conditions, workers, the RayJob, times; and the events of
    a phase entered."""
    new, old = r.new, r.old
    cs = rj_status.get("rayClusterStatus") or {}
    ready = (
        int(cs.get("readyWorkerReplicas") or cs.get("availableWorkerReplicas") or 0)
        if observed.phase == "Running"
        else 0
    )
    replicas = spec.workers.replicas
    new.workers = api.WorkersStatus(desired=replicas, ready=ready, summary=f"{ready}/{replicas}")
    new.phase, new.message = observed.phase, observed.message
    new.conditions = conditions(old.conditions, observed, new.observedGeneration or 0, r.stamp)
    new.runUri = f"{spec.output.uri.rstrip('/')}/{r.meta['name']}"
    if current is not None and observed.reason != "Retrying":
        new.rayJob = api.RayJobRef(
            name=name,
            deploymentStatus=rj_status.get("jobDeploymentStatus") or None,
            jobStatus=rj_status.get("jobStatus") or None,
            clusterName=rj_status.get("rayClusterName") or None,
            message=short(rj_status.get("message") or "") or None,
        )
    elif current is None and r.out.apply is not None:
        new.rayJob = api.RayJobRef(name=name)
    if observed.phase == "Running" and new.startTime is None:
        new.startTime = r.stamp
        r.out.events.append(Event("Normal", "Running", f"training on RayJob {name}"))
    if observed.phase in api.TERMINAL:
        new.completionTime = rj_status.get("endTime") or r.stamp
        kind: Literal["Normal", "Warning"] = "Normal" if observed.phase == "Succeeded" else "Warning"
        r.out.events.append(Event(kind, observed.phase, observed.message))
    elif observed.phase in ("Suspended", "Queued") and old.phase != observed.phase:
        r.out.events.append(Event("Normal", observed.phase, observed.message))


def _evaluated_now(old: api.VideoFineTuneStatus, new: api.VideoFineTuneStatus) -> list[Event]:
    if new.evaluation is None or old.evaluation is not None:
        return []
    return [Event("Normal", EVALUATED, f"evaluation summary read; report: {new.evaluation.report or '(none)'}")]
