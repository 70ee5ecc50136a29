"""Desired state, as pure functions: the RayJob a VideoFineTune runs as, and the run configuration in it.

RayJob `<name>-<attempt>-<hash5>`: `hash5` digests the parts of the spec whose change needs a new Ray
cluster (everything but suspend, retry and clean-up settings, and the replicas of an elastic run,
which are scaled in place). So the name is a function of (spec, attempt): an operator restarted
halfway through re-derives the same name and creates nothing twice, and a changed spec or a new
attempt gets a new RayJob that resumes from the run's latest checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import yaml
from kubernetes.utils import parse_quantity

from disney_operator import api
from disney_operator.settings import Settings
from disney_train.config import ConfigError, RunConfig, config_from_dict, dump_config
from disney_train.storage import is_s3

RAY_GROUP = "ray.io"
RAY_VERSION = "v1"
RAYJOBS = "rayjobs"
RAYCLUSTERS = "rayclusters"
WORKER_GROUP = "workers"
# The run configuration reaches the job's driver (on the head) as a file of a ConfigMap the operator owns,
# never on a command line: KubeRay's submitter pastes the entrypoint and the runtime environment into its
# own `bash -c` line (Go-quoted, so `$`, backticks and `$(...)` stay live), and a tenant writes prompts.
# What that line holds is the operator's constants only.
CONFIG_DIR = "/etc/disney-train/run"
CONFIG_FILE = "run.yaml"
CONFIG_VOLUME = "run-config"
ENTRYPOINT = f"disney-train train --config {CONFIG_DIR}/{CONFIG_FILE}"
# With an evaluation block: baseline versus fine-tuned once training is done (also when a retried attempt
# finds the training done). One command, no shell operators: after `ray job submit ... --` a `&&` would
# split it.
EVAL_ENTRYPOINT = f"{ENTRYPOINT} --evaluate"
DASHBOARD_PORT = 8265  # the job API: KubeRay's submitter and operator ask it, with the run's token
# How often Ray Train looks for room to grow an elastic run's group (a read of the cluster's resources):
# Ray's 60 s would be most of a `kubectl scale`'s latency once the new pod is up.
RESIZE_CHECK_SECONDS = 5  # a cluster-resources read: cheap next to a worker that waits

# Kueue: the LocalQueue label it admits RayJobs by (a RayJob with it is created suspended; Kueue unsuspends it
# once its quota admits all of its pods, and suspends it again to preempt it)
LABEL_QUEUE = "kueue.x-k8s.io/queue-name"

LABEL_NAME = "app.kubernetes.io/name"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_VFT = f"{api.GROUP}/videofinetune"
LABEL_ATTEMPT = f"{api.GROUP}/attempt"
LABEL_ROLE = f"{api.GROUP}/role"
ANNOTATION_TEMPLATE = f"{api.GROUP}/template-hash"
MANAGED_BY = "disney-train-operator"


class SpecError(ValueError):
    """A spec the API server accepted but no RayJob can be built from; the message says why."""


MAX_POD_CPUS = 4096  # more than any node has


def cpu_cores(quantity: str) -> float:
    """A Kubernetes CPU quantity in cores ("8", "7500m", "0.5"), parsed as the Kubernetes client does; one
    that is not a positive number of cores a node could have is refused by name."""
    try:
        cores = parse_quantity(quantity)
    except (ValueError, ArithmeticError):
        cores = None
    if cores is None or not 0 < cores <= MAX_POD_CPUS:
        raise SpecError(
            f"workers.resources.cpu: {quantity!r} is not a CPU quantity between 1m and {MAX_POD_CPUS} (e.g. 8 or 7500m)"
        )
    return float(cores)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def with_queue(spec: api.VideoFineTuneSpec, namespace: str, settings: Settings) -> api.VideoFineTuneSpec:
    """The spec with its queue: its own queueName, else the operator's default for the namespace (or "*")."""
    if spec.queueName is not None:
        return spec
    default = settings.default_queues.get(namespace) or settings.default_queues.get("*")
    return spec.model_copy(update={"queueName": default}) if default else spec


