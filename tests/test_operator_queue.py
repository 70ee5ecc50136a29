"""A VideoFineTune under a Kueue queue, as the pure reconcile decides it: the RayJob made suspended with the
queue's label and no autoscaler, Queued with Kueue's reason until its Workload is admitted, Running once
admitted, Queued again (Preempted, and why) while Kueue takes it back, and the user's suspend on top. Kueue
is played here by the Workloads and RayJob changes it makes (tests/e2e/test_queue.py runs the real one)."""

from __future__ import annotations

from typing import Any

import pytest

from disney_operator import api, queue
from disney_operator.rayjob import LABEL_QUEUE, rayjob_name, run_config
from disney_operator.settings import Settings, settings_from_env
from tests.support.vfts import group, render, vft
from tests.support.world import World


def kueue_workload(rayjob: dict[str, Any], *conditions: dict[str, Any], preempted: int = 0) -> dict[str, Any]:
    """Kueue's Workload of a RayJob: owned by its uid, with these conditions."""
    meta = rayjob["metadata"]
    status: dict[str, Any] = {"conditions": list(conditions)}
    if any(c["type"] == "Admitted" and c["status"] == "True" for c in conditions):
        status["admission"] = {"clusterQueue": "gpu-cq"}
    if preempted:
        status["schedulingStats"] = {"evictions": [{"reason": "Preempted", "underlyingCause": "", "count": preempted}]}
    return {
        "metadata": {
            "name": f"rayjob-{meta['name']}-abcde",
            "creationTimestamp": "2026-12-01T12:00:00Z",
            "ownerReferences": [{"kind": "RayJob", "name": meta["name"], "uid": meta["uid"]}],
        },
        "status": status,
    }


def cond(ctype: str, status: str, reason: str, message: str = "", at: str = "2026-12-01T12:00:05Z") -> dict[str, Any]:
    return {"type": ctype, "status": status, "reason": reason, "message": message, "lastTransitionTime": at}


PENDING = cond(
    "QuotaReserved",
    "False",
    "Pending",
    "couldn't assign flavors to pod set workers: insufficient unused quota for nvidia.com/gpu in flavor default, "
    "2 more needed",
)
ADMITTED = [
    cond("QuotaReserved", "True", "QuotaReserved"),
    cond("Admitted", "True", "Admitted", at="2026-12-01T12:01:00Z"),
]
PREEMPTED = cond("Evicted", "True", "Preempted", "Preempted to accommodate a workload (UID: x) due to prioritization")


def queued(**spec: Any) -> World:
    return World(vft(queueName="gpus", **({"workers": {"replicas": 2}} | spec)))


def admit(w: World, *extra: dict[str, Any], preempted: int = 0) -> None:
    """Kueue admits the RayJob: its Workload Admitted, its suspend false; KubeRay runs it."""
    rj = w.only()
    w.workloads = [kueue_workload(rj, *ADMITTED, *extra, preempted=preempted)]
    rj["spec"]["suspend"] = False
    w.running(ready=2)


def running_queued(**spec: Any) -> tuple[World, str]:
    """A queued run Kueue has admitted and KubeRay runs, settled; and its RayJob's name."""
    w = queued(**spec)
    w.settle()
    admit(w)
    w.settle()
    return w, w.only()["metadata"]["name"]


