"""A VideoFineTune's status from what was observed: the run's records (progress, evaluation summary) as
status fields, and the conditions. Pure functions of their inputs; `reconcile.plan` decides what was
observed and calls these.

What a run's files hold is the trainer's word, not the API's: values of the wrong type, or not finite (a
loss gone NaN: JSON cannot carry it to the API server), are left out rather than let one record block every
status write.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import ValidationError

from disney_operator import api
from disney_train.runs import SUMMARY_JSON

CONDITION_TYPES: tuple[api.Phase, ...] = ("Pending", "Queued", "Running", "Suspended", "Succeeded", "Failed")
EVALUATED = "Evaluated"  # a condition of VideoFineTunes with an evaluation block


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class StatusError(ValueError):
    """A status this operator cannot read: reconciling stops there rather than start the run over."""


def status_in(vft: dict[str, Any]) -> api.VideoFineTuneStatus:
    try:  # fields this version does not know (a newer operator's) are ignored
        return api.VideoFineTuneStatus.model_validate(vft.get("status") or {})
    except ValidationError as err:
        raise StatusError(f"status not understood ({err.error_count()} problem(s)): {err.errors()[0]['msg']}") from None


def dump(status: api.VideoFineTuneStatus) -> dict[str, Any]:
    return status.model_dump(mode="json", exclude_none=True, by_alias=True)


def _number(d: dict[str, Any], key: str) -> float | None:
    v = d.get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def _count(d: dict[str, Any], key: str) -> int | None:
    v = d.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def _text(d: dict[str, Any], key: str, limit: int = 1024) -> str | None:
    v = d.get(key)
    return v[:limit] if isinstance(v, str) and v else None


def progress_status(p: dict[str, Any]) -> api.Progress:
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


def evaluation_status(summary: dict[str, Any]) -> api.EvaluationStatus | None:
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


def short(text: str, limit: int = 1000) -> str:
    """A failure's message for the status: KubeRay copies up to 20 kB of driver log into its message;
    the end says what went wrong."""
    text = text.strip()
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


@dataclass(frozen=True)
class Observed:
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


def conditions(old: list[api.Condition], observed: Observed, generation: int, now: str) -> list[api.Condition]:
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


def take_evaluation(
    old: api.VideoFineTuneStatus,
    new: api.VideoFineTuneStatus,
    summary: api.EvaluationStatus | None,
    meta: dict[str, Any],
    evaluated: bool,
    stamp: str,
) -> None:
    """The summary into the status if it is this run's, and the Evaluated condition. A run the operator
    never saw Running (down meanwhile, or a short RayJob between two reconciles) has no startTime: the
    VideoFineTune's creation is then where this run begins."""
    if (fresh := _of_this_run(summary, new.startTime or meta.get("creationTimestamp"))) is not None:
        new.evaluation = fresh
    new.conditions = with_evaluated(old.conditions, new, evaluated, new.observedGeneration or 0, stamp)


def with_evaluated(
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