def is_elastic(spec: api.VideoFineTuneSpec) -> bool:
    """With maxReplicas the run scales in place between its bounds; without, a scale restarts it. Under a
    queue it keeps the size Kueue admitted: Kueue admits a RayJob whole and refuses Ray's autoscaler (v0.17
    allows it only with the alpha ElasticJobsViaWorkloadSlices gate, and then gates no grown pod of a RayJob),
    so there a scale is a new admission at the new size."""
    return spec.workers.maxReplicas is not None and spec.queueName is None


# Fields that came after runs existed, and their value before: at that value they are left out of the
# digest, so a run's RayJob keeps its name when the operator is upgraded (a new name is a new RayJob)
LATER_FIELDS: dict[tuple[str, ...], Any] = {
    ("queueName",): None,
    ("model", "family"): "cogvideox",
    ("model", "expert"): None,
}


def spec_hash(spec: api.VideoFineTuneSpec) -> str:
    relevant = spec.model_dump(mode="json", exclude={"suspend", "backoffLimit", "ttlSecondsAfterFinished"})
    for (*parents, key), before in LATER_FIELDS.items():
        node = relevant
        for parent in parents:
            node = node[parent]
        if node.get(key) == before:
            del node[key]
    if is_elastic(spec):
        del relevant["workers"]["replicas"]
    return _digest(relevant)


def rayjob_name(name: str, spec: api.VideoFineTuneSpec, attempt: int) -> str:
    return f"{name}-{attempt}-{spec_hash(spec)[:5]}"


@dataclass(frozen=True)
class RayTrainRange:
    """Ray Train workers (one per GPU) and the worker pods of the Ray cluster."""

    per_pod: int
    train_min: int
    train_max: int
    group_min: int
    group_max: int


def worker_range(spec: api.VideoFineTuneSpec) -> RayTrainRange:
    w = spec.workers
    per_pod = max(w.resources.gpus, 1)
    if is_elastic(spec):
        lo, hi = w.minReplicas or 1, w.maxReplicas or w.replicas
    else:
        lo, hi = w.minReplicas or w.replicas, w.replicas
    # The group's cap is the replicas asked for: Ray Train asks for `hi` and the autoscaler grows the
    # group into the pool up to the cap; `kubectl scale` moves the cap.
    return RayTrainRange(per_pod, lo * per_pod, hi * per_pod, lo, w.replicas)


def _check_cluster_uris(spec: api.VideoFineTuneSpec) -> None:
    """What the Ray pods read has to be on S3, not on someone's disk (the CRD's rules say the same at
    admission; this holds for objects stored before them)."""
    t, e = spec.training, spec.evaluation
    named = [(f"training.validation.images[{i}]", u) for i, u in enumerate(t.validation.images)]
    if t.train.cache_uri is not None:
        named.append(("training.train.cache_uri", t.train.cache_uri))
    if e is not None:
        named.append(("evaluation.clip_uri", e.clip_uri))
        named += [(f"evaluation.images[{i}]", u) for i, u in enumerate(e.images)]
    for field, uri in named:
        if not is_s3(uri):
            raise SpecError(
                f"{field} {uri!r} is not an s3:// URI: the Ray pods cannot read local paths (copy it to S3)"
            )


def owner_of(meta: dict[str, Any]) -> str:
    """The run's owner record: namespace, name and uid of its VideoFineTune (one of the same name in another
    namespace is another owner; one deleted and made again in the same namespace adopts the run)."""
    return f"{meta['namespace']}/{meta['name']}/{meta['uid']}"


