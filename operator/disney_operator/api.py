"""The VideoFineTune API (`disneytrain.dev/v1alpha1`): spec and status as pydantic models.

The CRD's OpenAPI schema is generated from these models (`crd.py`). Kubernetes-style camelCase
fields, except `training` and `evaluation`: they are the run configuration's own sections
(`disney_train.config.TrainingSpec` and `EvaluationConfig`, snake_case, the same YAML a local
`disney-train train --config` reads), so one model serves the CLI, the operator and the workers.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from disney_train.config import (
    EXPERT_DESCRIPTION,
    FAMILY_DESCRIPTION,
    VARIANT_DESCRIPTION,
    EvaluationConfig,
    Expert,
    Family,
    TrainingSpec,
    Variant,
)

GROUP = "disneytrain.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "VideoFineTune"
PLURAL = "videofinetunes"
SINGULAR = "videofinetune"
SHORT_NAMES = ["vft"]

# A VideoFineTune's name names its RayJobs `<name>-<attempt>-<hash5>`, and KubeRay refuses RayJob
# names over 47 characters or that are not DNS-1035 labels (its RayCluster adds 6 more).
MAX_NAME_LENGTH = 36
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"

S3_URI_PATTERN = r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/\S*)?$"
S3Uri = Annotated[str, Field(pattern=S3_URI_PATTERN, max_length=1024)]
# Kubernetes' resource.Quantity, as its OpenAPI schema writes it
QUANTITY_PATTERN = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
Quantity = Annotated[str, Field(pattern=QUANTITY_PATTERN, max_length=64)]
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
ShortText = Annotated[str, Field(max_length=253)]


def cel(*rules: tuple[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in rules]}


class _Api(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Status(BaseModel):
    """What the operator writes: read back tolerantly (a newer operator may have written more)."""

    model_config = ConfigDict(extra="ignore")


class ModelRef(_Api):
    model_config = ConfigDict(
        json_schema_extra=cel(
            ("self.family == 'wan' || !has(self.expert)", "model.expert: only a Wan 2.2 model (family wan) has experts")
        )
    )

    uri: S3Uri = Field(description="The base model in the diffusers layout, e.g. s3://models/CogVideoX-2b.")
    family: Family = Field(default="cogvideox", description=FAMILY_DESCRIPTION)
    variant: Variant = Field(default="t2v", description=VARIANT_DESCRIPTION)
    expert: Expert | None = Field(default=None, description=EXPERT_DESCRIPTION)


class DatasetRef(_Api):
    uri: S3Uri = Field(description="A packed dataset: the prefix holding manifest.json (`disney-train data pack`).")


class OutputRef(_Api):
    uri: S3Uri = Field(
        description="Where runs go: checkpoints, the final LoRA and validation videos under <uri>/<metadata.name>/."
    )


class WorkerResources(_Api):
    gpus: int = Field(
        default=1, ge=0, le=16, description="GPUs per worker pod, one Ray Train worker each; 0: CPU workers."
    )
    cpu: Quantity = Field(default="8", description="CPU per worker pod (request and limit).")
    memory: Quantity = Field(default="64Gi", description="Memory per worker pod (request and limit).")
    sharedMemory: Quantity = Field(
        default="16Gi", description="Size of /dev/shm (decoded clips travel through it; NCCL uses it)."
    )
    gpuResource: ShortText = Field(
        default="nvidia.com/gpu", description="The extended resource that counts GPUs on the nodes."
    )


class Workers(_Api):
    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "!has(self.minReplicas) || self.minReplicas <= self.replicas",
                "workers.minReplicas must not exceed workers.replicas",
            ),
            (
                "!has(self.maxReplicas) || self.replicas <= self.maxReplicas",
                "workers.replicas must not exceed workers.maxReplicas (raise maxReplicas to scale further)",
            ),
        )
    )

    replicas: int = Field(default=1, ge=1, le=1024, description="Worker pods now; `kubectl scale` sets it.")
    minReplicas: int | None = Field(
        default=None, ge=1, le=1024, description="Elastic: training goes on while at least this many pods run."
    )
    maxReplicas: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="Elastic: the most pods the run may scale to without a restart. Without it a scale "
        "restarts the run from its latest checkpoint at the new size.",
    )
    resources: WorkerResources = Field(default_factory=WorkerResources)
    maxFailures: int = Field(
        default=3, ge=0, le=1000, description="Worker-group restarts inside one attempt (Ray Train) before it fails."
    )


class Toleration(_Api):
    key: ShortText | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: ShortText | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    tolerationSeconds: int | None = None


class Placement(_Api):
    """Where pods go. Unset fields take the operator's defaults (GPU node pool for workers, on-demand
    nodes for the Ray head)."""

    nodeSelector: dict[str, str] | None = Field(default=None, description="Node labels the pods require.")
    tolerations: list[Toleration] | None = Field(default=None, description="Taints the pods tolerate.")
    affinity: dict[str, Any] | None = Field(default=None, description="A core/v1 Affinity.")
    priorityClassName: ShortText | None = Field(default=None, description="PriorityClass of the pods.")


class HeadResources(_Api):
    cpu: Quantity = Field(default="4", description="CPU of the Ray head (it trains nothing).")
    memory: Quantity = Field(default="16Gi", description="Memory of the Ray head.")


class Head(_Api):
    resources: HeadResources = Field(default_factory=HeadResources)
    placement: Placement = Field(default_factory=Placement)


class S3Credentials(_Api):
    """A Secret in the VideoFineTune's namespace; its keys become the pods' AWS_* variables."""

    secretName: str = Field(pattern=DNS_SUBDOMAIN, max_length=253, description="Name of the Secret.")
    accessKeyIdKey: ShortText = Field(default="AWS_ACCESS_KEY_ID", description="Key holding the access key id.")
    secretAccessKeyKey: ShortText = Field(
        default="AWS_SECRET_ACCESS_KEY", description="Key holding the secret access key."
    )


class VideoFineTuneSpec(_Api):
    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "self.model.variant != 'i2v' || "
                "size(self.training.validation.prompts) == size(self.training.validation.images)",
                "training.validation: an image-to-video run needs one image per prompt",
            ),
            (
                "self.model.variant != 'i2v' || !has(self.evaluation) || "
                "size(self.evaluation.prompts) == size(self.evaluation.images)",
                "evaluation: an image-to-video run needs one image per prompt",
            ),
            (
                "self.model.variant == 'i2v' || !has(self.evaluation) || size(self.evaluation.images) == 0",
                "evaluation.images: a text-to-video run takes no images",
            ),
            # each family's frame counts (the fields themselves check 4N+1)
            (
                "self.model.family != 'cogvideox' || (self.training.data.num_frames - 1) % 8 == 0",
                "training.data.num_frames: a cogvideox model takes 8N+1 frames",
            ),
            (
                "self.model.family != 'cogvideox' || !has(self.training.validation.num_frames) || "
                "(self.training.validation.num_frames - 1) % 8 == 0",
                "training.validation.num_frames: a cogvideox model takes 8N+1 frames",
            ),
            (
                "self.model.family != 'cogvideox' || !has(self.evaluation) || !has(self.evaluation.num_frames) || "
                "(self.evaluation.num_frames - 1) % 8 == 0",
                "evaluation.num_frames: a cogvideox model takes 8N+1 frames",
            ),
            # what the Ray pods read has to be on S3: a local path would be someone's disk, or nothing
            (
                "self.training.validation.images.all(u, u.startsWith('s3://'))",
                "training.validation.images: s3:// URIs only (the Ray pods cannot read local paths)",
            ),
            (
                "!has(self.training.train.cache_uri) || self.training.train.cache_uri.startsWith('s3://')",
                "training.train.cache_uri: an s3:// URI (the Ray pods cannot share a local path)",
            ),
            (
                "!has(self.evaluation) || (self.evaluation.clip_uri.startsWith('s3://') && "
                "self.evaluation.images.all(u, u.startsWith('s3://')))",
                "evaluation.clip_uri and evaluation.images: s3:// URIs only (the Ray pods cannot read local paths)",
            ),
        )
    )

    model: ModelRef
    dataset: DatasetRef
    output: OutputRef
    training: TrainingSpec = Field(
        default_factory=TrainingSpec,
        description="The run's recipe: the sections of a disney-train run configuration "
        "(seed, data, lora, optim, train, validation, s3).",
    )
    evaluation: EvaluationConfig | None = Field(
        default=None,
        description="Baseline versus fine-tuned, measured when training ends: the `evaluation` section of a "
        "disney-train run configuration (snake_case). The RayJob then runs `disney-train eval` after training "
        "and the headline figures appear in status.evaluation; the report goes to <output.uri>/<name>/eval/. "
        "The CLIP model and any images must be on S3. Unset: no evaluation.",
    )
    workers: Workers = Field(default_factory=Workers)
    placement: Placement = Field(default_factory=Placement, description="Worker pod placement.")
    head: Head = Field(default_factory=Head)
    image: ShortText | None = Field(default=None, description="Trainer image (default: the operator's).")
    s3Credentials: S3Credentials | None = Field(
        default=None,
        description="Secret with the S3 keys (default: the pods' own identity). The operator reads the run's "
        "progress for the status with it too: without one, the status shows none.",
    )
    queueName: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        max_length=63,
        description="A Kueue LocalQueue of this namespace: the run waits there until its quota admits all of its "
        "pods at once, and Kueue may preempt it for a higher-priority run (it resumes from its latest checkpoint "
        "when admitted again). Under a queue the run keeps the size it was admitted at: a `kubectl scale` is a "
        "new admission at the new size (a restart from the latest checkpoint). Unset: the operator's default "
        "queue for the namespace, if any; else no queue.",
    )
    suspend: bool = Field(default=False, description="Stop the Ray cluster, keep the run; false resumes it.")
    backoffLimit: int = Field(
        default=3, ge=0, le=100, description="Failed attempts retried from the latest checkpoint before Failed."
    )
    ttlSecondsAfterFinished: int | None = Field(
        default=None, ge=0, description="Delete the VideoFineTune this long after it finished (data stays)."
    )


Phase = Literal["Pending", "Queued", "Running", "Suspended", "Succeeded", "Failed"]
TERMINAL: tuple[Phase, ...] = ("Succeeded", "Failed")
DateTime = Annotated[str, Field(json_schema_extra={"format": "date-time"})]


class Condition(_Status):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    lastTransitionTime: DateTime
    observedGeneration: int | None = None


class WorkersStatus(_Status):
    desired: int = Field(description="Worker pods asked for.")
    ready: int = Field(description="Worker pods ready (KubeRay's count).")
    summary: str = Field(description="ready/desired")


class RayJobRef(_Status):
    name: str
    deploymentStatus: str | None = None
    jobStatus: str | None = None
    clusterName: str | None = None
    message: str | None = None


class QueueStatus(_Status):
    """The run's place in Kueue, from the Workload Kueue made for its RayJob."""

    name: str = Field(description="The LocalQueue.")
    workload: str | None = Field(default=None, description="Kueue's Workload of the current RayJob.")
    clusterQueue: str | None = Field(default=None, description="The ClusterQueue that admitted it.")
    admitted: bool = Field(default=False, description="Kueue has admitted it: its quota is reserved.")
    admittedTime: DateTime | None = Field(default=None, description="When Kueue admitted it last.")
    reason: str | None = Field(default=None, description="Kueue's reason, while it waits.")
    message: str | None = Field(default=None, description="Kueue's words on why it waits.")
    positionInLocalQueue: int | None = Field(
        default=None, description="While it waits: its place in the LocalQueue (0: next), from Kueue's visibility API."
    )
    positionInClusterQueue: int | None = Field(
        default=None, description="While it waits: its place in the ClusterQueue."
    )
    preemptions: int = Field(default=0, description="Times Kueue preempted the current RayJob (its Workload's count).")
    lastPreemption: str | None = Field(default=None, description="Why Kueue preempted it last.")


