"""The README's "On a real cluster", on a real cluster (`make cluster`: kube-apiserver with RBAC, kubelets
on containerd/runc, CoreDNS, kube-proxy, KubeRay's operator, SeaweedFS as S3), by the README's own
commands. Nothing here plays a part: KubeRay builds the Ray clusters and the submitters, the kubelets run
the pods from the images `make cluster` imported.

The fixtures are the README's set-up, done once for the session: the chart installed (steps 1 and 2, with
the chart's example Kueue queues) and the inputs on S3 (step 3). The modules run in name order and share that
install: test_elastic (scale, Prometheus, pod deletions, suspend/resume on one run), test_queue (Kueue's
admission and preemption), test_smoke (the smoke job to Succeeded, no queue),
test_uninstall (it removes the install), and test_up_again last (it kills the cluster and brings it up anew).
test_node_images needs no cluster: it runs a containerd of its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.jobs import BUCKET, JOBS_NS, RELEASE_NS, bucket, cli
from tests.support.cluster import ROOT, Kube, connect, s3_env


@pytest.fixture(scope="session")
def kube() -> Kube:
    return connect()


@pytest.fixture(scope="session")
def s3() -> dict[str, str]:
    return s3_env()


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
def installed(kube: Kube, s3: dict[str, str], inputs: Path) -> Iterator[None]:
    """Steps 1 and 2 of the README: the chart (the operator as a pod from the operator image, its RBAC),
    then the S3 Secret in the jobs' namespace. The operator holds no S3 keys: it reads a run's progress with
    the Secret its VideoFineTune names (the chart lets it `get` Secrets), at the cluster's S3 only."""
    for ns in (RELEASE_NS, JOBS_NS):
        kube.kubectl("create", "namespace", ns, check=False)
    secret = ("create", "secret", "generic", "disney-train-s3")
    creds = (
        f"--from-literal=AWS_ACCESS_KEY_ID={s3['AWS_ACCESS_KEY_ID']}",
        f"--from-literal=AWS_SECRET_ACCESS_KEY={s3['AWS_SECRET_ACCESS_KEY']}",
    )
    # the jobs' namespace only: the release's namespace (the operator's) has no S3 keys
    kube.kubectl("-n", RELEASE_NS, "delete", "secret", "disney-train-s3", "--ignore-not-found")
    kube.kubectl("-n", JOBS_NS, "delete", "secret", "disney-train-s3", "--ignore-not-found")
    kube.kubectl("-n", JOBS_NS, *secret, *creds)
    kube.helm("uninstall", "disney-train", "-n", RELEASE_NS, "--wait", check=False)
    # the chart's CRDs as they are now, as the README says after an upgrade: Helm installs crds/ only where
    # they are missing, and the API server drops the status fields an older CRD in the cluster lacks (seen
    # here: a new status.queue field missing from every status, no error anywhere)
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "charts" / "disney-train" / "crds"))
    kube.helm(
        "install", "disney-train", str(ROOT / "charts" / "disney-train"), "-n", RELEASE_NS,
        # the operator reads progress with each VideoFineTune's Secret, at endpoints listed here only
        "--set-json", f"operator.progressEndpoints={json.dumps([s3['AWS_ENDPOINT_URL']])}",
        "--set", "operator.progressSeconds=5",
        "--set", "metrics.podMonitor.interval=5s",
        "--set", "jobDefaults.clusterTTLSeconds=600",  # a failed run's Ray cluster stays to be read
        # test_queue: the chart's example queues with 2 GPUs (the GPU node's stand-ins), whose runs train on
        # the CPU, and the two PriorityClasses that test may name
        "--set", "kueue.example.enabled=true", "--set", "kueue.example.gpus=2",
        "--set", "kueue.example.cpu=64", "--set", "kueue.example.memory=256Gi",
        "--set", f"kueue.example.localQueues.{JOBS_NS}=gpus",
        "--set", "jobDefaults.workers.device=cpu",
        "--set-json", 'jobDefaults.allowedPriorityClasses=["disney-train-e2e-low","disney-train-e2e-high"]',
        "--wait", "--timeout", "3m",
    )  # fmt: skip
    kube.kubectl("-n", RELEASE_NS, "rollout", "status", "deploy/disney-train", "--timeout=120s")
    yield
