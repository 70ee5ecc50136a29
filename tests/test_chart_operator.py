"""The chart's operator Deployment, run for real: the rendered container's command, arguments and environment
start `disney-train-operator` against a real API server that has only the chart's CRDs (and KubeRay's),
as the chart's ServiceAccount, in two replicas with kopf peering. The API server's audit log then shows
every request the operator made, each checked against the chart's rendered RBAC: all of them allowed,
and every permission the chart grants used (least privilege)."""

from __future__ import annotations

import json
import re
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from disney_operator.rayjob import LABEL_VFT
from disney_operator.status import rfc3339
from tests.support.apiserver import KUBERAY_SCHEMAS, ApiServer, eventually, start_apiserver
from tests.support.chart import CHART, allows, bound_rules, chart_copy, find, granted, one, render, requests_of
from tests.support.kuberay import Cluster, OperatorProcess, launch_operator
from tests.support.seaweed import RW, free_ports

# Granted though the audit log cannot show them: a server-side apply that creates the object is also
# authorized as `create` (the API server's create-on-update check), while the log records only the
# patch; setting blockOwnerDeletion on the RayJobs' ownerReference needs `update` on the owner's
# finalizers where the OwnerReferencesPermissionEnforcement admission plugin runs (not on this server).
NOT_IN_AUDIT = {
    ("create", "ray.io", "rayjobs"),
    ("create", "", "configmaps"),
    ("update", "disneytrain.dev", "videofinetunes/finalizers"),
}
RELEASE_NS = "disney-train"
USER = f"system:serviceaccount:{RELEASE_NS}:dt-disney-train"  # the chart's ServiceAccount, release "dt"


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """A fresh API server of its own (nothing else talks to it as the operator) with the audit log on,
    the chart's CRDs installed from crds/ and KubeRay's."""
    server = start_apiserver(tmp_path_factory.mktemp("audited"), audit=True)
    try:
        server.install(*sorted((CHART / "crds").glob("*.yaml")))
        server.install(KUBERAY_SCHEMAS / "rayjobs.ray.io.yaml", KUBERAY_SCHEMAS / "rayclusters.ray.io.yaml")
        server.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/kopfpeerings.kopf.dev")
        yield server
    finally:
        server.stop()


def replica(
    objects: list[dict[str, Any]], pod_name: str, kubeconfig: Path, log: Path, secrets: dict[str, str]
) -> OperatorProcess:
    """Start the rendered Deployment's container here: its command, args and env (Secret and field
    references resolved as the kubelet would), as the chart's ServiceAccount."""
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["disney-train-operator"]
    env = {"KUBECONFIG": str(kubeconfig)}
    for e in container["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "fieldRef" in e["valueFrom"]:
            assert e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            env[e["name"]] = pod_name
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = secrets[f"{ref['name']}/{ref['key']}"]
    live = next(a for a in container["args"] if a.startswith("--liveness="))
    port = int(re.search(r":(\d+)/", live).group(1))  # type: ignore[union-attr]
    probe = container["livenessProbe"]["httpGet"]
    assert (
        probe["port"] == "liveness"
        and {"name": "liveness", "containerPort": port, "protocol": "TCP"} in container["ports"]
    )
    health = f"http://127.0.0.1:{port}{probe['path']}"
    return launch_operator(
        container["args"], env, log, health, f"127.0.0.1:{env['DISNEY_OPERATOR_METRICS_PORT']}", timeout=60
    )


def counted(op: OperatorProcess, name: str) -> float:
    """The sum of a metric's series, as the replica serves them (Prometheus would scrape the same)."""
    with urllib.request.urlopen(f"http://{op.metrics}/metrics", timeout=5) as r:
        lines = r.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith((name + "{", name + " ")))


def working(op: OperatorProcess) -> bool:
    """The replica's own word: disney_operator_active."""
    return counted(op, "disney_operator_active") == 1


def peering_ref(peering: dict[str, Any]) -> list[str]:
    """kubectl's words for a (Cluster)KopfPeering: kind, name and, for a namespaced one, -n NS."""
    meta = peering["metadata"]
    return [peering["kind"].lower(), meta["name"], *(["-n", meta["namespace"]] if "namespace" in meta else [])]


def patch_status(server: ApiServer, peering: dict[str, Any], status: dict[str, Any]) -> None:
    server.kubectl("patch", *peering_ref(peering), "--type=merge", "-p", json.dumps({"status": status}))