class Progress(_Status):
    step: int | None = None
    epoch: int | None = None
    loss: float | None = None
    worldSize: int | None = None
    lastCheckpoint: str | None = None
    lastCheckpointTime: DateTime | None = None
    updated: DateTime | None = None


class EvaluationFigures(_Status):
    """One model's headline figures (`disney-train eval`; eval/eval.json has them all)."""

    promptFidelity: float | None = Field(
        default=None, description="CLIP text-frame cosine, averaged over the videos (higher: closer to the prompt)."
    )
    temporalConsistency: float | None = Field(
        default=None, description="CLIP cosine of adjacent frames (higher: steadier; 1: a still video)."
    )
    ssim: float | None = Field(
        default=None, description="SSIM of adjacent frames (higher: steadier; 1: a still video)."
    )
    styleDistance: float | None = Field(
        default=None,
        description="Frechet distance of the frames' CLIP embeddings to the training clips' (lower: closer in style).",
    )


class EvaluationStatus(_Status):
    """What the evaluation after training measured: where its report is, and the headline figures."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    report: str | None = Field(default=None, description="The HTML report (<run>/eval/report.html).")
    markdown: str | None = Field(default=None, description="The same report in Markdown.")
    json_uri: str | None = Field(default=None, alias="json", description="Every figure (<run>/eval/eval.json).")
    baseline: EvaluationFigures | None = Field(default=None, description="The base model.")
    fineTuned: EvaluationFigures | None = Field(default=None, description="The base model with the run's LoRA.")
    videos: int | None = Field(default=None, description="Videos rendered, both models together.")
    truncatedPrompts: int | None = Field(
        default=None, description="Prompts longer than CLIP's token limit: only their start was scored."
    )
    created: DateTime | None = None


class VideoFineTuneStatus(_Status):
    phase: Phase | None = None
    observedGeneration: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    workers: WorkersStatus | None = None
    attempt: int = Field(default=1, description="The current attempt (1 + failed attempts retried).")
    lastFailure: str | None = Field(default=None, description="Why the last failed attempt failed.")
    rayJob: RayJobRef | None = None
    queue: QueueStatus | None = Field(default=None, description="Kueue's view of a run with a queue.")
    progress: Progress | None = None
    evaluation: EvaluationStatus | None = Field(default=None, description="The evaluation after training.")
    runUri: str | None = Field(default=None, description="Where the run's files are: <output.uri>/<name>.")
    startTime: DateTime | None = None
    completionTime: DateTime | None = None
    message: str | None = None