def run_config(name: str, spec: api.VideoFineTuneSpec, owner: str | None = None, gpu_device: str = "cuda") -> RunConfig:
    """The run configuration the workers train with: the spec's recipe, its places, its worker range, and the
    evaluation after training (if any). GPU workers train on `gpu_device` (the operator's setting)."""
    res = spec.workers.resources
    rng = worker_range(spec)
    cpus = math.floor(cpu_cores(res.cpu) / rng.per_pod)
    if cpus < 1:
        raise SpecError(
            f"workers.resources.cpu {res.cpu} gives each of a pod's {rng.per_pod} Ray Train worker(s) less than one CPU"
        )
    workers: dict[str, Any] = {
        "replicas": rng.train_max,
        "device": gpu_device if res.gpus else "cpu",
        "cpus_per_worker": cpus,
        "max_failures": spec.workers.maxFailures,
    }
    if rng.train_min != rng.train_max:
        workers |= {
            "min_replicas": rng.train_min,
            "max_replicas": rng.train_max,
            "resize_check_seconds": RESIZE_CHECK_SECONDS,
        }
    _check_cluster_uris(spec)
    recipe = spec.training.model_dump(mode="json")
    data = {**recipe.pop("data"), "uri": spec.dataset.uri}
    train = {**recipe.pop("train"), "workers": workers}
    raw = {
        **recipe,
        "name": name,
        "model": spec.model.model_dump(mode="json"),
        "data": data,
        "output": {**spec.output.model_dump(mode="json"), "owner": owner},
        "train": train,
    }
    if spec.evaluation is not None:
        raw["evaluation"] = spec.evaluation.model_dump(mode="json")
    try:
        return config_from_dict(raw, f"VideoFineTune {name}")
    except ConfigError as err:
        raise SpecError(str(err)) from None


def _pod_env(spec: api.VideoFineTuneSpec) -> list[dict[str, Any]]:
    """S3 keys only as references to the Secret: never a value in the RayJob."""
    creds = spec.s3Credentials
    if creds is None:
        return []
    return [
        {"name": var, "valueFrom": {"secretKeyRef": {"name": creds.secretName, "key": key}}}
        for var, key in (
            ("AWS_ACCESS_KEY_ID", creds.accessKeyIdKey),
            ("AWS_SECRET_ACCESS_KEY", creds.secretAccessKeyKey),
        )
    ]


def _check_priority_classes(spec: api.VideoFineTuneSpec, allowed: list[str]) -> None:
    """A PriorityClass decides whose pods are preempted: only the classes the platform team allows."""
    for field, p in (("placement", spec.placement), ("head.placement", spec.head.placement)):
        if p.priorityClassName and p.priorityClassName not in allowed:
            offer = (
                f"one of {', '.join(allowed)}" if allowed else "none (the chart's jobDefaults.allowedPriorityClasses)"
            )
            raise SpecError(f"{field}.priorityClassName {p.priorityClassName!r} is not allowed here: {offer}")


def _placement(
    p: api.Placement, node_selector: dict[str, str], tolerations: list[dict[str, Any]], affinity: dict[str, Any] | None
) -> dict[str, Any]:
    """A pod's placement: each field the spec sets, else the operator's default for it."""
    out: dict[str, Any] = {}
    selector = p.nodeSelector if p.nodeSelector is not None else node_selector
    tols = [t.model_dump(exclude_none=True) for t in p.tolerations] if p.tolerations is not None else tolerations
    aff = p.affinity if p.affinity is not None else affinity
    if selector:
        out["nodeSelector"] = dict(selector)
    if tols:
        out["tolerations"] = tols
    if aff:
        out["affinity"] = aff
    if p.priorityClassName:
        out["priorityClassName"] = p.priorityClassName
    return out


