"""The operator against a real API server (envtest-lite with the core/v1 stub kopf needs), as a
subprocess (`disney-train-operator run`), with the test playing KubeRay and the user, and SeaweedFS
holding the run's files."""

from __future__ import annotations

import json
import math
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.rest import ApiException
from prometheus_client.parser import text_string_to_metric_families

from disney_operator.controller import Controller
from disney_operator.kube import Kube
from disney_operator.rayjob import LABEL_VFT, owner_of, run_config_of
from disney_operator.reconcile import FINALIZER
from disney_operator.settings import Settings
from disney_operator.status import rfc3339
from disney_train.config import S3Options
from disney_train.runs import RunFiles
from tests.support.apiserver import ApiServer, api_client, eventually, stub_events
from tests.support.kuberay import RESYNC_SECONDS, Cluster, OperatorProcess, start_operator
from tests.support.seaweed import BUCKET, RW, SeaweedS3


@pytest.fixture
def spec(s3_server: SeaweedS3, prefix: str) -> dict[str, Any]:
    return {
        "model": {"uri": "s3://models/CogVideoX-2b"},
        "dataset": {"uri": "s3://data/disney"},
        "output": {"uri": f"s3://{BUCKET}/{prefix}"},
        "training": {"s3": {"endpoint_url": s3_server.endpoint}},
        "s3Credentials": {"secretName": "s3-keys"},
    }


def run_files(spec: dict[str, Any], name: str, vft: dict[str, Any] | None = None) -> RunFiles:
    """The run's files on S3, written the way training writes them: claimed by the VideoFineTune first."""
    files = RunFiles.at(
        f"{spec['output']['uri']}/{name}", S3Options(endpoint_url=spec["training"]["s3"]["endpoint_url"])
    )
    files.claim(owner_of(vft["metadata"]) if vft is not None else None)
    return files


@pytest.fixture
def s3_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", RW[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", RW[1])