def peers(server: ApiServer, peering: dict[str, Any]) -> dict[str, Any]:
    """The live operators registered in a (Cluster)KopfPeering: pod name -> priority, lastseen, lifetime."""
    out = server.kubectl("get", *peering_ref(peering), "-o", "json").stdout
    status: dict[str, Any] = json.loads(out).get("status") or {}
    return status


@pytest.mark.parametrize("mode", ["all-namespaces", "named-namespaces"])
def test_the_rendered_operator_runs_one_active_replica_within_its_rbac(
    audited: ApiServer, tmp_path: Path, mode: str
) -> None:
    ns = f"vft-{uuid.uuid4().hex[:6]}"
    unwatched = f"vft-{uuid.uuid4().hex[:6]}"
    chart = chart_copy(tmp_path)
    common: dict[str, Any] = {
        "replicaCount": 2,
        "watchNamespaces": [ns, f"vft-{uuid.uuid4().hex[:6]}"] if mode == "named-namespaces" else [],
        "operator": {"resyncSeconds": 1, "progressSeconds": 0.5},
        # this API server serves no networking.k8s.io (tests/e2e runs the policies on the real cluster)
        "networkPolicy": {"enabled": False},
        "jobDefaults": {
            "trainerImage": {"repository": "registry.example/trainer", "tag": "9.9.9"},
            "workers": {"nodeSelector": {"pool": "h100"}},
        },
    }
    renders = []
    for _ in range(2):  # one render per replica: the test gives each its own free ports
        liveness, metrics = free_ports(2)
        renders.append(
            render(
                chart,
                {**common, "operator": {**common["operator"], "livenessPort": liveness}, "metrics": {"port": metrics}},
            )
        )
    objects = renders[0]
    assert one(objects, "Deployment")["spec"]["replicas"] == 2
    # the peering objects the chart creates (custom resources: this server serves them)
    peerings = find(objects, "ClusterKopfPeering") + find(objects, "KopfPeering")
    assert len(peerings) == (1 if mode == "all-namespaces" else 2)
    for peering in peerings:
        audited.kubectl("create", "-f", "-", input=json.dumps(peering))
    peering = peerings[0]
    start = len(audited.audit(USER))

    kubeconfig = audited.kubeconfig_for(USER)
    secrets: dict[str, str] = {}  # the operator's Deployment references no Secret (it holds no S3 keys)
    pods = ["dt-disney-train-0", "dt-disney-train-1"]
    cluster = Cluster(audited)
    spec: dict[str, Any] = {
        "model": {"uri": "s3://models/CogVideoX-2b"},
        "dataset": {"uri": "s3://data/disney"},
        "output": {"uri": "s3://runs/out"},
        "workers": {"replicas": 2, "maxReplicas": 4},
        "s3Credentials": {"secretName": "s3-keys"},  # the running run's progress is read with it
    }
    cluster.s3_secret(ns, RW)
    ops = [replica(renders[0], pods[0], kubeconfig, tmp_path / f"{pods[0]}.log", secrets)]
    try:
        eventually(lambda: working(ops[0]), what="the first replica working")
        cluster.create(ns, "early", spec)  # there before the second replica starts
        cluster.the_rayjob(ns, "early")
        ops.append(replica(renders[1], pods[1], kubeconfig, tmp_path / f"{pods[1]}.log", secrets))
        # both registered in the peering object: the first started ranks highest and keeps working
        live = eventually(
            lambda: len(st := peers(audited, peering)) == 2 and st, what="both replicas in the peering object"
        )
        assert set(live) == set(pods) and live[pods[0]]["priority"] > live[pods[1]]["priority"]
        active, standby = 0, 1
        eventually(lambda: [working(op) for op in ops] == [True, False], what="one working replica")

        _lifecycle(audited, cluster, ns, spec)
        # all that time the standby did nothing: no reconcile, no write (while the worker did both)
        for metric in ("disney_operator_reconciles_total", "disney_operator_api_writes_total"):
            assert counted(ops[active], metric) > 0 and counted(ops[standby], metric) == 0, metric

        _handover(audited, peering, ops, pods, (active, standby), cluster, ns, spec, mode, unwatched)
    finally:
        for op in ops:
            op.stop()

    _check_rbac(audited, objects, start, mode, common["watchNamespaces"])


