"""The RayJobs the operator builds are what a real KubeRay accepts: `kubectl apply --dry-run=server` against
KubeRay's own CRDs (reference data beside the project, installed on a second, plain API server)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import yaml

from disney_operator.kube import Kube
from disney_operator.reconcile import Event
from disney_operator.settings import Settings
from tests.support.apiserver import ApiServer, api_client
from tests.support.vfts import render, vft

SPECS: dict[str, dict[str, Any]] = {
    "2b t2v, 4 GPUs per pod": {"workers": {"replicas": 2, "resources": {"gpus": 4, "cpu": "48", "memory": "400Gi"}}},
    "5b i2v, elastic, placed, with keys": {
        "model": {"uri": "s3://models/CogVideoX-5b-I2V", "variant": "i2v"},
        "workers": {"replicas": 4, "minReplicas": 2, "maxReplicas": 8},
        "placement": {
            "nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": {
                "podAntiAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "weight": 50,
                            "podAffinityTerm": {
                                "topologyKey": "kubernetes.io/hostname",
                                "labelSelector": {"matchLabels": {"disneytrain.dev/role": "worker"}},
                            },
                        }
                    ]
                }
            },
            "priorityClassName": "training",
        },
        "s3Credentials": {"secretName": "s3-keys"},
        "training": {"validation": {"prompts": ["a mouse whistles"], "images": ["s3://data/first.png"]}},
    },
    "CPU smoke, suspended": {"suspend": True, "workers": {"resources": {"gpus": 0, "cpu": "2", "memory": "4Gi"}}},
}


ALLOWED = Settings(allowed_priority_classes=["training"])


@pytest.mark.parametrize("case", list(SPECS))
def test_rendered_rayjobs_pass_kuberays_crd(kuberay_server: ApiServer, case: str) -> None:
    rj = render(vft(**SPECS[case]), settings=ALLOWED)
    out = kuberay_server.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(rj))
    assert f"rayjob.ray.io/{rj['metadata']['name']} created (server dry run)" in out.stdout
    # the dry run is a real check: KubeRay's schema refuses a broken RayJob
    broken = render(vft(**SPECS[case]), settings=ALLOWED)
    del broken["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["groupName"]
    refused = kuberay_server.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(broken), check=False)
    assert refused.returncode != 0 and "groupName: Required value" in refused.stderr


def test_the_cluster_scale_patch_fits_kuberays_raycluster(kuberay_server: ApiServer) -> None:
    """The JSON patch `kubectl scale vft/…` turns into, applied to a RayCluster of KubeRay's schema."""
    from kubernetes import client

    rj = render(vft(workers={"replicas": 2, "maxReplicas": 6}))
    spec = rj["spec"]["rayClusterSpec"]
    ns = "scale-patch"
    client.CustomObjectsApi(api_client(kuberay_server.kubeconfig)).create_namespaced_custom_object(
        "ray.io",
        "v1",
        ns,
        "rayclusters",
        {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "c1"}, "spec": spec},
    )
    kube = Kube(api_client(kuberay_server.kubeconfig), "disney-train-operator")
    kube.scale_raycluster(ns, "c1", 5)
    group = kuberay_server.kubectl("-n", ns, "get", "raycluster", "c1", "-o", "yaml").stdout
    g = yaml.safe_load(group)["spec"]["workerGroupSpecs"][0]
    assert (g["replicas"], g["maxReplicas"], g["minReplicas"]) == (5, 5, 1)


def test_events_are_best_effort(kuberay_server: ApiServer, caplog: pytest.LogCaptureFixture) -> None:
    """This server has no core/v1: an Event cannot be written, and that never fails a reconcile."""
    kube = Kube(api_client(kuberay_server.kubeconfig), "disney-train-operator")
    body = vft()
    with caplog.at_level(logging.WARNING, logger="disney_operator.kube"):
        kube.event(body, Event("Normal", "RayJobCreated", "RayJob x"))
        kube.event(body, Event("Normal", "Running", "training"))
    assert "events are not written (404" in caplog.text
    assert kube.writes["create events"] == 1  # the second is not even tried