def _locked_down(pod: dict[str, Any], uid: int) -> dict[str, Any]:
    """A Ray pod as the restricted Pod Security Standard asks: the trainer image's own non-root user, the
    runtime's default seccomp profile, no privilege escalation, no capabilities."""
    pod["securityContext"] = {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    for container in pod["containers"]:
        container["securityContext"] = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    return pod


def labels(name: str, attempt: int) -> dict[str, str]:
    return {
        LABEL_NAME: "disney-train",
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_VFT: name,
        LABEL_ATTEMPT: str(attempt),
    }


@dataclass(frozen=True)
class Desired:
    """What a VideoFineTune's attempt runs as: its RayJob, the ConfigMap its head mounts (the run
    configuration) and, with settings.network_policies, its NetworkPolicy; all three of one name."""

    rayjob: dict[str, Any]
    config_map: dict[str, Any]
    network_policy: dict[str, Any] | None


def desired(vft: dict[str, Any], spec: api.VideoFineTuneSpec, attempt: int, settings: Settings) -> Desired:
    """(RayJob, ConfigMap, NetworkPolicy) = f(VideoFineTune, attempt, operator settings); the run
    configuration and the name made once."""
    meta = vft["metadata"]
    spec = with_queue(spec, meta["namespace"], settings)
    _check_priority_classes(spec, settings.allowed_priority_classes)
    cfg = run_config(meta["name"], spec, owner_of(meta), settings.gpu_device)
    job = rayjob_name(meta["name"], spec, attempt)
    policy = _network_policy(meta, spec, attempt, settings, cfg, job) if settings.network_policies else None
    return Desired(_rayjob(vft, spec, attempt, settings, cfg, job), _config_map(meta, attempt, cfg, job), policy)


def desired_rayjob(
    vft: dict[str, Any], spec: api.VideoFineTuneSpec, attempt: int, settings: Settings
) -> dict[str, Any]:
    return desired(vft, spec, attempt, settings).rayjob


def _rayjob(
    vft: dict[str, Any], spec: api.VideoFineTuneSpec, attempt: int, settings: Settings, cfg: RunConfig, job: str
) -> dict[str, Any]:
    """The RayJob of one attempt: its Ray cluster (`_cluster_spec`), the command that trains, owned by the
    VideoFineTune; annotated with the digest of what it was built from."""
    meta = vft["metadata"]
    queue = {LABEL_QUEUE: spec.queueName} if spec.queueName else {}
    body: dict[str, Any] = {
        "apiVersion": f"{RAY_GROUP}/{RAY_VERSION}",
        "kind": "RayJob",
        "metadata": {
            "name": job,
            "namespace": meta["namespace"],
            "labels": {**labels(meta["name"], attempt), **queue},
            "ownerReferences": _owned_by(meta),
        },
        "spec": {
            "entrypoint": ENTRYPOINT if cfg.evaluation is None else EVAL_ENTRYPOINT,
            "submissionMode": "K8sJobMode",
            "shutdownAfterJobFinishes": True,  # also what KubeRay requires to suspend a RayJob
            # a queued run's Ray cluster goes when the run ends: Kueue frees its quota then and admits the next
            # run into it, which a cluster kept for its logs would hold (seen on the test cluster: the next
            # run's workers Pending for the kept cluster's CPUs)
            "ttlSecondsAfterFinished": 0 if spec.queueName else settings.cluster_ttl_seconds,
            "backoffLimit": 0,  # retries are ours: each one a new RayJob resuming from the checkpoint
            # under a queue: created suspended, and Kueue alone unsuspends it (the user's suspend removes the
            # RayJob from the queue instead: reconcile)
            "suspend": spec.suspend or bool(queue),
            "rayClusterSpec": _cluster_spec(meta["name"], spec, attempt, settings, cfg, job),
        },
    }
    body["metadata"]["annotations"] = {ANNOTATION_TEMPLATE: _digest(body)[:16]}
    return body


def _cluster_spec(
    name: str, spec: api.VideoFineTuneSpec, attempt: int, settings: Settings, cfg: RunConfig, job: str
) -> dict[str, Any]:
    """The Ray cluster: a head that trains nothing, one worker group in the elastic range, token auth and
    the in-tree autoscaler (what `kubectl scale` moves; under a queue none: the group is the size admitted)."""
    rng = worker_range(spec)
    gpus = spec.workers.resources.gpus
    common = labels(name, attempt)
    env = _pod_env(spec)
    head_pod, worker_pod = _head_pod(spec, settings, job, env), _worker_pod(spec, settings, cfg, env, rng.per_pod)
    if settings.image_pull_secrets:
        pulls = [{"name": secret} for secret in settings.image_pull_secrets]
        head_pod["imagePullSecrets"] = worker_pod["imagePullSecrets"] = pulls
    scaling: dict[str, Any] = {
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {"version": "v2", "upscalingMode": "Default", "idleTimeoutSeconds": 60},
    }
    if spec.queueName:
        scaling = {"enableInTreeAutoscaling": False}
    return {
        "rayVersion": settings.ray_version,
        # Ray's token authentication (KubeRay >= 1.5.1, Ray >= 2.52): KubeRay makes a random token in a
        # Secret per Ray cluster and gives it to every Ray container and to its job submitter; a
        # request to the head's GCS, dashboard or job API without it is refused.
        "authOptions": {"mode": "token"},
        **scaling,
        "headGroupSpec": {
            # the head trains nothing: no CPUs for tasks, so Ray Train's workers land on GPU pods
            # the dashboard (the job API) on the pod's address: KubeRay's submitter and operator reach it
            # there, with the token
            "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
            "template": {"metadata": {"labels": {**common, LABEL_ROLE: "head"}}, "spec": head_pod},
        },
        "workerGroupSpecs": [
            {
                "groupName": WORKER_GROUP,
                "replicas": spec.workers.replicas,
                "minReplicas": rng.group_min,
                "maxReplicas": rng.group_max,
                # said outright: KubeRay only counts GPUs of resources named "*gpu" (not MIG slices)
                "rayStartParams": {"num-gpus": str(gpus)} if gpus else {},
                "template": {"metadata": {"labels": {**common, LABEL_ROLE: "worker"}}, "spec": worker_pod},
            }
        ],
    }


def _worker_pod(
    spec: api.VideoFineTuneSpec, settings: Settings, cfg: RunConfig, env: list[dict[str, Any]], per_pod: int
) -> dict[str, Any]:
    """A worker's pod: the trainer image with the resources asked (limits = requests), /dev/shm in memory,
    a metrics port per worker it holds, on the GPU pool when it has GPUs; locked down."""
    res = spec.workers.resources
    worker_resources: dict[str, str] = {"cpu": res.cpu, "memory": res.memory}
    if res.gpus:
        worker_resources[res.gpuResource] = str(res.gpus)
    pod: dict[str, Any] = {
        "restartPolicy": "Never",  # the Ray autoscaler (v2) replaces failed workers itself
        "automountServiceAccountToken": False,  # workers never talk to the API server
        "containers": [
            {
                "name": "ray-worker",
                "image": spec.image or settings.image,
                "resources": {"requests": worker_resources, "limits": worker_resources},
                "env": env,
                "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
                "ports": [
                    {"name": f"metrics-{i}", "containerPort": port}
                    for i, port in enumerate(_metrics_ports(cfg, per_pod))
                ],
            }
        ],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": res.sharedMemory}}],
        # the operator's GPU node pool defaults are for GPU workers; CPU workers go where the spec says
        **_placement(
            spec.placement,
            settings.worker_node_selector if res.gpus else {},
            settings.worker_tolerations if res.gpus else [],
            None,
        ),
    }
    _locked_down(pod, settings.trainer_uid)
    return pod


def _head_pod(spec: api.VideoFineTuneSpec, settings: Settings, job: str, env: list[dict[str, Any]]) -> dict[str, Any]:
    """The head's pod: the run's ConfigMap mounted, Ray's ports, on the head's pool; locked down."""
    # The head trains nothing (num-cpus 0): its CPU is a request, not a limit, since a limit only throttles
    # the GCS, the dashboard and the job's driver (a head held to a small request misses Ray's own start-up
    # timeouts, and KubeRay replaces it again and again). Its memory is capped as asked.
    head_res = {
        "requests": {"cpu": spec.head.resources.cpu, "memory": spec.head.resources.memory},
        "limits": {"memory": spec.head.resources.memory},
    }
    pod: dict[str, Any] = {
        "containers": [
            {
                "name": "ray-head",
                "image": spec.image or settings.image,
                "resources": head_res,
                "env": env,
                "volumeMounts": [{"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True}],
                "ports": [
                    {"name": "gcs", "containerPort": 6379},
                    {"name": "dashboard", "containerPort": DASHBOARD_PORT},
                    {"name": "client", "containerPort": 10001},
                ],
            }
        ],
        "volumes": [{"name": CONFIG_VOLUME, "configMap": {"name": job}}],
        **_placement(spec.head.placement, settings.head_node_selector, [], settings.head_affinity),
    }
    _locked_down(pod, settings.trainer_uid)  # (its token stays: the autoscaler beside it scales the group)
    return pod


def _owned_by(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The VideoFineTune as the controller owner: its deletion takes the object with it."""
    return [
        {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "name": meta["name"],
            "uid": meta["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def desired_config_map(
    vft: dict[str, Any], spec: api.VideoFineTuneSpec, attempt: int, settings: Settings | None = None
) -> dict[str, Any]:
    return desired(vft, spec, attempt, settings or Settings()).config_map


def _config_map(meta: dict[str, Any], attempt: int, cfg: RunConfig, job: str) -> dict[str, Any]:
    """The ConfigMap the RayJob's head mounts at CONFIG_DIR: the run configuration, named as the RayJob."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": job,
            "namespace": meta["namespace"],
            "labels": labels(meta["name"], attempt),
            "ownerReferences": _owned_by(meta),
        },
        "data": {CONFIG_FILE: dump_config(cfg)},
    }


def _network_policy(
    meta: dict[str, Any], spec: api.VideoFineTuneSpec, attempt: int, settings: Settings, cfg: RunConfig, job: str
) -> dict[str, Any]:
    """Who may reach the run's Ray pods (all its attempts): each other, on any port (GCS, raylets, object
    store, Ray Train's collectives); the RayJob's submitter pod (KubeRay names its Job as the RayJob) and
    KubeRay's operator on the job API; settings.metrics_peers on the metrics ports (the operator's: the run
    configuration's metrics section is not in a VideoFineTune). Nothing else, on a cluster whose network
    plugin enforces NetworkPolicies."""
    run = {"matchLabels": {LABEL_VFT: meta["name"]}}
    ingress: list[dict[str, Any]] = [
        {"from": [{"podSelector": run}]},
        {
            "from": [{"podSelector": {"matchLabels": {"batch.kubernetes.io/job-name": job}}}, settings.kuberay_peer],
            "ports": [{"protocol": "TCP", "port": DASHBOARD_PORT}],
        },
    ]
    ports = _metrics_ports(cfg, worker_range(spec).per_pod)
    if ports and settings.metrics_peers:
        ingress.append({"from": settings.metrics_peers, "ports": [{"protocol": "TCP", "port": p} for p in ports]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": job,
            "namespace": meta["namespace"],
            "labels": labels(meta["name"], attempt),
            "ownerReferences": _owned_by(meta),
        },
        "spec": {"podSelector": run, "policyTypes": ["Ingress"], "ingress": ingress},
    }


def _metrics_ports(cfg: RunConfig, per_pod: int) -> list[int]:
    """One Ray Train worker per GPU, each serving its metrics on metrics.port + local rank (none: port 0)."""
    return [cfg.metrics.port + i for i in range(per_pod)] if cfg.metrics.port else []


def run_config_of(config_map: dict[str, Any]) -> RunConfig:
    """The run configuration in a run's ConfigMap (what `disney-train train --config` reads on the head)."""
    text = config_map["data"][CONFIG_FILE]
    return config_from_dict(yaml.safe_load(text), f"ConfigMap {config_map['metadata']['name']}")