def test_a_queued_run_is_created_suspended_with_the_queue_label_and_no_autoscaler() -> None:
    rj = render(vft(queueName="gpus", workers={"replicas": 2, "maxReplicas": 4}))
    assert rj["metadata"]["labels"][LABEL_QUEUE] == "gpus"
    assert rj["spec"]["suspend"] is True and rj["spec"]["shutdownAfterJobFinishes"] is True
    assert rj["spec"]["ttlSecondsAfterFinished"] == 0  # its cluster goes with the quota Kueue frees at its end
    cluster = rj["spec"]["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is False and "autoscalerOptions" not in cluster
    assert group(rj)["replicas"] == 2 and group(rj)["maxReplicas"] == 2  # the size Kueue admits, whole
    plain = render(vft(workers={"replicas": 2, "maxReplicas": 4}))
    assert LABEL_QUEUE not in plain["metadata"]["labels"] and plain["spec"]["suspend"] is False
    assert plain["spec"]["rayClusterSpec"]["enableInTreeAutoscaling"] is True
    assert plain["spec"]["ttlSecondsAfterFinished"] == Settings().cluster_ttl_seconds


def test_a_run_without_a_queue_keeps_the_rayjob_name_it_had_before_queues() -> None:
    """The names HEAD before this change gave (computed there): an operator upgrade replaces no running RayJob."""
    for body, name in (
        (vft(), "disney-2b-1-6baff"),
        (vft(workers={"replicas": 2, "maxReplicas": 4}), "disney-2b-1-37751"),
    ):
        assert rayjob_name("disney-2b", api.VideoFineTuneSpec.model_validate(body["spec"]), 1) == name
    # model.family came later too: at its default (cogvideox) the name is the same, any other is another run
    body = vft()
    body["spec"]["model"]["family"] = "cogvideox"
    assert rayjob_name("disney-2b", api.VideoFineTuneSpec.model_validate(body["spec"]), 1) == "disney-2b-1-6baff"
    body["spec"]["model"]["family"] = "wan"
    wan = rayjob_name("disney-2b", api.VideoFineTuneSpec.model_validate(body["spec"]), 1)
    assert wan != "disney-2b-1-6baff"
    body["spec"]["model"]["expert"] = None  # and model.expert (Wan 2.2) after it: unset, the same name
    assert rayjob_name("disney-2b", api.VideoFineTuneSpec.model_validate(body["spec"]), 1) == wan
    body["spec"]["model"]["expert"] = "low"
    assert rayjob_name("disney-2b", api.VideoFineTuneSpec.model_validate(body["spec"]), 1) != wan


def test_queued_with_kueues_reason_until_admitted_then_running() -> None:
    w = queued()
    p = w.step()
    assert p.apply is not None and p.apply["spec"]["suspend"] is True
    st = w.vft["status"]
    assert st["phase"] == "Queued" and w.cond("Queued")["reason"] == "RayJobCreated", st
    w.step()
    assert w.vft["status"]["phase"] == "Queued" and w.cond("Queued")["reason"] == "WaitingForKueue"
    w.workloads = [kueue_workload(w.only(), PENDING)]
    p = w.step()
    st = w.vft["status"]
    assert st["phase"] == "Queued" and w.cond("Queued")["reason"] == "Pending"
    assert "insufficient unused quota for nvidia.com/gpu" in st["message"]
    assert st["queue"] == {
        "name": "gpus",
        "workload": f"rayjob-{w.only()['metadata']['name']}-abcde",
        "admitted": False,
        "reason": "Pending",
        "message": st["message"],
        "preemptions": 0,
    }
    assert not w.step().writes()  # nothing new from Kueue, nothing written
    # its place, from Kueue's visibility API (the controller adds it to the Workload)
    w.workloads[0][queue.PENDING] = {"positionInLocalQueue": 1, "positionInClusterQueue": 3}
    w.step()
    assert (w.vft["status"]["queue"]["positionInLocalQueue"], w.vft["status"]["queue"]["positionInClusterQueue"]) == (
        1,
        3,
    )
    admit(w)
    p = w.step()
    st = w.vft["status"]
    assert st["phase"] == "Running" and st["workers"]["ready"] == 2
    assert st["queue"]["admitted"] is True and st["queue"]["admittedTime"] == "2026-12-01T12:01:00Z"
    assert st["queue"]["clusterQueue"] == "gpu-cq" and "reason" not in st["queue"]
    assert "positionInLocalQueue" not in st["queue"]  # admitted: no place in a queue
    assert [e.reason for e in p.events] == ["Admitted", "Running"]
    assert p.apply is None and p.scale_cluster is None  # suspend is Kueue's: the RayJob is never applied again
    w.settle()
    w.settings = Settings(image="registry.example/trainer:2")  # an operator upgrade: another template
    p = w.step()
    assert p.apply is None and w.only()["spec"]["suspend"] is False  # an apply would suspend the admitted run


def test_preempted_says_why_and_resumes_the_same_rayjob_when_admitted_again() -> None:
    w, name = running_queued()
    # Kueue preempts: the Workload evicted, the RayJob suspended; KubeRay stops the Ray cluster
    w.workloads = [kueue_workload(w.only(), *ADMITTED, PREEMPTED, preempted=1)]
    w.only()["spec"]["suspend"] = True
    w.kuberay(jobDeploymentStatus="Suspending", jobStatus="RUNNING")
    p = w.step()
    st = w.vft["status"]
    assert st["phase"] == "Queued" and w.cond("Queued")["reason"] == "Preempted"
    assert "Preempted to accommodate a workload" in st["message"] and "latest checkpoint" in st["message"]
    assert st["queue"]["preemptions"] == 1 and "prioritization" in st["queue"]["lastPreemption"]
    assert {e.reason for e in p.events} == {"Preempted", "Queued"}
    assert not p.delete and p.apply is None
    assert not w.step().writes()  # said once
    # readmitted: Kueue resets Evicted, unsuspends the same RayJob
    admit(w, cond("Evicted", "False", "QuotaReserved"), preempted=1)
    p = w.step()
    st = w.vft["status"]
    assert st["phase"] == "Running" and w.only()["metadata"]["name"] == name and st["attempt"] == 1
    assert st["queue"]["preemptions"] == 1 and st["queue"]["lastPreemption"]  # kept: why it was preempted last
    assert [e.reason for e in p.events] == ["Admitted"]


def test_the_users_suspend_takes_a_queued_run_out_of_the_queue_and_resume_queues_it_again() -> None:
    w, name = running_queued()
    body = w.only()
    w.spec(suspend=True)
    p = w.step()
    assert p.delete == [name] and p.apply is None  # the RayJob goes, and its Workload with it: no quota held
    assert w.vft["status"]["phase"] == "Suspended"
    # deleted, but KubeRay's finalizer holds it a while
    w.rayjobs[name] = {**body, "metadata": {**body["metadata"], "deletionTimestamp": "2026-12-01T12:05:00Z"}}
    p = w.step()
    assert w.cond("Suspended")["reason"] == "Suspending" and p.apply is None and not p.delete
    assert f"RayJob {name} leaves queue gpus" in w.vft["status"]["message"]
    del w.rayjobs[name]
    w.settle()
    assert not w.rayjobs and w.vft["status"]["phase"] == "Suspended"
    w.workloads = []
    w.spec(suspend=False)
    p = w.step()
    assert p.apply is not None and p.apply["metadata"]["name"] == name and p.apply["spec"]["suspend"] is True
    w.step()
    assert w.vft["status"]["phase"] == "Queued"  # in the queue again, resuming from the checkpoint when admitted


def test_a_scale_under_a_queue_is_a_new_admission_at_the_new_size() -> None:
    w, old = running_queued(workers={"replicas": 2, "maxReplicas": 4})
    w.vft["spec"]["workers"]["replicas"] = 3
    w.vft["metadata"]["generation"] += 1
    p = w.step()
    assert p.delete == [old] and p.scale_cluster is None  # not scaled in place: Kueue admitted 2 pods
    p = w.step()
    new = w.only()
    assert new["metadata"]["name"] != old and group(new)["replicas"] == 3 and new["spec"]["suspend"] is True


def test_the_operators_default_queue_for_the_namespace_and_the_specs_own() -> None:
    w = World(vft(workers={"replicas": 1}))
    w.settings = Settings(default_queues={"team-a": "team-a-gpus", "*": "shared"})
    w.step()
    assert w.only()["metadata"]["labels"][LABEL_QUEUE] == "team-a-gpus"
    w = World(vft(queueName="mine"))
    w.settings = Settings(default_queues={"*": "shared"})
    w.step()
    assert w.only()["metadata"]["labels"][LABEL_QUEUE] == "mine"
    other = vft()
    other["metadata"]["namespace"] = "team-b"
    w = World(other)
    w.settings = Settings(default_queues={"team-a": "team-a-gpus", "*": "shared"})
    w.step()
    assert w.only()["metadata"]["labels"][LABEL_QUEUE] == "shared"


def test_a_workload_of_another_rayjob_of_the_same_name_is_not_this_ones() -> None:
    w = queued()
    w.settle()
    stale = kueue_workload({"metadata": {**w.only()["metadata"], "uid": "an-earlier-uid"}}, *ADMITTED)
    assert queue.workload_of([stale], w.only()) is None
    w.workloads = [stale]
    w.step()
    assert w.vft["status"]["phase"] == "Queued" and w.cond("Queued")["reason"] == "WaitingForKueue"


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_gpu_workers_train_on_the_operators_device(device: str) -> None:
    settings = settings_from_env({"DISNEY_OPERATOR_GPU_DEVICE": device, "DISNEY_OPERATOR_DEFAULT_QUEUES": '{"*": "q"}'})
    assert settings.gpu_device == device and settings.default_queues == {"*": "q"}
    spec = api.VideoFineTuneSpec.model_validate(vft(workers={"resources": {"gpus": 1}})["spec"])
    assert run_config("r", spec, gpu_device=settings.gpu_device).train.workers.device == device
    cpu_only = api.VideoFineTuneSpec.model_validate(vft(workers={"resources": {"gpus": 0}})["spec"])
    assert run_config("r", cpu_only, gpu_device=settings.gpu_device).train.workers.device == "cpu"
    with pytest.raises(ValueError, match="GPU_DEVICE"):
        settings_from_env({"DISNEY_OPERATOR_GPU_DEVICE": "rocm"})
