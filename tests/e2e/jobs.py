"""What the e2e tests apply and read: the jobs (jobs/smoke.yaml as this CPU cluster runs it), the cluster's
S3, the CLI as a user runs it, and the run's state as kubectl and S3 show it."""

from __future__ import annotations

import json
import os
import subprocess
from functools import cache
from typing import Any

import boto3
import pytest
import yaml

from disney_operator.rayjob import CONFIG_FILE
from disney_train.config import RunConfig, config_from_dict
from disney_train.runs import RunFiles
from disney_train.train.checkpoint import CheckpointStore
from tests.support.cluster import ROOT, Kube

RELEASE_NS = "disney-train"
JOBS_NS = "training"
BUCKET = "disney-train"
SMOKE = "disney-train-smoke"
CLI = str(ROOT / ".venv" / "bin" / "disney-train")


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


def clear(s3: dict[str, str], prefix: str) -> None:
    """A run's prefix emptied, so that a test's run starts from nothing (a finished run is not trained again)."""
    for key in keys(s3, prefix):
        bucket(s3).delete_object(Bucket=BUCKET, Key=key)


def cli(s3: dict[str, str], *args: str) -> str:
    """The disney-train CLI on this host, with the cluster's S3 in its environment as a user sets it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | s3
    proc = subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"disney-train {' '.join(args)} failed: {proc.stderr[-2000:]}"
    return proc.stdout


def smoke_job(s3: dict[str, str], name: str = SMOKE) -> dict[str, Any]:
    """jobs/smoke.yaml as a CPU cluster runs it. What differs: CPU workers (no GPU here) at fp32, placed on
    the GPU pool's node by the job's own placement, resources that fit this 2-core machine, and the S3
    endpoint of the cluster's SeaweedFS."""
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


def apply(kube: Kube, job: dict[str, Any]) -> None:
    kube.kubectl("-n", JOBS_NS, "apply", "-f", "-", stdin=yaml.safe_dump(job))


def vft(kube: Kube, name: str) -> dict[str, Any]:
    out: dict[str, Any] = kube.get("vft", name, JOBS_NS)
    return out


def phase_is(kube: Kube, name: str, *phases: str) -> dict[str, Any] | None:
    """The VideoFineTune when its phase is one of `phases`; a Failed one not asked for fails the test."""
    obj = vft(kube, name)
    phase = obj.get("status", {}).get("phase")
    if phase == "Failed" and "Failed" not in phases:
        raise AssertionError(f"{name} failed: {yaml.safe_dump(obj.get('status'))}")
    return obj if phase in phases else None


def progress(kube: Kube, name: str) -> dict[str, Any]:
    """status.progress as the operator read it from the run's progress.json (empty before the first)."""
    out: dict[str, Any] = phase_is(kube, name, "Pending", "Running", "Suspended", "Succeeded") or {}
    return dict(out.get("status", {}).get("progress") or {})


def ray_pods(kube: Kube, name: str, role: str = "", terminating: bool = False) -> list[dict[str, Any]]:
    """The run's Ray pods (its RayCluster's head and workers) by the operator's labels: live ones only, or
    with `terminating` those being deleted too (their processes run on until they exit or are killed)."""
    selector = f"disneytrain.dev/videofinetune={name}" + (f",disneytrain.dev/role={role}" if role else "")
    pods = kube.items("pods", JOBS_NS, selector)
    return [p for p in pods if terminating or "deletionTimestamp" not in p["metadata"]]


def rayjob_config(kube: Kube, name: str) -> dict[str, Any]:
    """The run configuration of the run's newest RayJob, as its head reads it: the ConfigMap of its name."""
    rayjobs = kube.items("rayjobs", JOBS_NS, f"disneytrain.dev/videofinetune={name}")
    newest = max(rayjobs, key=lambda r: int(r["metadata"]["labels"]["disneytrain.dev/attempt"]))
    config_map = json.loads(
        kube.kubectl("-n", JOBS_NS, "get", "configmap", newest["metadata"]["name"], "-o", "json").stdout
    )
    out: dict[str, Any] = yaml.safe_load(config_map["data"][CONFIG_FILE])
    return out


def checkpoints(
    kube: Kube, s3: dict[str, str], name: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[RunConfig, CheckpointStore]:
    """The run's configuration as its newest RayJob has it, and its checkpoints in S3 read with the cluster's keys."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(var, s3[var])
    cfg = config_from_dict(rayjob_config(kube, name), f"RayJob of {name}")
    return cfg, CheckpointStore(RunFiles(cfg).store, cfg.train.keep_checkpoints)


def dump(kube: Kube, name: str) -> str:
    """What to read when a wait fails: the VideoFineTune's status and its pods."""
    status = json.dumps(vft(kube, name).get("status"), indent=1)[-3000:]
    pods = kube.kubectl("-n", JOBS_NS, "get", "pods", "-o", "wide", check=False).stdout
    return f"status: {status}\npods:\n{pods}"