def _lifecycle(audited: ApiServer, cluster: Cluster, ns: str, spec: dict[str, Any]) -> None:
    """A run through the working replica: the chart's job defaults on its RayJob, kubectl scale, success and
    the TTL deletion, and a user's deletion of a running one."""
    cluster.create(ns, "first", spec)
    rj = cluster.the_rayjob(ns, "first")
    worker = rj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    # the chart's job defaults reached the RayJob through the operator's environment
    assert worker["nodeSelector"] == {"pool": "h100"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in worker["tolerations"]
    assert worker["containers"][0]["image"] == "registry.example/trainer:9.9.9"
    ray_cluster = cluster.run_cluster(ns, rj)
    cluster.wait_status(ns, "first", phase="Running")
    audited.kubectl("-n", ns, "scale", "vft/first", "--replicas=3")
    eventually(
        lambda: cluster.raycluster(ns, ray_cluster)["spec"]["workerGroupSpecs"][0]["replicas"] == 3,
        what="the RayCluster resized",
    )
    # finished long ago, with a TTL: the operator deletes the VideoFineTune (and its RayJob)
    ended = rfc3339(datetime.now(UTC) - timedelta(minutes=5))
    cluster.set_rayjob_status(
        ns, rj["metadata"]["name"], jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", endTime=ended
    )
    cluster.wait_status(ns, "first", phase="Succeeded")
    cluster.patch(ns, "first", {"ttlSecondsAfterFinished": 1})
    eventually(lambda: not cluster.exists(ns, "first"), what="TTL deletion")
    assert cluster.rayjobs(ns, "first") == []
    # a user deletes a running one: its RayJob goes, the finalizer comes off
    cluster.create(ns, "second", {**spec, "workers": {"replicas": 1}})
    cluster.the_rayjob(ns, "second")
    cluster.delete(ns, "second")
    eventually(lambda: not cluster.exists(ns, "second"), what="deletion")
    assert all(r["metadata"]["labels"][LABEL_VFT] != "second" for r in cluster.rayjobs(ns))


def _handover(
    audited: ApiServer,
    peering: dict[str, Any],
    ops: list[Any],
    pods: list[str],
    roles: tuple[int, int],
    cluster: Cluster,
    ns: str,
    spec: dict[str, Any],
    mode: str,
    unwatched: str,
) -> None:
    """An intruder outranks the working replica: it exits (saying goodbye), the standby takes over."""
    active, standby = roles
    # an older replica the working one had taken for dead shows up in the peering object (as kopf
    # writes it): the working one stops, to be restarted clean; the standby stays standing by
    intruder = {"priority": 0, "lastseen": datetime.now(UTC).isoformat(), "lifetime": 60}
    patch_status(audited, peering, {"intruder": intruder})
    eventually(lambda: ops[active].proc.poll() is not None, what="the outranked replica exiting")
    assert "outranked by intruder" in ops[active].text()
    # its goodbye: kopf removes its entry at once (not when its 60 s lifetime runs out)
    eventually(lambda: pods[active] not in peers(audited, peering), timeout=5, what="the goodbye")
    assert not working(ops[standby]) and ops[standby].proc.poll() is None
    # the intruder goes: the standby (never working, its index clean) takes over
    patch_status(audited, peering, {"intruder": None})
    eventually(lambda: working(ops[standby]), what="the standby taking over")
    cluster.create(ns, "third", spec)
    cluster.the_rayjob(ns, "third")
    eventually(lambda: "third: applied RayJob" in ops[standby].text(), what="the new worker's log")
    if mode == "named-namespaces":  # a namespace not named is not the operator's
        cluster.create(unwatched, "elsewhere", spec)
        time.sleep(3)
        assert cluster.rayjobs(unwatched) == []


def _check_rbac(audited: ApiServer, objects: list[dict[str, Any]], start: int, mode: str, watched: list[str]) -> None:
    """Every request the operator made is one its RBAC allows; every permission it has was used."""
    rules = bound_rules(objects, USER)
    made = requests_of(audited.audit(USER)[start:])
    assert made, "no audit events for the operator's user"
    refused = sorted(str(r) for r in made if not allows(rules, r))
    assert not refused, f"requests the chart's RBAC would refuse: {refused}"
    used = {(r.verb, r.group, r.resource) for r in made} | NOT_IN_AUDIT
    unused = sorted(f"{v} {g or 'core'}/{r}" for _, v, g, r in granted(rules) if (v, g, r) not in used)
    assert not unused, f"permissions the chart grants that the operator never used: {unused}"
    if mode == "named-namespaces":  # Roles only: nothing cluster-wide asked for, nothing granted
        assert all(r.namespace in watched for r in made), sorted(map(str, made))
        assert all(where is not None for where, _ in rules)
