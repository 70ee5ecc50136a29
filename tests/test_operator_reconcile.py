"""reconcile.plan, the pure decision: every transition, and "nothing changed -> nothing written"."""

from __future__ import annotations

import copy
import time
from datetime import timedelta
from typing import Any

import pytest

from disney_operator import api
from disney_operator.rayjob import EVAL_ENTRYPOINT
from disney_operator.reconcile import observe, plan
from disney_operator.status import rfc3339
from disney_train.eval.results import Headline, Summary
from tests.support.vfts import evaluation, vft
from tests.support.world import SETTINGS, World


def test_a_new_videofinetune_gets_a_finalizer_a_rayjob_and_a_status_then_nothing_more() -> None:
    w = World(vft())
    p = w.step()
    assert p.add_finalizer and p.apply is not None and p.status is not None
    assert [e.reason for e in p.events] == ["RayJobCreated"]
    st = w.vft["status"]
    assert st["phase"] == "Pending" and st["attempt"] == 1 and st["observedGeneration"] == 1
    assert st["rayJob"]["name"] == p.apply["metadata"]["name"]
    assert st["workers"] == {"desired": 1, "ready": 0, "summary": "0/1"}
    assert st["runUri"] == "s3://runs/disney/disney-2b"
    w.settle()
    again = w.step()  # steady state: nothing written, nothing asked
    assert not again.writes() and not again.events and again.requeue_after is None


