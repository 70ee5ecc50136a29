"""The README's "On a real cluster", on a real cluster (`make cluster`: kube-apiserver with RBAC, a kubelet
on containerd/runc, CoreDNS, kube-proxy, KubeRay's operator, SeaweedFS as S3), by the README's own
commands: helm install the chart, the S3 Secret, `disney-train data pack` / `model push`, kubectl apply
of the smoke job, then what a user does to a running job. Nothing here plays a part: KubeRay builds the
Ray cluster and the submitter, the kubelet runs the pods from the images `make cluster` imported.

What differs from jobs/smoke.yaml (`smoke_job`): CPU workers (no GPU here) at fp32, placed on the GPU
pool's node by the job's own placement, resources that fit this 2-core machine, and the S3 endpoint of
the cluster's SeaweedFS.

The tests run in order and share the install: each one's name says what it shows.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from tests.support.cluster import ROOT, Kube, connect, s3_env, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

RELEASE_NS = "disney-train"
JOBS_NS = "training"
BUCKET = "disney-train"
SMOKE = "disney-train-smoke"
CLI = str(ROOT / ".venv" / "bin" / "disney-train")


@pytest.fixture(scope="module")
def kube() -> Kube:
    return connect()


@pytest.fixture(scope="module")
def s3() -> dict[str, str]:
    return s3_env()


@cache
def _client(endpoint: str, key: str, secret: str) -> Any:
    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret, region_name="us-east-1"
    )


def bucket(s3: dict[str, str]) -> Any:
    """One S3 client for the cluster's keys, made once."""
    return _client(s3["AWS_ENDPOINT_URL"], s3["AWS_ACCESS_KEY_ID"], s3["AWS_SECRET_ACCESS_KEY"])


def keys(s3: dict[str, str], prefix: str) -> list[str]:
    pages = bucket(s3).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def cli(s3: dict[str, str], *args: str) -> str:
    """The disney-train CLI on this host, with the cluster's S3 in its environment as a user sets it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | s3
    proc = subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"disney-train {' '.join(args)} failed: {proc.stderr[-2000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def inputs(s3: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Step 3 of the README, as jobs/smoke.yaml's header says: the tiny model, the tiny CLIP and the packed
    sample clips on the cluster's S3. Returns the tiny model's folder (to load the LoRA into)."""
    work = tmp_path_factory.mktemp("inputs")
    client = bucket(s3)
    if BUCKET not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
        client.create_bucket(Bucket=BUCKET)
    cli(s3, "model", "tiny", str(work / "tiny"))
    cli(s3, "model", "push", str(work / "tiny"), f"s3://{BUCKET}/models/tiny-t2v")
    cli(s3, "model", "tiny-clip", str(work / "tiny-clip"))
    cli(s3, "model", "push", str(work / "tiny-clip"), f"s3://{BUCKET}/models/tiny-clip")
    cli(s3, "data", "sample", str(work / "sample"))
    cli(s3, "data", "pack", str(work / "sample"), f"s3://{BUCKET}/datasets/sample", "--min-frames", "17")
    return work / "tiny"


@pytest.fixture(scope="module")
def installed(kube: Kube, s3: dict[str, str]) -> Iterator[None]:
    """Steps 1 and 2 of the README: the chart (the operator as a pod from the operator image, its RBAC),
    then the S3 Secret in the jobs' namespace. The operator reads progress with keys of its own."""
    for ns in (RELEASE_NS, JOBS_NS):
        kube.kubectl("create", "namespace", ns, check=False)
    secret = ("create", "secret", "generic", "disney-train-s3")
    creds = (
        f"--from-literal=AWS_ACCESS_KEY_ID={s3['AWS_ACCESS_KEY_ID']}",
        f"--from-literal=AWS_SECRET_ACCESS_KEY={s3['AWS_SECRET_ACCESS_KEY']}",
    )
    for ns in (RELEASE_NS, JOBS_NS):
        kube.kubectl("-n", ns, "delete", "secret", "disney-train-s3", "--ignore-not-found")
        kube.kubectl("-n", ns, *secret, *creds)
    kube.helm("uninstall", "disney-train", "-n", RELEASE_NS, "--wait", check=False)
    kube.helm(
        "install", "disney-train", str(ROOT / "charts" / "disney-train"), "-n", RELEASE_NS,
        "--set", "s3Credentials.secretName=disney-train-s3",
        "--set", "operator.progressSeconds=5",
        "--set", "jobDefaults.clusterTTLSeconds=600",  # a failed run's Ray cluster stays to be read
        "--wait", "--timeout", "3m",
    )  # fmt: skip
    kube.kubectl("-n", RELEASE_NS, "rollout", "status", "deploy/disney-train", "--timeout=120s")
    yield


