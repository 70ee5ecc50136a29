"""The operator's own settings: defaults for the RayJobs it builds, and its timing.

Read from `DISNEY_OPERATOR_*` environment variables (the chart sets them); structured values are JSON.
"""

from __future__ import annotations

import json
import os
from typing import Any, Literal, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from disney_train import __version__

# The Ray of the trainer image (constraints.txt pins it; a test checks they agree).
RAY_VERSION = "2.60.0"

# Spot/preemptible node labels of the common clouds and Karpenter. A Ray head lost takes the whole
# RayJob with it (KubeRay does not recover training from head loss), so it avoids such nodes: each
# NotIn/DoesNotExist also matches nodes without the label.
ON_DEMAND_AFFINITY: dict[str, Any] = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {
                    "matchExpressions": [
                        {"key": "karpenter.sh/capacity-type", "operator": "NotIn", "values": ["spot"]},
                        {"key": "eks.amazonaws.com/capacityType", "operator": "NotIn", "values": ["SPOT"]},
                        {"key": "cloud.google.com/gke-spot", "operator": "DoesNotExist"},
                        {"key": "cloud.google.com/gke-preemptible", "operator": "DoesNotExist"},
                        {"key": "kubernetes.azure.com/scalesetpriority", "operator": "NotIn", "values": ["spot"]},
                    ]
                }
            ]
        }
    }
}

GPU_TOLERATIONS: list[dict[str, Any]] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str = Field(
        default=f"ghcr.io/disney-train/trainer:{__version__}", description="Trainer image (spec.image wins)."
    )
    ray_version: str = RAY_VERSION
    field_manager: str = "disney-train-operator"
    resync_seconds: float = Field(default=30.0, gt=0, description="Every VideoFineTune is reconciled this often.")
    progress_seconds: float = Field(default=30.0, ge=0, description="How often a running run's progress is read.")
    progress_endpoints: list[str] = Field(
        default=["aws"],
        max_length=64,
        description='S3 endpoints the operator may read progress from, with the VideoFineTune\'s own Secret ("aws" '
        'for AWS itself, "*" for any). The endpoint is the tenant\'s choice: the operator reads nowhere else.',
    )
    cluster_ttl_seconds: int = Field(
        default=60, ge=0, description="KubeRay keeps a finished run's Ray cluster this long (for its logs)."
    )
    trainer_uid: int = Field(
        default=1000,
        ge=1,
        le=2147483647,
        description="The trainer image's non-root user (and group) the Ray pods run as.",
    )
    image_pull_secrets: list[str] = Field(
        default_factory=list, description="Secrets (in each job's namespace) the Ray pods pull the trainer image with."
    )
    allowed_priority_classes: list[str] = Field(
        default_factory=list,
        description="PriorityClasses a VideoFineTune may name; any other is refused (none by default), so that "
        "no tenant preempts another's pods by choosing a class.",
    )
    default_queues: dict[str, str] = Field(
        default_factory=dict,
        description='Kueue LocalQueues by namespace ("*": any other) for VideoFineTunes that name none in '
        "spec.queueName: on a cluster whose GPUs are all queued, no tenant runs outside a queue by leaving it out.",
    )
    gpu_device: Literal["cuda", "cpu"] = Field(
        default="cuda",
        description="What GPU workers train on: cuda; cpu only where the GPUs are stand-ins (a test cluster "
        "advertising nvidia.com/gpu as an extended resource), so that quotas and placement are real and the "
        "training runs on the CPU.",
    )
    network_policies: bool = Field(
        default=False,
        description="A NetworkPolicy per run: its Ray pods admit only each other, KubeRay's submitter and operator "
        "on the job API, and metrics_peers on the metrics ports (the chart turns it on).",
    )
    kuberay_peer: dict[str, Any] = Field(
        default_factory=lambda: {
            "namespaceSelector": {},
            "podSelector": {"matchLabels": {"app.kubernetes.io/component": "kuberay-operator"}},
        },
        description="KubeRay's operator as a NetworkPolicy peer (it asks a run's job API for the job's state).",
    )
    metrics_peers: list[dict[str, Any]] = Field(
        default_factory=lambda: [{"namespaceSelector": {}}],
        description="NetworkPolicy peers that may scrape the workers' metrics ports (Prometheus).",
    )
    worker_node_selector: dict[str, str] = Field(default_factory=dict)
    worker_tolerations: list[dict[str, Any]] = Field(default_factory=lambda: list(GPU_TOLERATIONS))
    head_node_selector: dict[str, str] = Field(default_factory=dict)
    head_affinity: dict[str, Any] = Field(default_factory=lambda: dict(ON_DEMAND_AFFINITY))
    metrics_port: int = Field(default=8000, ge=0, le=65535, description="Prometheus metrics port (0: none).")
    metrics_address: str = Field(default="0.0.0.0", description="Address the metrics are served on.")
    chaos: str | None = Field(
        default=None, description="Failure drill: exit-after:<step> makes the process exit right after that step."
    )


PREFIX = "DISNEY_OPERATOR_"


def settings_from_env(env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ) if env is None else env
    values: dict[str, Any] = {}
    for name, field in Settings.model_fields.items():
        raw = env.get(PREFIX + name.upper())
        if raw is None:
            continue
        plain = field.annotation in (str, float, int, str | None) or get_origin(field.annotation) is Literal
        structured = not plain
        try:
            values[name] = json.loads(raw) if structured else raw
        except json.JSONDecodeError as err:
            raise ValueError(f"{PREFIX}{name.upper()}: not JSON ({err.msg} at {err.pos})") from None
    try:
        return Settings.model_validate(values)
    except ValidationError as err:
        problems = "; ".join(f"{PREFIX}{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in err.errors())
        raise ValueError(f"invalid operator settings: {problems}") from None