def test_running_progress_and_success() -> None:
    w = World(vft(workers={"replicas": 2}))
    w.settle()
    w.running(ready=2)
    p = w.step()
    st = w.vft["status"]
    assert st["phase"] == "Running" and st["workers"]["summary"] == "2/2"
    assert st["startTime"] == rfc3339(w.now)
    assert w.cond("Running")["status"] == "True" and w.cond("Pending")["status"] == "False"
    assert "Running" in [e.reason for e in p.events]
    started = st["startTime"]

    progress = {
        "step": 120,
        "epoch": 3,
        "loss": 0.125,
        "world_size": 2,
        "last_checkpoint": "s3://runs/x/ckpt",
        "last_checkpoint_time": 1_764_590_400.0,
        "updated": 1_764_590_460.0,
    }
    w.step(progress)
    pr = w.vft["status"]["progress"]
    assert pr == {
        "step": 120,
        "epoch": 3,
        "loss": 0.125,
        "worldSize": 2,
        "lastCheckpoint": "s3://runs/x/ckpt",
        "lastCheckpointTime": "2025-12-01T12:00:00Z",
        "updated": "2025-12-01T12:01:00Z",
    }
    assert not w.step(progress).writes()  # the same progress again: nothing to write
    assert w.vft["status"]["startTime"] == started

    w.kuberay(jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", endTime="2026-12-01T13:00:00Z")
    p = w.step()
    st = w.vft["status"]
    assert st["phase"] == "Succeeded" and st["completionTime"] == "2026-12-01T13:00:00Z"
    assert st["workers"]["ready"] == 0 and w.cond("Succeeded")["reason"] == "RayJobSucceeded"
    assert [e.reason for e in p.events] == ["Succeeded"]
    w.settle()
    assert len(w.rayjobs) == 1  # kept for inspection; no new attempt after success


def test_ttl_after_finished_deletes_the_object_when_due() -> None:
    w = World(vft(ttlSecondsAfterFinished=30))
    w.settle()
    end = w.now
    w.kuberay(jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", endTime=rfc3339(end))
    w.step()
    p = w.step(advance=5)
    assert not p.delete_self and p.requeue_after is not None and 20 < p.requeue_after < 30
    w.now = end + timedelta(seconds=30)
    assert w.step(advance=0).delete_self


def test_a_failed_attempt_is_retried_as_a_new_rayjob_until_the_backoff_limit() -> None:
    w = World(vft(backoffLimit=1))
    w.settle()
    first = w.only()["metadata"]["name"]
    w.kuberay(jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed", message="head pod lost")
    p = w.step()
    st = w.vft["status"]
    assert st["phase"] == "Pending" and st["attempt"] == 2 and w.cond("Pending")["reason"] == "Retrying"
    assert "attempt 1 failed (AppFailed: head pod lost)" in st["message"]
    assert st["lastFailure"] == "attempt 1: AppFailed: head pod lost"
    assert [(e.type, e.reason) for e in p.events] == [("Warning", "AttemptFailed")]
    p = w.step()  # the failed RayJob goes first; no second Ray cluster meanwhile
    assert p.delete == [first] and p.apply is None and p.requeue_after
    p = w.step()
    assert p.apply is not None and p.apply["metadata"]["name"].startswith("disney-2b-2-")
    assert p.apply["metadata"]["labels"]["disneytrain.dev/attempt"] == "2"
    w.settle()

    w.kuberay(jobDeploymentStatus="Complete", jobStatus="FAILED", message="loss is nan")
    p = w.step()
    st = w.vft["status"]
    assert st["phase"] == "Failed" and w.cond("Failed")["reason"] == "BackoffLimitExceeded"
    assert "2 attempt(s) failed, backoffLimit 1; last: loss is nan" in st["message"]
    assert st["completionTime"]
    w.settle()
    assert len(w.rayjobs) == 1 and w.vft["status"]["attempt"] == 2


def test_suspend_and_resume_keep_the_attempt() -> None:
    w = World(vft())
    w.settle()
    w.running()
    w.step()
    name = w.only()["metadata"]["name"]
    w.spec(suspend=True)
    p = w.step()
    assert p.apply is not None and p.apply["spec"]["suspend"] is True and p.apply["metadata"]["name"] == name
    assert w.vft["status"]["phase"] == "Suspended" and w.vft["status"]["workers"]["ready"] == 0
    w.kuberay(jobDeploymentStatus="Suspended")
    w.settle()
    assert w.cond("Suspended")["reason"] == "Suspended"
    w.spec(suspend=False)
    p = w.step()
    assert p.apply is not None and p.apply["spec"]["suspend"] is False and p.apply["metadata"]["name"] == name
    assert w.vft["status"]["phase"] == "Pending"  # KubeRay brings a new Ray cluster up, training resumes
    w.running()
    w.step()
    assert w.vft["status"]["phase"] == "Running" and w.vft["status"]["attempt"] == 1


def test_scaling_an_elastic_run_moves_the_live_cluster() -> None:
    w = World(vft(workers={"replicas": 2, "maxReplicas": 8}))
    w.settle()
    w.running(ready=2, cap=2)
    w.settle()
    name = w.only()["metadata"]["name"]
    w.vft["spec"]["workers"]["replicas"] = 5  # kubectl scale
    p = w.step()
    assert p.scale_cluster == ("c1", 5) and [e.reason for e in p.events] == ["Scaled"]
    assert p.apply is not None and p.apply["metadata"]["name"] == name  # same RayJob, its template updated
    assert w.vft["status"]["workers"] == {"desired": 5, "ready": 2, "summary": "2/5"}
    # until KubeRay mirrors the cluster, the (idempotent) patch is repeated, the event is not
    p = w.step()
    assert p.scale_cluster == ("c1", 5) and not p.events
    w.running(ready=5, cap=5)
    p = w.step()
    assert p.scale_cluster is None and w.vft["status"]["workers"]["summary"] == "5/5"


def test_scaling_a_fixed_size_run_restarts_it_at_the_new_size() -> None:
    w = World(vft(workers={"replicas": 2}))
    w.settle()
    w.running(ready=2)
    w.settle()
    old = w.only()["metadata"]["name"]
    w.vft["spec"]["workers"]["replicas"] = 4
    p = w.step()
    assert p.delete == [old] and p.apply is None and p.scale_cluster is None
    assert w.vft["status"]["phase"] == "Pending" and w.cond("Pending")["reason"] == "Replacing"
    p = w.step()
    assert p.apply is not None and p.apply["metadata"]["name"] != old
    assert p.apply["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] == 4
    assert w.vft["status"]["attempt"] == 1  # a restart for a new spec is not a failure


def test_deletion_removes_the_rayjobs_then_releases_the_object() -> None:
    w = World(vft())
    w.settle()
    name = w.only()["metadata"]["name"]
    w.vft["metadata"]["deletionTimestamp"] = "2026-12-01T12:30:00Z"
    p = w.step()
    assert p.delete == [name] and not p.remove_finalizer and p.status is None
    p = w.step()
    assert p.remove_finalizer and not p.delete
    assert w.vft["metadata"]["finalizers"] == []


def test_a_spec_no_rayjob_can_be_built_from_waits_with_the_reason() -> None:
    w = World(vft(workers={"resources": {"gpus": 1, "cpu": "500m"}}))
    p = w.step()
    assert p.apply is None and not w.rayjobs
    st = w.vft["status"]
    assert st["phase"] == "Pending" and w.cond("Pending")["reason"] == "InvalidSpec"
    assert "workers.resources.cpu 500m" in st["message"]
    assert [e.reason for e in p.events] == ["InvalidSpec"]
    assert not w.step().events  # said once
    w.spec(workers={"resources": {"gpus": 1, "cpu": "4"}})
    assert w.step().apply is not None


def test_condition_times_move_only_with_their_status() -> None:
    w = World(vft())
    w.settle()
    before = copy.deepcopy(w.vft["status"]["conditions"])
    w.spec(backoffLimit=5)  # a new generation, nothing else
    w.step(advance=60)
    after = w.vft["status"]["conditions"]
    assert [c["lastTransitionTime"] for c in after] == [c["lastTransitionTime"] for c in before]
    assert {c["observedGeneration"] for c in after} == {2}
    w.running()
    w.step(advance=60)
    assert w.cond("Running")["lastTransitionTime"] != before[1]["lastTransitionTime"]


def test_the_controller_sees_its_own_rayjob_writes_before_the_watch_does() -> None:
    """kopf's index can lag our writes by seconds under load; planning from it alone would apply a RayJob
    twice or start a new one while the old is still going. The controller overlays what it wrote."""
    from disney_operator.controller import Controller
    from disney_operator.kube import Kube

    controller = Controller(Kube(None, "test"), SETTINGS)
    key = ("team-a", "disney-2b")
    w = World(vft())
    p = w.step()
    assert p.apply is not None
    applied = {**p.apply, "metadata": {**p.apply["metadata"], "resourceVersion": "7"}}
    controller._rayjob_writes[key] = {p.apply["metadata"]["name"]: (time.monotonic(), applied)}
    view = controller._rayjobs_view(key, [])  # the watch has not shown it yet
    assert [rj["metadata"]["name"] for rj in view] == [p.apply["metadata"]["name"]]
    assert not plan(w.vft, view, None, w.now, SETTINGS).apply  # so it is not applied again

    w.settle()
    old = w.only()
    w.spec(image="registry/trainer:2")  # a new spec: the old RayJob is to go before a new one starts
    first = plan(w.vft, [old], None, w.now, SETTINGS)
    assert first.delete == [old["metadata"]["name"]] and first.apply is None
    controller._rayjob_writes[key] = {old["metadata"]["name"]: (time.monotonic(), None)}  # we deleted it
    view = controller._rayjobs_view(key, [old])  # the watch still shows it, not even as deleting
    assert view[0]["metadata"]["deletionTimestamp"]
    again = plan(w.vft, view, None, w.now, SETTINGS)
    assert again.delete == [] and again.apply is None  # not deleted twice; still waited for
    assert controller._rayjobs_view(key, []) == [] and controller._rayjob_writes[key] == {}  # gone: forgotten
    assert plan(w.vft, [], None, w.now, SETTINGS).apply is not None  # and now the new one starts


def test_kuberay_refusing_the_rayjob_fails_the_run_without_retries() -> None:
    w = World(vft(backoffLimit=3))
    w.settle()
    w.kuberay(jobDeploymentStatus="ValidationFailed", message="headGroupSpec should have at least one container")
    w.step()
    st = w.vft["status"]
    assert st["phase"] == "Failed" and st["attempt"] == 1 and w.cond("Failed")["reason"] == "RayJobInvalid"
    assert "KubeRay refused RayJob" in st["message"] and "at least one container" in st["message"]
    w.settle()
    assert len(w.rayjobs) == 1


def test_a_progress_record_with_a_nan_loss_or_odd_values_never_blocks_the_status() -> None:
    import json

    w = World(vft())
    w.settle()
    w.running()
    odd = {
        "step": 2.5,
        "epoch": "3",
        "loss": float("nan"),
        "world_size": True,
        "last_checkpoint": 7,
        "last_checkpoint_time": float("inf"),
        "updated": 1_764_590_460,
    }
    w.step(odd)
    progress = w.vft["status"]["progress"]
    assert progress == {"updated": "2025-12-01T12:01:00Z"}
    json.loads(json.dumps(w.vft["status"], allow_nan=False))  # what the API server is sent is JSON
    w.step({"step": 7, "loss": float("inf")})
    assert w.vft["status"]["progress"] == {"step": 7}


def test_a_failure_message_is_kept_short_in_the_status() -> None:
    w = World(vft(backoffLimit=1))
    w.settle()
    log_tail = "x" * 30_000 + " CUDA out of memory"
    w.kuberay(jobDeploymentStatus="Failed", jobStatus="FAILED", message=log_tail)
    w.step()
    st = w.vft["status"]
    assert len(st["lastFailure"]) < 1100 and st["lastFailure"].endswith("CUDA out of memory")
    assert all(len(c["message"]) < 1200 for c in st["conditions"])


def test_a_status_with_fields_of_a_newer_operator_is_read_not_reset() -> None:
    w = World(vft(backoffLimit=2))
    w.settle()
    w.kuberay(jobDeploymentStatus="Failed", jobStatus="FAILED")
    w.step()
    w.vft["status"]["somethingNew"] = {"a": 1}
    w.settle()
    assert w.vft["status"]["attempt"] == 2 and len(w.rayjobs) == 1
    assert w.only()["metadata"]["labels"]["disneytrain.dev/attempt"] == "2"


RUN = "s3://runs/disney/disney-2b"


def summary(**changes: Any) -> dict[str, Any]:
    """eval/summary.json as `disney-train eval` writes it (read back as JSON)."""
    import json

    written = Summary(
        report=f"{RUN}/eval/report.html",
        markdown=f"{RUN}/eval/report.md",
        json_uri=f"{RUN}/eval/eval.json",
        baseline=Headline(prompt_fidelity=0.25, temporal_consistency=0.875, ssim=0.5, style_distance=40.5),
        finetuned=Headline(prompt_fidelity=0.3125, temporal_consistency=0.9375, ssim=0.625, style_distance=12.25),
        videos=8,
        truncated_prompts=1,
        created="2026-12-01T14:30:00.123456+02:00",
    ).model_dump_json(by_alias=True)
    found: dict[str, Any] = json.loads(written) | changes
    return found


def test_an_evaluation_summary_becomes_the_status_and_the_evaluated_condition() -> None:
    w = World(vft(evaluation=evaluation()))
    w.settle()
    assert w.types()[-1] == "Evaluated"
    assert (w.cond("Evaluated")["status"], w.cond("Evaluated")["reason"]) == ("False", "AfterTraining")
    w.running()
    w.step()
    w.kuberay(jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", endTime="2026-12-01T13:00:00Z")
    w.settle()  # succeeded, the summary not read yet (the read after the RayJob ends is in the background)
    assert w.vft["status"]["phase"] == "Succeeded" and "evaluation" not in w.vft["status"]
    assert (w.cond("Evaluated")["status"], w.cond("Evaluated")["reason"]) == ("False", "NoSummary")
    assert f"{RUN}/eval/summary.json" in w.cond("Evaluated")["message"]

    p = w.step(evaluation=summary())
    assert w.vft["status"]["evaluation"] == {
        "report": f"{RUN}/eval/report.html",
        "markdown": f"{RUN}/eval/report.md",
        "json": f"{RUN}/eval/eval.json",
        "baseline": {"promptFidelity": 0.25, "temporalConsistency": 0.875, "ssim": 0.5, "styleDistance": 40.5},
        "fineTuned": {"promptFidelity": 0.3125, "temporalConsistency": 0.9375, "ssim": 0.625, "styleDistance": 12.25},
        "videos": 8,
        "truncatedPrompts": 1,
        "created": "2026-12-01T12:30:00Z",  # in UTC, to the second
    }
    evaluated = w.cond("Evaluated")
    assert (evaluated["status"], evaluated["reason"]) == ("True", "Evaluated")
    assert evaluated["message"] == f"report: {RUN}/eval/report.html" and evaluated["lastTransitionTime"] == rfc3339(
        w.now
    )
    assert [e.reason for e in p.events] == ["Evaluated"]
    assert w.cond("Succeeded")["status"] == "True"  # the phase conditions are as they were
    # converged: the same summary again, or none read (an operator restarted), writes nothing
    w.settle(evaluation=summary())
    assert not w.step(evaluation=summary()).writes() and not w.step().writes()
    assert w.vft["status"]["evaluation"]["fineTuned"]["promptFidelity"] == 0.3125
    # a newer summary (the evaluation run again) replaces it
    w.step(evaluation=summary(videos=16))
    assert (
        w.vft["status"]["evaluation"]["videos"] == 16
        and w.cond("Evaluated")["lastTransitionTime"] == (evaluated["lastTransitionTime"])
    )


def test_odd_values_in_a_summary_are_left_out_never_blocking_the_status() -> None:
    import json

    w = World(vft(evaluation=evaluation()))
    w.settle()
    w.running()
    odd = summary(
        report=7,
        markdown="",
        baseline=[0.25],
        finetuned={"prompt_fidelity": float("nan"), "temporal_consistency": "0.9", "ssim": True, "style_distance": 12},
        videos=-1,
        truncated_prompts=1.0,
        unknown={"a": 1},
    )
    w.step(evaluation=odd)
    assert w.vft["status"]["evaluation"] == {
        "json": f"{RUN}/eval/eval.json",
        "fineTuned": {"styleDistance": 12.0},
        "created": "2026-12-01T12:30:00Z",
    }
    json.loads(json.dumps(w.vft["status"], allow_nan=False))  # what the API server is sent is JSON
    assert w.cond("Evaluated")["message"] == "the evaluation summary was read"
    # nothing usable at all: as if none had been read
    fresh = World(vft(evaluation=evaluation()))
    fresh.settle()
    fresh.step(evaluation={"report": None, "baseline": {"ssim": float("inf")}, "created": 1_764_590_400})
    assert "evaluation" not in fresh.vft["status"] and fresh.cond("Evaluated")["status"] == "False"
    # a time without a zone is taken as UTC; a summary that does not say when is not taken
    w.step(evaluation=summary(created="2026-12-01T14:30:00"))
    assert w.vft["status"]["evaluation"]["created"] == "2026-12-01T14:30:00Z"
    undated = World(vft(evaluation=evaluation()))
    undated.settle()
    undated.running()
    undated.step(evaluation=summary(created="yesterday"))
    assert "evaluation" not in undated.vft["status"]


def test_a_summary_from_before_the_run_started_is_an_earlier_evaluations() -> None:
    """The same name deleted and created again: the old summary on S3 is not this run's figures."""
    w = World(vft(evaluation=evaluation()))
    w.settle()
    w.running()
    w.step()
    started = w.vft["status"]["startTime"]
    w.step(evaluation=summary(created="2020-01-01T00:00:00Z"))
    assert "evaluation" not in w.vft["status"] and w.cond("Evaluated")["status"] == "False"
    w.step(evaluation=summary(created=started))  # written at (or after) the start: this run's
    assert w.vft["status"]["evaluation"]["created"] == started


def test_a_run_never_seen_running_takes_its_summary_from_its_creation_on() -> None:
    """The operator was down while the RayJob ran (or it ran between two reconciles): no startTime.
    The VideoFineTune's creation bounds its run: a summary written after it is this run's."""
    body = vft(evaluation=evaluation())
    body["metadata"]["creationTimestamp"] = "2026-12-01T10:00:00Z"
    w = World(body)
    w.settle()
    w.kuberay(jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", endTime="2026-12-01T13:00:00Z")
    w.settle()
    assert w.vft["status"]["phase"] == "Succeeded" and w.vft["status"].get("startTime") is None
    w.step(evaluation=summary(created="2026-12-01T09:59:59Z"))  # before it was created: a namesake's
    assert "evaluation" not in w.vft["status"] and w.cond("Evaluated")["reason"] == "NoSummary"
    w.step(evaluation=summary())  # 12:30 UTC
    assert w.vft["status"]["evaluation"]["created"] == "2026-12-01T12:30:00Z"
    assert w.cond("Evaluated")["status"] == "True"


def test_without_an_evaluation_block_there_is_no_evaluated_condition_and_no_summary_is_used() -> None:
    w = World(vft())
    w.settle()
    w.kuberay(jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    w.settle(evaluation=summary())
    assert "Evaluated" not in w.types() and "evaluation" not in w.vft["status"]
    assert w.vft["status"]["phase"] == "Succeeded"


def test_a_failed_run_with_an_evaluation_block_says_it_was_not_evaluated() -> None:
    w = World(vft(evaluation=evaluation(), backoffLimit=0))
    w.settle()
    w.kuberay(jobDeploymentStatus="Complete", jobStatus="FAILED", message="CLIP not found")
    w.settle()
    assert w.vft["status"]["phase"] == "Failed"
    assert (w.cond("Evaluated")["status"], w.cond("Evaluated")["reason"]) == ("False", "RunFailed")


def test_an_evaluation_the_pods_cannot_read_waits_with_the_reason() -> None:
    w = World(vft(evaluation=evaluation(clip_uri="/models/clip")))
    p = w.step()
    assert p.apply is None and not w.rayjobs
    assert w.cond("Pending")["reason"] == "InvalidSpec"
    assert w.vft["status"]["message"].startswith("evaluation.clip_uri '/models/clip' is not an s3:// URI")
    assert w.cond("Evaluated")["status"] == "False"
    w.spec(evaluation=evaluation(clip_uri="s3://models/clip"))
    p = w.step()
    assert p.apply is not None and p.apply["spec"]["entrypoint"] == EVAL_ENTRYPOINT


@pytest.mark.parametrize(
    ("deployment", "job", "suspend", "attempt", "want"),
    [
        ("", "", False, 1, ("Pending", "RayJobCreated", False)),
        ("Initializing", "", False, 1, ("Pending", "Initializing", False)),
        ("Running", "RUNNING", False, 1, ("Running", "RayJobRunning", False)),
        ("Suspending", "", True, 1, ("Suspended", "Suspending", False)),
        ("Suspended", "", True, 1, ("Suspended", "Suspended", False)),
        ("Complete", "SUCCEEDED", False, 1, ("Succeeded", "RayJobSucceeded", False)),
        ("Complete", "FAILED", False, 1, ("Pending", "Retrying", True)),
        ("Failed", "", False, 3, ("Pending", "Retrying", True)),  # backoffLimit 3: attempts 1..3 may fail
        ("Failed", "", False, 4, ("Failed", "BackoffLimitExceeded", False)),
        ("Complete", "STOPPED", True, 4, ("Failed", "BackoffLimitExceeded", False)),  # a failure outranks suspend
        ("ValidationFailed", "", False, 1, ("Failed", "RayJobInvalid", False)),
    ],
)
def test_observe_is_the_phase_table(
    deployment: str, job: str, suspend: bool, attempt: int, want: tuple[str, str, bool]
) -> None:
    """The module docstring's table, KubeRay's RayJob status -> the VideoFineTune's phase."""
    spec = api.VideoFineTuneSpec.model_validate({**vft()["spec"], "suspend": suspend, "backoffLimit": 3})
    seen = observe("rj", {"jobDeploymentStatus": deployment, "jobStatus": job, "message": "boom"}, attempt, spec)
    assert (seen.observed.phase, seen.observed.reason, seen.retry) == want
    assert (seen.failure is not None) == (want[1] in ("Retrying", "BackoffLimitExceeded"))