def smoke_job(s3: dict[str, str], name: str = SMOKE) -> dict[str, Any]:
    """jobs/smoke.yaml as a CPU cluster runs it (what differs is said in the module's docstring)."""
    job: dict[str, Any] = yaml.safe_load((ROOT / "jobs" / "smoke.yaml").read_text())
    job["metadata"]["name"] = name
    spec = job["spec"]
    spec["training"]["s3"] = {"endpoint_url": s3["AWS_ENDPOINT_URL"]}
    spec["training"]["train"]["precision"] = "fp32"
    spec["workers"]["resources"] = {"gpus": 0, "cpu": "1", "memory": "6Gi", "sharedMemory": "1Gi"}
    spec["head"]["resources"] = {"cpu": "500m", "memory": "4Gi"}
    # the GPU pool's node, by the user's own placement (the chart's default tolerations are for GPU workers)
    spec["placement"] = {
        "nodeSelector": {"disneytrain.dev/pool": "gpu"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }
    return job


def vft(kube: Kube, name: str) -> dict[str, Any]:
    out: dict[str, Any] = kube.get("vft", name, JOBS_NS)
    return out


def phase_is(kube: Kube, name: str, *phases: str) -> dict[str, Any] | None:
    obj = vft(kube, name)
    phase = obj.get("status", {}).get("phase")
    if phase == "Failed" and "Failed" not in phases:
        raise AssertionError(f"{name} failed: {yaml.safe_dump(obj.get('status'))}")
    return obj if phase in phases else None


def test_smoke_job_trains_to_succeeded_with_its_lora_in_s3(
    kube: Kube, s3: dict[str, str], installed: None, inputs: Path, tmp_path: Path
) -> None:
    kube.kubectl("-n", JOBS_NS, "delete", "vft", SMOKE, "--ignore-not-found", "--wait")
    client = bucket(s3)
    for key in keys(s3, f"smoke/{SMOKE}/"):
        client.delete_object(Bucket=BUCKET, Key=key)
    started = time.monotonic()
    kube.kubectl("-n", JOBS_NS, "apply", "-f", "-", stdin=yaml.safe_dump(smoke_job(s3)))
    done = wait_until(f"{SMOKE} Succeeded", lambda: phase_is(kube, SMOKE, "Succeeded"), timeout=600)
    took = time.monotonic() - started
    status = done["status"]
    assert status["progress"]["step"] == 12, status
    assert status["progress"]["loss"] > 0, status
    assert status["progress"].get("lastCheckpointTime"), status
    row = kube.kubectl("-n", JOBS_NS, "get", "vft", SMOKE, "--no-headers").stdout.split()
    assert row[1] == "Succeeded" and "12" in row, row
    saved = keys(s3, f"smoke/{SMOKE}/")
    assert any(k.startswith(f"smoke/{SMOKE}/final/") for k in saved), saved
    assert f"smoke/{SMOKE}/finished.json" in saved, saved
    # the final LoRA loads into the tiny pipeline and renders
    cli(
        s3, "generate", "--model", str(inputs), "--out", str(tmp_path / "gen"),
        "--lora", f"s3://{BUCKET}/smoke/{SMOKE}", "--prompt", "a cartoon mouse",
        "--frames", "9", "--height", "32", "--width", "32", "--steps", "2", "--device", "cpu",
    )  # fmt: skip
    assert (tmp_path / "gen" / "video-00.mp4").stat().st_size > 0
    print(f"smoke job: apply -> Succeeded in {took:.0f} s")


def test_uninstall_leaves_s3_data_and_no_pods(kube: Kube, s3: dict[str, str], installed: None) -> None:
    before = set(keys(s3, ""))
    kube.kubectl("-n", JOBS_NS, "delete", "vft", "--all", "--wait", "--timeout=120s")
    kube.helm("uninstall", "disney-train", "-n", RELEASE_NS, "--wait")

    def no_pods() -> bool | None:
        pods = kube.items("pods", JOBS_NS) + kube.items("pods", RELEASE_NS)
        return True if not pods else None

    wait_until("no pods left in the release's and the jobs' namespaces", no_pods, timeout=120)
    assert set(keys(s3, "")) >= before
