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

A VideoFineTune with an evaluation block also has the condition `Evaluated`: True once the summary that
`disney-train eval` writes at the end of the RayJob has been read (its figures in status.evaluation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError

from disney_operator import api
from disney_operator.rayjob import ANNOTATION_TEMPLATE, SpecError, desired, is_elastic
from disney_operator.settings import Settings
from disney_train.runs import SUMMARY_JSON

FINALIZER = f"{api.GROUP}/rayjobs"
CONDITION_TYPES: tuple[api.Phase, ...] = ("Pending", "Running", "Suspended", "Succeeded", "Failed")
EVALUATED = "Evaluated"  # a condition of VideoFineTunes with an evaluation block
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


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class StatusError(ValueError):
    """A status this operator cannot read: reconciling stops there rather than start the run over."""


def _status_in(vft: dict[str, Any]) -> api.VideoFineTuneStatus:
    try:  # fields this version does not know (a newer operator's) are ignored
        return api.VideoFineTuneStatus.model_validate(vft.get("status") or {})
    except ValidationError as err:
        raise StatusError(f"status not understood ({err.error_count()} problem(s)): {err.errors()[0]['msg']}") from None


def _dump(status: api.VideoFineTuneStatus) -> dict[str, Any]:
    return status.model_dump(mode="json", exclude_none=True, by_alias=True)


# What a run's files hold is the trainer's word, not the API's: values of the wrong type, or not finite
# (a loss gone NaN: JSON cannot carry it to the API server), are left out rather than let one record
# block every status write.


def _number(d: dict[str, Any], key: str) -> float | None:
    v = d.get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def _count(d: dict[str, Any], key: str) -> int | None:
    v = d.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def _text(d: dict[str, Any], key: str, limit: int = 1024) -> str | None:
    v = d.get(key)
    return v[:limit] if isinstance(v, str) and v else None


def _progress(p: dict[str, Any]) -> api.Progress:
    """The status's view of a run's progress record."""

    def when(key: str) -> str | None:
        t = _number(p, key)
        try:
            return rfc3339(datetime.fromtimestamp(t, UTC)) if t is not None else None
        except (OverflowError, OSError, ValueError):
            return None

    return api.Progress(
        step=_count(p, "step"),
        epoch=_count(p, "epoch"),
        loss=_number(p, "loss"),
        worldSize=_count(p, "world_size"),
        lastCheckpoint=_text(p, "last_checkpoint"),
        lastCheckpointTime=when("last_checkpoint_time"),
        updated=when("updated"),
    )


def _figures(summary: dict[str, Any], key: str) -> api.EvaluationFigures | None:
    f = summary.get(key)
    if not isinstance(f, dict):
        return None
    figures = api.EvaluationFigures(
        promptFidelity=_number(f, "prompt_fidelity"),
        temporalConsistency=_number(f, "temporal_consistency"),
        ssim=_number(f, "ssim"),
        styleDistance=_number(f, "style_distance"),
    )
    return figures if figures.model_dump(exclude_none=True) else None


def _utc(text: str | None) -> str | None:
    """An ISO 8601 time as RFC 3339 in UTC (one without a zone is taken as UTC); None when it is not one."""
    try:
        t = parse_time(text)
    except (ValueError, OverflowError):
        return None
    return None if t is None else rfc3339(t if t.tzinfo is not None else t.replace(tzinfo=UTC))


def _evaluation(summary: dict[str, Any]) -> api.EvaluationStatus | None:
    """The status's view of a run's evaluation summary (`disney_train.eval.results.Summary`); None when
    nothing in it is usable."""
    evaluation = api.EvaluationStatus(
        report=_text(summary, "report"),
        markdown=_text(summary, "markdown"),
        json_uri=_text(summary, "json"),
        baseline=_figures(summary, "baseline"),
        fineTuned=_figures(summary, "finetuned"),
        videos=_count(summary, "videos"),
        truncatedPrompts=_count(summary, "truncated_prompts"),
        created=_utc(_text(summary, "created", 64)),
    )
    return evaluation if evaluation.model_dump(exclude_none=True) else None


def _short(text: str, limit: int = 1000) -> str:
    """A failure's message for the status: KubeRay copies up to 20 kB of driver log into its message;
    the end says what went wrong."""
    text = text.strip()
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


@dataclass(frozen=True)
class _Observed:
    phase: api.Phase
    reason: str
    message: str


def _condition(
    old: list[api.Condition],
    ctype: str,
    status: Literal["True", "False"],
    reason: str,
    message: str,
    generation: int,
    now: str,
) -> api.Condition:
    """A condition whose lastTransitionTime moves only with its status."""
    before = next((c for c in old if c.type == ctype), None)
    since = before.lastTransitionTime if before is not None and before.status == status else now
    return api.Condition(
        type=ctype,
        status=status,
        reason=reason,
        message=message,
        lastTransitionTime=since,
        observedGeneration=generation,
    )


def _conditions(old: list[api.Condition], observed: _Observed, generation: int, now: str) -> list[api.Condition]:
    """One condition per type, True for the current phase."""
    out = []
    for ctype in CONDITION_TYPES:
        on = observed.phase == ctype
        reason, message = (observed.reason, observed.message) if on else (f"Not{ctype}", "")
        out.append(_condition(old, ctype, "True" if on else "False", reason, message, generation, now))
    return out


def _of_this_run(summary: api.EvaluationStatus | None, started: str | None) -> api.EvaluationStatus | None:
    """The summary, if this VideoFineTune's run wrote it: one written before the run started is an earlier
    evaluation's (a VideoFineTune of the same name deleted and created again; its new evaluation deletes
    that summary first), and one that says not when is not taken either."""
    created, start = parse_time(summary.created if summary else None), parse_time(started)
    return summary if created is not None and start is not None and created >= start else None


def _take_evaluation(
    out: Plan,
    old: api.VideoFineTuneStatus,
    new: api.VideoFineTuneStatus,
    summary: api.EvaluationStatus | None,
    meta: dict[str, Any],
    evaluated: bool,
    stamp: str,
) -> None:
    """The summary into the status if it is this run's, the Evaluated condition, and its event. A run
    the operator never saw Running (down meanwhile, or a short RayJob between two reconciles) has no
    startTime: the VideoFineTune's creation is then where this run begins."""
    if (fresh := _of_this_run(summary, new.startTime or meta.get("creationTimestamp"))) is not None:
        new.evaluation = fresh
    new.conditions = _with_evaluated(old.conditions, new, evaluated, new.observedGeneration or 0, stamp)
    out.events += _evaluated_now(old, new)


def _with_evaluated(
    old: list[api.Condition], new: api.VideoFineTuneStatus, wanted: bool, generation: int, now: str
) -> list[api.Condition]:
    """The new conditions with `Evaluated` for a VideoFineTune with an evaluation block (and without it
    for one without). True once the summary has been read; lastTransitionTime moves only with the status."""
    conditions = [c for c in new.conditions if c.type != EVALUATED]
    if not wanted:
        return conditions
    status: Literal["True", "False"] = "False"
    if new.evaluation is not None:
        status, reason = "True", "Evaluated"
        message = f"report: {new.evaluation.report}" if new.evaluation.report else "the evaluation summary was read"
    elif new.phase == "Succeeded":
        where = f"{new.runUri}/{SUMMARY_JSON}" if new.runUri else SUMMARY_JSON
        reason, message = "NoSummary", f"training succeeded; no evaluation summary read from {where} (yet)"
    elif new.phase == "Failed":
        reason, message = "RunFailed", "the run failed; no evaluation summary was read"
    else:
        reason, message = "AfterTraining", "the evaluation runs when training ends"
    return [*conditions, _condition(old, EVALUATED, status, reason, message, generation, now)]


def _evaluated_now(old: api.VideoFineTuneStatus, new: api.VideoFineTuneStatus) -> list[Event]:
    if new.evaluation is None or old.evaluation is not None:
        return []
    return [Event("Normal", EVALUATED, f"evaluation summary read; report: {new.evaluation.report or '(none)'}")]


def _rayjob_failed(deployment: str, job: str) -> bool:
    return deployment == "Failed" or (deployment == "Complete" and job in FAILED_STATUSES)


def _failure_text(rj_status: dict[str, Any]) -> str:
    parts = [rj_status.get("reason"), rj_status.get("message")]
    return _short(": ".join(str(p) for p in parts if p) or "the RayJob failed")


def _spec_error(err: Exception) -> str:
    if isinstance(err, ValidationError):
        first = err.errors()[0]
        return f"spec: {first['msg']} at " + ".".join(str(p) for p in first["loc"])
    if isinstance(err, SpecError):
        return str(err)
    return f"spec: {type(err).__name__}: {err}"


def refused(vft: dict[str, Any], text: str, now: datetime) -> Plan:
    """The plan for a spec that cannot run as it is (the operator's checks, or the API server refusing the
    objects built from it): Pending with reason InvalidSpec and the reason in the status, a Warning event
    when the reason is new; nothing created. A corrected spec is reconciled afresh."""
    out, stamp = Plan(), rfc3339(now)
    meta = vft["metadata"]
    old = _status_in(vft)
    new = old.model_copy(deep=True)
    generation = int(meta.get("generation") or 0)
    new.observedGeneration = generation
    text = text.strip()[:1000]
    observed = _Observed("Pending", "InvalidSpec", text)
    new.phase, new.message = "Pending", text
    new.conditions = _conditions(old.conditions, observed, generation, stamp)
    evaluated = bool((vft.get("spec") or {}).get("evaluation"))
    new.conditions = _with_evaluated(old.conditions, new, evaluated, generation, stamp)
    if old.message != text:
        out.events.append(Event("Warning", "InvalidSpec", text))
    out.status = _dump(new) if _dump(new) != _dump(old) else None
    return out


def plan(
    vft: dict[str, Any],
    rayjobs: list[dict[str, Any]],
    progress: dict[str, Any] | None,
    now: datetime,
    settings: Settings,
    evaluation: dict[str, Any] | None = None,
) -> Plan:
    """`progress` and `evaluation` are the run's last-read progress record and evaluation summary (None:
    none read; the status keeps what it shows). The summary counts only for a spec with an evaluation block."""
    meta = vft["metadata"]
    out = Plan()
    stamp = rfc3339(now)
    evaluated = bool((vft.get("spec") or {}).get("evaluation"))
    summary = _evaluation(evaluation) if evaluated and evaluation is not None else None
    mine = sorted(rayjobs, key=lambda rj: rj["metadata"]["name"])

    # Deletion: remove the RayJobs (never anything in S3), then let the object go.
    if meta.get("deletionTimestamp"):
        if FINALIZER not in (meta.get("finalizers") or []):
            return out
        if mine:
            out.delete = [rj["metadata"]["name"] for rj in mine if not rj["metadata"].get("deletionTimestamp")]
            out.requeue_after = 2.0
        else:
            out.remove_finalizer = True
        return out
    out.add_finalizer = FINALIZER not in (meta.get("finalizers") or [])

    old = _status_in(vft)
    new = old.model_copy(deep=True)
    generation = int(meta.get("generation") or 0)
    new.observedGeneration = generation

    # Finished: nothing more to run; the TTL removes the object (its run's data stays in S3).
    if old.phase in api.TERMINAL:
        ttl = (vft.get("spec") or {}).get("ttlSecondsAfterFinished")
        done = parse_time(old.completionTime)
        if ttl is not None and done is not None:
            due = done + timedelta(seconds=int(ttl))
            if now >= due:
                out.delete_self = True
            else:
                out.requeue_after = (due - now).total_seconds()
        if new.workers is not None and new.workers.ready:
            new.workers = api.WorkersStatus(desired=new.workers.desired, ready=0, summary=f"0/{new.workers.desired}")
        if progress is not None:  # the run's last record may arrive after its end
            new.progress = _progress(progress)
        _take_evaluation(out, old, new, summary, meta, evaluated, stamp)  # and its evaluation's summary too
        out.status = _dump(new) if _dump(new) != _dump(old) else None
        return out

    try:
        spec = api.VideoFineTuneSpec.model_validate(vft.get("spec") or {})
        wanted = desired(vft, spec, old.attempt, settings)
    except (ValueError, ArithmeticError) as err:  # pydantic's, SpecError, a number no RayJob can hold
        out_refused = refused(vft, _spec_error(err), now)
        out_refused.add_finalizer = out.add_finalizer
        return out_refused

    name = wanted.rayjob["metadata"]["name"]
    current = next((rj for rj in mine if rj["metadata"]["name"] == name), None)
    others = [rj for rj in mine if rj is not current]
    out.delete = [rj["metadata"]["name"] for rj in others if not rj["metadata"].get("deletionTimestamp")]
    replicas = spec.workers.replicas

    if current is None:
        if others:  # never two Ray clusters training one run: the old one goes first
            out.requeue_after = 2.0
            observed = _Observed(
                "Suspended" if spec.suspend else "Pending",
                "Replacing",
                f"waiting for RayJob {others[0]['metadata']['name']} to go before starting {name}",
            )
        else:
            out.apply, out.config_map, out.network_policy = wanted.rayjob, wanted.config_map, wanted.network_policy
            out.events.append(Event("Normal", "RayJobCreated", f"RayJob {name} (attempt {old.attempt})"))
            observed = _Observed("Suspended" if spec.suspend else "Pending", "RayJobCreated", f"RayJob {name}")
        rj_status: dict[str, Any] = {}
    else:
        rj_status = current.get("status") or {}
        deployment = rj_status.get("jobDeploymentStatus") or ""
        job = rj_status.get("jobStatus") or ""
        template = (current["metadata"].get("annotations") or {}).get(ANNOTATION_TEMPLATE)
        if template != wanted.rayjob["metadata"]["annotations"][ANNOTATION_TEMPLATE] and deployment not in ENDED:
            # an ended RayJob takes no changes
            out.apply = wanted.rayjob
        if deployment not in ENDED:
            # the run's ConfigMap and NetworkPolicy, applied at every reconcile while it runs (no change, no
            # write): one deleted by hand is back within a resync, before a restarted head needs its mount
            out.config_map, out.network_policy = wanted.config_map, wanted.network_policy
        if deployment == "Complete" and job == "SUCCEEDED":
            observed = _Observed("Succeeded", "RayJobSucceeded", f"RayJob {name} succeeded")
        elif deployment == "ValidationFailed":  # KubeRay refuses what this operator built: no retry helps
            observed = _Observed(
                "Failed", "RayJobInvalid", f"KubeRay refused RayJob {name}: {_failure_text(rj_status)}"
            )
        elif _rayjob_failed(deployment, job):
            why = _failure_text(rj_status)
            failed = old.attempt  # attempts so far, all failed
            new.lastFailure = f"attempt {failed}: {why}"
            if failed <= spec.backoffLimit:
                new.attempt = old.attempt + 1
                observed = _Observed(
                    "Pending",
                    "Retrying",
                    f"attempt {failed} failed ({why}); attempt {new.attempt} resumes from the latest checkpoint",
                )
                out.events.append(Event("Warning", "AttemptFailed", observed.message))
            else:
                observed = _Observed(
                    "Failed",
                    "BackoffLimitExceeded",
                    f"{failed} attempt(s) failed, backoffLimit {spec.backoffLimit}; last: {why}",
                )
        elif spec.suspend:
            observed = (
                _Observed("Suspended", "Suspended", "suspended: the Ray cluster is stopped, the checkpoints stay")
                if deployment == "Suspended"
                else _Observed("Suspended", "Suspending", "suspending: KubeRay is stopping the Ray cluster")
            )
        elif deployment == "Running":
            observed = _Observed("Running", "RayJobRunning", f"RayJob {name} is running")
        elif deployment:
            observed = _Observed("Pending", deployment, f"RayJob {name}: {deployment}")
        else:  # KubeRay has not taken it up yet
            observed = _Observed("Pending", "RayJobCreated", f"RayJob {name}")

        # kubectl scale of an elastic run: move the live Ray cluster's worker cap now (KubeRay passes no
        # RayJob change on to its RayCluster). The cap is read from KubeRay's mirror of the cluster's status.
        cluster = rj_status.get("rayClusterName")
        applied = old.workers.desired if old.workers is not None else None
        cap = (rj_status.get("rayClusterStatus") or {}).get("maxWorkerReplicas")
        live = cap if cap is not None else applied
        if is_elastic(spec) and cluster and observed.phase == "Running" and live != replicas:
            out.scale_cluster = (cluster, replicas)
            if applied != replicas:
                out.events.append(Event("Normal", "Scaled", f"worker pods {live} -> {replicas} on {cluster}"))

    if observed.phase == "Running":
        cs = rj_status.get("rayClusterStatus") or {}
        ready = int(cs.get("readyWorkerReplicas") or cs.get("availableWorkerReplicas") or 0)
    else:
        ready = 0
    new.workers = api.WorkersStatus(desired=replicas, ready=ready, summary=f"{ready}/{replicas}")
    new.phase, new.message = observed.phase, observed.message
    new.conditions = _conditions(old.conditions, observed, generation, stamp)
    new.runUri = f"{spec.output.uri.rstrip('/')}/{meta['name']}"
    if current is not None and observed.reason != "Retrying":
        new.rayJob = api.RayJobRef(
            name=name,
            deploymentStatus=rj_status.get("jobDeploymentStatus") or None,
            jobStatus=rj_status.get("jobStatus") or None,
            clusterName=rj_status.get("rayClusterName") or None,
            message=_short(rj_status.get("message") or "") or None,
        )
    elif current is None and out.apply is not None:
        new.rayJob = api.RayJobRef(name=name)
    if observed.phase == "Running" and new.startTime is None:
        new.startTime = stamp
        out.events.append(Event("Normal", "Running", f"training on RayJob {name}"))
    if observed.phase in api.TERMINAL:
        new.completionTime = rj_status.get("endTime") or stamp
        out.events.append(
            Event("Normal" if observed.phase == "Succeeded" else "Warning", observed.phase, observed.message)
        )
    elif observed.phase == "Suspended" and old.phase != "Suspended":
        out.events.append(Event("Normal", "Suspended", observed.message))
    if progress is not None:
        new.progress = _progress(progress)
    _take_evaluation(out, old, new, summary, meta, evaluated, stamp)

    if _dump(new) != _dump(old):
        out.status = _dump(new)
    return out