def running(cluster: Cluster, ns: str, name: str, spec: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Create a VideoFineTune and play KubeRay until it runs: its RayJob and the Ray cluster's name."""
    cluster.create(ns, name, spec)
    rj = cluster.the_rayjob(ns, name)
    ray_cluster = cluster.run_cluster(ns, rj)
    cluster.wait_status(ns, name, phase="Running")
    return rj, ray_cluster


def conflicts(apiserver: ApiServer) -> int:
    """409s the server answered to writes of VideoFineTunes (its own metrics)."""
    return sum(n for what, n in apiserver.writes(("disneytrain.dev",)).items() if what.endswith("(409)"))


def test_lifecycle_from_apply_to_success_and_ttl(
    operator_proc: OperatorProcess,
    apiserver: ApiServer,
    cluster: Cluster,
    ns: str,
    spec: dict[str, Any],
    s3_server: SeaweedS3,
    s3_keys: None,
) -> None:
    cluster.create(ns, "life", {**spec, "workers": {"replicas": 2}})
    rj = cluster.the_rayjob(ns, "life")
    vft = cluster.get(ns, "life")
    assert FINALIZER in vft["metadata"]["finalizers"]
    owner = rj["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "VideoFineTune",
        "life",
        vft["metadata"]["uid"],
        True,
    )
    st = cluster.wait_status(ns, "life", phase="Pending")
    assert st["rayJob"]["name"] == rj["metadata"]["name"] and st["workers"]["summary"] == "0/2"
    # the run configuration beside it, owned by the VideoFineTune; no credential values anywhere in what
    # the operator wrote
    config_map = cluster.config_map(ns, rj)
    assert config_map["metadata"]["ownerReferences"] == rj["metadata"]["ownerReferences"]
    assert run_config_of(config_map).name == "life"
    for written in (json.dumps(rj), json.dumps(config_map)):
        assert RW[1] not in written and RW[0] not in written

    cluster.run_cluster(ns, rj)  # KubeRay: cluster up, job submitted
    st = cluster.wait_status(ns, "life", phase="Running")
    assert st["workers"]["summary"] == "2/2" and st["startTime"]

    files = run_files(spec, "life", cluster.get(ns, "life"))
    files.write_progress(
        {
            "phase": "running",
            "step": 40,
            "epoch": 2,
            "loss": 0.0625,
            "world_size": 2,
            "last_checkpoint": files.store.url("checkpoints/step-000000040"),
            "last_checkpoint_time": time.time(),
            "updated": time.time(),
        }
    )
    progress = eventually(
        lambda: (
            cluster.status(ns, "life").get("progress", {}).get("step") == 40 and cluster.status(ns, "life")["progress"]
        ),
        what="progress in the status",
    )
    assert progress["loss"] == 0.0625 and progress["lastCheckpoint"].endswith("checkpoints/step-000000040")
    row = apiserver.kubectl("-n", ns, "get", "vft", "life", "--no-headers").stdout.split()
    assert row[1:5] == ["Running", "2/2", "40", "0.0625"]

    files.write_progress(
        {"phase": "finished", "step": 60, "epoch": 3, "loss": 0.05, "world_size": 2, "updated": time.time()}
    )
    ended = rfc3339(datetime.now(UTC) - timedelta(seconds=30))
    cluster.set_rayjob_status(
        ns, rj["metadata"]["name"], jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", endTime=ended
    )
    st = cluster.wait_status(ns, "life", phase="Succeeded")
    assert st["completionTime"] == ended
    # the run's last record is read as it ends (in the background: it may land just after)
    eventually(lambda: cluster.status(ns, "life")["progress"]["step"] == 60, what="the final progress")
    reasons = " ".join(stub_events(apiserver, ns))
    for reason in ("RayJobCreated", "Running", "Succeeded"):
        assert f'reason="{reason}"' in reasons, reasons

    # finished long enough ago: the object goes (and its RayJob), the run's files stay
    cluster.patch(ns, "life", {"ttlSecondsAfterFinished": 40})
    time.sleep(2)
    assert cluster.exists(ns, "life")  # not yet: 30 s ago
    cluster.patch(ns, "life", {"ttlSecondsAfterFinished": 20})
    eventually(lambda: not cluster.exists(ns, "life"), what="TTL deletion")
    assert cluster.rayjobs(ns, "life") == []
    assert s3_server.keys(f"{spec['output']['uri'].split('/', 3)[3]}/life/") != []


def test_kubectl_scale_of_an_elastic_run_resizes_the_live_ray_cluster(
    operator_proc: OperatorProcess, apiserver: ApiServer, cluster: Cluster, ns: str, spec: dict[str, Any]
) -> None:
    rj, ray_cluster = running(cluster, ns, "elastic", {**spec, "workers": {"replicas": 2, "maxReplicas": 4}})
    apiserver.kubectl("-n", ns, "scale", "vft/elastic", "--replicas=4")

    def scaled() -> bool:
        g = cluster.raycluster(ns, ray_cluster)["spec"]["workerGroupSpecs"][0]
        return bool(g["replicas"] == 4 and g["maxReplicas"] == 4)

    eventually(scaled, what="RayCluster scaled to 4")
    cluster.mirror_cluster(ns, rj["metadata"]["name"], ray_cluster)  # KubeRay: status follows the cluster
    st = eventually(
        lambda: cluster.status(ns, "elastic")["workers"]["summary"] == "4/4" and cluster.status(ns, "elastic")
    )
    assert [r["metadata"]["name"] for r in cluster.rayjobs(ns, "elastic")] == [rj["metadata"]["name"]]
    assert st["phase"] == "Running" and st["attempt"] == 1
    assert 'reason="Scaled"' in " ".join(stub_events(apiserver, ns))


def test_kubectl_scale_of_a_fixed_size_run_restarts_it_at_the_new_size(
    operator_proc: OperatorProcess, apiserver: ApiServer, cluster: Cluster, ns: str, spec: dict[str, Any]
) -> None:
    old, _ = running(cluster, ns, "fixed", {**spec, "workers": {"replicas": 1}})
    apiserver.kubectl("-n", ns, "scale", "vft/fixed", "--replicas=3")

    def replaced() -> dict[str, Any] | None:
        items = cluster.rayjobs(ns, "fixed")
        return items[0] if len(items) == 1 and items[0]["metadata"]["name"] != old["metadata"]["name"] else None

    new = eventually(replaced, what="a new RayJob at 3 workers")
    assert new["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] == 3
    assert new["metadata"]["labels"]["disneytrain.dev/attempt"] == "1"  # not a failure
    st = cluster.wait_status(ns, "fixed", phase="Pending")
    assert st["workers"]["desired"] == 3


def test_suspend_and_resume(operator_proc: OperatorProcess, cluster: Cluster, ns: str, spec: dict[str, Any]) -> None:
    rj, _ = running(cluster, ns, "pause", spec)
    name = rj["metadata"]["name"]

    cluster.patch(ns, "pause", {"suspend": True})
    eventually(lambda: cluster.the_rayjob(ns, "pause")["spec"]["suspend"] is True, what="RayJob suspended")
    cluster.set_rayjob_status(ns, name, jobDeploymentStatus="Suspended", jobStatus="")  # KubeRay: cluster deleted
    st = cluster.wait_status(ns, "pause", phase="Suspended")
    assert st["workers"]["ready"] == 0

    cluster.patch(ns, "pause", {"suspend": False})
    eventually(lambda: cluster.the_rayjob(ns, "pause")["spec"]["suspend"] is False, what="RayJob resumed")
    cluster.set_rayjob_status(ns, name, jobDeploymentStatus="Running", jobStatus="RUNNING")
    st = cluster.wait_status(ns, "pause", phase="Running")
    assert st["attempt"] == 1 and cluster.the_rayjob(ns, "pause")["metadata"]["name"] == name


def test_failed_attempts_are_retried_from_the_checkpoint_up_to_the_backoff_limit(
    operator_proc: OperatorProcess, apiserver: ApiServer, cluster: Cluster, ns: str, spec: dict[str, Any]
) -> None:
    first, _ = running(cluster, ns, "flaky", {**spec, "backoffLimit": 1})
    # the Ray head is lost: KubeRay fails the RayJob (it does not recover training itself)
    cluster.set_rayjob_status(
        ns,
        first["metadata"]["name"],
        jobDeploymentStatus="Failed",
        jobStatus="FAILED",
        reason="AppFailed",
        message="head pod lost",
    )

    def second_attempt() -> dict[str, Any] | None:
        items = cluster.rayjobs(ns, "flaky")
        ok = len(items) == 1 and items[0]["metadata"]["labels"]["disneytrain.dev/attempt"] == "2"
        return items[0] if ok else None

    second = eventually(second_attempt, what="attempt 2's RayJob")
    st = cluster.status(ns, "flaky")
    assert st["attempt"] == 2 and st["lastFailure"] == "attempt 1: AppFailed: head pod lost"
    # the same run name: training resumes from the run's latest checkpoint
    assert run_config_of(cluster.config_map(ns, second)).name == "flaky"
    # the failed attempt's ConfigMap went with its RayJob
    with pytest.raises(ApiException) as gone:
        cluster.config_map(ns, first)
    assert gone.value.status == 404

    cluster.run_cluster(ns, second)
    cluster.wait_status(ns, "flaky", phase="Running")
    cluster.set_rayjob_status(
        ns, second["metadata"]["name"], jobDeploymentStatus="Complete", jobStatus="FAILED", message="loss is nan"
    )
    st = cluster.wait_status(ns, "flaky", phase="Failed")
    assert "2 attempt(s) failed, backoffLimit 1; last: loss is nan" in st["message"]
    time.sleep(2)  # two resyncs: no third attempt
    assert [r["metadata"]["name"] for r in cluster.rayjobs(ns, "flaky")] == [second["metadata"]["name"]]
    events = " ".join(stub_events(apiserver, ns))
    assert 'type="Warning" reason="AttemptFailed"' in events


def test_deleting_a_videofinetune_removes_its_rayjob_and_never_its_data(
    operator_proc: OperatorProcess,
    cluster: Cluster,
    ns: str,
    spec: dict[str, Any],
    s3_server: SeaweedS3,
    s3_keys: None,
) -> None:
    running(cluster, ns, "gone", spec)
    files = run_files(spec, "gone")
    files.store.write_bytes("checkpoints/step-000000010/commit.json", b"{}")
    before = s3_server.keys(files.uri.split("/", 3)[3] + "/")
    cluster.delete(ns, "gone")
    eventually(lambda: not cluster.exists(ns, "gone"), what="the VideoFineTune gone")
    assert cluster.rayjobs(ns, "gone") == []
    assert s3_server.keys(files.uri.split("/", 3)[3] + "/") == before != []


def test_nothing_is_written_once_converged(
    operator_proc: OperatorProcess, apiserver: ApiServer, cluster: Cluster, ns: str, spec: dict[str, Any]
) -> None:
    running(cluster, ns, "quiet", {**spec, "workers": {"replicas": 2}})
    time.sleep(1.5)  # let the last writes land
    before = apiserver.writes()
    time.sleep(4)  # four resyncs of every VideoFineTune, with progress reads
    assert apiserver.writes() - before == {}


def test_a_spec_the_operator_cannot_run_waits_with_its_reason(
    operator_proc: OperatorProcess, cluster: Cluster, ns: str, spec: dict[str, Any]
) -> None:
    cluster.create(ns, "tiny-cpu", {**spec, "workers": {"resources": {"gpus": 2, "cpu": "1"}}})
    st = eventually(lambda: cluster.status(ns, "tiny-cpu").get("message") and cluster.status(ns, "tiny-cpu"))
    assert st["phase"] == "Pending" and "less than one CPU" in st["message"]
    assert cluster.rayjobs(ns, "tiny-cpu") == []
    cluster.patch(ns, "tiny-cpu", {"workers": {"resources": {"gpus": 2, "cpu": "16"}}})
    cluster.the_rayjob(ns, "tiny-cpu")


@pytest.mark.parametrize("step", ["finalizer", "rayjob", "status"])
def test_an_operator_killed_mid_reconcile_and_restarted_creates_no_duplicates(
    apiserver: ApiServer, cluster: Cluster, spec: dict[str, Any], tmp_path: Path, step: str
) -> None:
    ns = f"chaos-{uuid.uuid4().hex[:8]}"  # not the session operator's namespaces
    crashing = start_operator(apiserver, tmp_path / "crash.log", [ns], {"DISNEY_OPERATOR_CHAOS": f"exit-after:{step}"})
    try:
        cluster.create(ns, "crash", spec)
        eventually(lambda: crashing.proc.poll() is not None, what="the operator's exit")
        assert crashing.proc.returncode == 3 and f"chaos: exiting after {step}" in crashing.text()
    finally:
        crashing.stop()
    before = {"finalizer": 0, "rayjob": 1, "status": 1}[step]
    assert len(cluster.rayjobs(ns, "crash")) == before
    restarted = start_operator(apiserver, tmp_path / "restarted.log", [ns])
    try:
        rj = cluster.the_rayjob(ns, "crash")
        st = cluster.wait_status(ns, "crash", phase="Pending")
        assert st["rayJob"]["name"] == rj["metadata"]["name"]
        time.sleep(2)
        assert len(cluster.rayjobs(ns, "crash")) == 1
        assert cluster.get(ns, "crash")["metadata"]["finalizers"] == [FINALIZER]
    finally:
        restarted.stop()


def test_a_stale_write_gets_409_and_the_fresh_object_is_reconciled(
    apiserver: ApiServer, cluster: Cluster, spec: dict[str, Any]
) -> None:
    """The controller in-process, in a namespace no operator watches: a status planned from an old
    object is refused by the server (409), nothing is written from it, and the fresh object converges."""
    ns = f"solo-{uuid.uuid4().hex[:8]}"
    controller = Controller(Kube(api_client(apiserver.kubeconfig), "disney-train-operator"), Settings())
    stale = cluster.create(ns, "stale", spec)
    cluster.patch(ns, "stale", {"workers": {"replicas": 2}})  # the user moves on
    conflicts_before = conflicts(apiserver)
    assert controller.reconcile(stale, []) is None  # the finalizer write met the newer object
    assert controller.conflicts == 1 and conflicts(apiserver) == conflicts_before + 1
    fresh = cluster.get(ns, "stale")
    assert "status" not in fresh and cluster.rayjobs(ns, "stale") == []
    plan = controller.reconcile(fresh, [])
    assert plan is not None and plan.apply is not None
    st = cluster.status(ns, "stale")
    assert st["workers"]["desired"] == 2 and st["observedGeneration"] == fresh["metadata"]["generation"]
    rjs = cluster.rayjobs(ns, "stale")
    assert len(rjs) == 1 and rjs[0]["metadata"]["labels"][LABEL_VFT] == "stale"


class ServerSource:
    """controller.Source read straight from the API server (the operator reads kopf's indexes)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def vft(self, key: tuple[str, str]) -> dict[str, Any] | None:
        return self.cluster.get(*key) if self.cluster.exists(*key) else None

    def rayjobs(self, key: tuple[str, str]) -> list[dict[str, Any]]:
        return self.cluster.rayjobs(*key)


def test_a_reconcile_holding_an_old_body_acts_on_the_newest_objects(
    apiserver: ApiServer, cluster: Cluster, spec: dict[str, Any]
) -> None:
    """A reconcile that waited for the lock with a body from before a spec change must not undo
    what the reconcile before it did (delete the new RayJob, bring the old one back)."""
    ns = f"solo-{uuid.uuid4().hex[:8]}"
    kube = Kube(api_client(apiserver.kubeconfig), "disney-train-operator")
    controller = Controller(kube, Settings(), source=ServerSource(cluster))
    cluster.create(ns, "race", spec)
    for _ in range(3):
        controller.reconcile(cluster.get(ns, "race"), [])
    old_body, (first,) = cluster.get(ns, "race"), cluster.rayjobs(ns, "race")
    cluster.patch(ns, "race", {"image": "registry/trainer:2"})
    eventually(
        lambda: (
            controller.reconcile(cluster.get(ns, "race"), [])
            and len(cluster.rayjobs(ns, "race")) == 1
            and cluster.rayjobs(ns, "race")[0]["metadata"]["name"] != first["metadata"]["name"]
        ),
        what="the RayJob replaced",
    )
    (second,) = cluster.rayjobs(ns, "race")
    plan = controller.reconcile(old_body, [first])  # stale: planned from these, it would delete `second`
    assert plan is not None and plan.delete == [] and plan.apply is None
    assert [r["metadata"]["name"] for r in cluster.rayjobs(ns, "race")] == [second["metadata"]["name"]]


def test_a_running_runs_configmap_deleted_by_hand_comes_back(
    operator_proc: OperatorProcess, cluster: Cluster, ns: str, spec: dict[str, Any]
) -> None:
    """The ConfigMap a RayJob's head mounts, deleted while the run goes on: the next resync applies it again
    (a head pod restarted without it would wait for its volume for ever)."""
    rj, _ = running(cluster, ns, "kept", spec)
    before = cluster.config_map(ns, rj)
    cluster.core.delete_namespaced_config_map(rj["metadata"]["name"], ns)
    with pytest.raises(ApiException):
        cluster.config_map(ns, rj)
    back = eventually(lambda: _config_map_or_none(cluster, ns, rj), timeout=20, what="the ConfigMap again")
    assert back["data"] == before["data"] and back["metadata"]["uid"] != before["metadata"]["uid"]


def _config_map_or_none(cluster: Cluster, ns: str, rj: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return cluster.config_map(ns, rj)
    except ApiException:
        return None


def test_a_running_runs_configmap_is_written_once_a_resync_not_at_every_rayjob_event(
    operator_proc: OperatorProcess, cluster: Cluster, ns: str, spec: dict[str, Any]
) -> None:
    """Each RayJob event brings a reconcile; re-applying the run's ConfigMap and NetworkPolicy at each was two
    API writes per run per event (KubeRay moves a RayJob's status often, on a cluster of many runs). Counted
    by the operator's own `disney_operator_api_writes_total`, the resyncs of every other unfinished
    VideoFineTune of the session allowed for (one write per resync each, at most)."""
    rj, _ = running(cluster, ns, "quiet", spec)
    events = 60

    def config_map_writes() -> float:
        text = urllib.request.urlopen(f"http://{operator_proc.metrics}/metrics", timeout=10).read().decode()
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "disney_operator_api_writes_total" and s.labels.get("resource") == "configmaps"
        )

    def window(seconds: float, changes: int) -> float:
        """ConfigMap writes in a window of `seconds` with `changes` RayJob status changes in it."""
        before, t0 = config_map_writes(), time.monotonic()
        for i in range(changes):
            cluster.set_rayjob_status(ns, rj["metadata"]["name"], message=f"event {i}")
            time.sleep(0.02)
        time.sleep(max(0.0, seconds - (time.monotonic() - t0)))
        return config_map_writes() - before

    # the session's other unfinished runs write on their own resyncs: a quiet window of the same length
    # measures them; one write per resync of this run, and a run's phase against the windows, may differ
    seconds = 4.0
    quiet, busy = window(seconds, 0), window(seconds, events)
    vfts = cluster.custom.list_cluster_custom_object("disneytrain.dev", "v1alpha1", "videofinetunes")["items"]
    runs = sum(1 for v in vfts if (v.get("status") or {}).get("phase") not in ("Succeeded", "Failed"))
    allowed = quiet + runs + math.ceil(seconds / RESYNC_SECONDS) + 1
    said = f"{busy:.0f} writes with {events} events, {quiet:.0f} without; {runs} runs not finished"
    assert busy <= allowed < quiet + events, said
