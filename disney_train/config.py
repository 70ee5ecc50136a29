"""The one configuration object of a training run.

Loaded from YAML, shared by the CLI, the operator (which renders it into the RayJob) and the
training workers. It imports nothing heavier than pydantic and PyYAML so that the operator can use
it without torch. Credentials never live here: S3 keys come from the environment (or the
Kubernetes Secret mounted as environment variables).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from disney_train.errors import UserError

# Control characters (terminal escapes among them) and what YAML must escape: never in a prompt, a token
# or a URI (prompts may hold tabs and line breaks).
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
_BREAK = re.compile("[\t\n\r]")


def _text(v: str) -> str:
    bad = _CONTROL.search(v)
    if bad:
        raise ValueError(f"control character U+{ord(bad.group()):04X} at position {bad.start()}: text only")
    return v


def _one_line(v: str) -> str:
    bad = _BREAK.search(_text(v))
    if bad:
        raise ValueError(f"tab or line break at position {bad.start()}: one line only")
    return v


def _uri(v: str) -> str:
    """One line; an s3:// URI without '.' or '..' segments (its objects are copied under local folders)."""
    if v.startswith("s3://") and {".", ".."} & set(_one_line(v).removeprefix("s3://").split("/")):
        raise ValueError(f"{v!r}: '.' and '..' segments are not allowed in an s3:// URI")
    return _one_line(v)


URI_PATTERN = r"^(s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?|[^:]+)$"
Uri = Annotated[str, Field(min_length=1, max_length=1024, pattern=URI_PATTERN), AfterValidator(_uri)]
# Bounds on what a run configuration may hold, so that the largest valid one (every list full, every
# text at its longest, in the characters that take the most bytes) fits in the ConfigMap the operator
# hands a run's head (1 MiB): tests/test_security.py builds it. T5 reads 226 tokens of a prompt, about
# 1000 characters of English; longer text is cut there anyway.
PROMPT_CHARS = 1500
VALIDATION_PROMPTS = 16
EVALUATION_PROMPTS = 64
Prompt = Annotated[str, Field(max_length=PROMPT_CHARS), AfterValidator(_text)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class S3Options(_Section):
    """Where S3 is; not who you are (keys come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)."""

    endpoint_url: str | None = Field(
        default=None,
        max_length=1024,
        description="S3 endpoint, e.g. http://seaweedfs:8333; empty means AWS_ENDPOINT_URL or AWS.",
    )
    region: str = Field(default="us-east-1", max_length=64, description="S3 region name used for signing.")
    max_attempts: int = Field(default=8, ge=1, le=50, description="Attempts per S3 request on transient errors.")
    give_up_seconds: float = Field(
        default=300,
        ge=1,
        le=86400,
        description="An S3 request not done in this long, retries included, fails: an outage ends the run within "
        "about this (it resumes from its checkpoint when retried).",
    )
    stall_warn_seconds: float = Field(
        default=30,
        ge=1,
        le=3600,
        description="An S3 request waiting this long is warned about (the object, the wait so far), and again as "
        "long as it waits.",
    )


Variant = Literal["t2v", "i2v"]
VARIANT_DESCRIPTION = "Text-to-video or image-to-video."


Family = Literal["cogvideox", "wan"]
FAMILY_DESCRIPTION = "Model family: cogvideox (CogVideoX 1.0 and 1.5) or wan (Wan 2.1, Wan 2.2 A14B and TI2V-5B)."
Expert = Literal["high", "low"]
EXPERT_DESCRIPTION = (
    "Wan 2.2 A14B (two experts) only, and required there: which expert this run trains. high: `transformer`, "
    "the timesteps >= boundary_ratio x 1000; low: `transformer_2`, the rest. Each run draws its noise levels on "
    "its expert's side of the boundary, where the pipeline uses that expert; a LoRA for both is two runs."
)
# each family's frame counts are FRAME_MULTIPLE * N + 1 (its VAE compresses time by 4; CogVideoX 1.5 then patches by 2)
FRAME_MULTIPLE: dict[str, int] = {"cogvideox": 8, "wan": 4}


class ModelConfig(_Section):
    uri: Uri = Field(description="Model folder in the diffusers layout: a local path or s3://bucket/prefix.")
    family: Family = Field(default="cogvideox", description=FAMILY_DESCRIPTION)
    variant: Variant = Field(default="t2v", description=VARIANT_DESCRIPTION)
    expert: Expert | None = Field(default=None, description=EXPERT_DESCRIPTION)

    @model_validator(mode="after")
    def _expert_is_wans(self) -> ModelConfig:
        if self.expert is not None and self.family != "wan":
            raise ValueError(
                f"model.expert {self.expert!r}: only a Wan 2.2 model has experts (model.family is {self.family!r})"
            )
        return self


def _cel(rule: str, message: str) -> dict[str, Any]:
    """A Kubernetes CEL rule for the CRD generated from these models, beside the pydantic check it mirrors."""
    return {"x-kubernetes-validations": [{"rule": rule, "message": message}]}


_FRAMES_MSG = "must be 4N+1 (the VAE compresses time by 4); CogVideoX: 8N+1 (its latents are then patched by 2)"
_SIXTEEN_MSG = "must be a multiple of 16 (VAE factor 8 times patch size 2)"


def _four_n_plus_one(v: int) -> int:
    if (v - 1) % 4 != 0:
        raise ValueError(_FRAMES_MSG)
    return v


def _multiple_of_16(v: int) -> int:
    if v % 16 != 0:
        raise ValueError(_SIXTEEN_MSG)
    return v


# A frame count (1..1025, 4N+1; each family's own rule is RunConfig's and the CRD's) and a height or width
# (16..4096, a multiple of 16), as pydantic checks them;
# `_frames_field` and `_size_field` add the CRD's CEL rule for the same checks.
Frames = Annotated[int, Field(ge=1, le=1025), AfterValidator(_four_n_plus_one)]
Sixteen = Annotated[int, Field(ge=16, le=4096), AfterValidator(_multiple_of_16)]


def _frames_field(default: int | None, description: str) -> Any:
    return Field(
        default=default,
        description=description,
        json_schema_extra=_cel("(self - 1) % 4 == 0", f"num_frames {_FRAMES_MSG}"),
    )


def _size_field(name: str, default: int | None, description: str) -> Any:
    return Field(
        default=default, description=description, json_schema_extra=_cel("self % 16 == 0", f"{name} {_SIXTEEN_MSG}")
    )


class DataOptions(_Section):
    """How clips are sampled: everything about the data but where it is."""

    num_frames: Frames = _frames_field(49, "Frames per training clip; 4N+1 (Wan), 8N+1 (CogVideoX).")
    height: Sixteen = _size_field("height", 480, "Training height in pixels; multiple of 16.")
    width: Sixteen = _size_field("width", 720, "Training width in pixels; multiple of 16.")
    fps: float = Field(default=8.0, gt=0, le=120, description="Frame rate the clips are sampled at.")
    decode_workers: int = Field(default=2, ge=0, le=64, description="Worker processes decoding clips.")
    shuffle: bool = Field(default=True, description="Shuffle clips each epoch (deterministic per seed, epoch).")
    id_token: Annotated[str, AfterValidator(_one_line)] | None = Field(
        default=None, max_length=64, description="Optional token put before every prompt, joined with a space."
    )


class DataConfig(DataOptions):
    uri: Uri = Field(description="Packed dataset (the folder or s3:// prefix holding manifest.json).")


class LoraConfig(_Section):
    rank: int = Field(default=128, ge=1, le=1024, description="LoRA rank.")
    alpha: float = Field(default=64, gt=0, description="LoRA alpha (scale = alpha / rank).")
    target_modules: list[Annotated[str, Field(min_length=1, max_length=128), AfterValidator(_one_line)]] = Field(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"],
        min_length=1,
        max_length=64,
        description="Transformer modules that get LoRA adapters.",
    )


class OptimConfig(_Section):
    learning_rate: float = Field(default=1e-4, gt=0, le=1, description="Peak learning rate.")
    batch_size: int = Field(default=4, ge=1, le=1024, description="Clips per worker per step.")
    epochs: int = Field(default=30, ge=1, le=100_000, description="Passes over the dataset.")
    max_steps: int | None = Field(
        default=None, ge=1, description="Stop after this many optimizer steps (default: the epochs' worth)."
    )
    gradient_accumulation_steps: int = Field(default=1, ge=1, le=1024, description="Micro-batches per step.")
    warmup_steps: int = Field(default=0, ge=0, description="Linear learning-rate warm-up steps.")
    lr_schedule: Literal["constant", "cosine", "linear"] = Field(
        default="constant", description="Learning rate after warm-up."
    )
    weight_decay: float = Field(default=1e-4, ge=0, description="AdamW weight decay.")
    beta1: float = Field(default=0.9, gt=0, lt=1, description="AdamW beta1.")
    beta2: float = Field(default=0.95, gt=0, lt=1, description="AdamW beta2.")
    eps: float = Field(default=1e-8, gt=0, description="AdamW epsilon.")
    max_grad_norm: float = Field(default=1.0, ge=0, description="Gradient clipping norm (0: no clipping).")


class WorkersConfig(_Section):
    """How many Ray Train workers and what each gets. min/max make the run elastic."""

    replicas: int = Field(default=1, ge=1, le=1024, description="Workers (one per GPU on GPU nodes).")
    min_replicas: int | None = Field(default=None, ge=1, le=1024, description="Elastic lower bound.")
    max_replicas: int | None = Field(default=None, ge=1, le=1024, description="Elastic upper bound.")
    device: Literal["auto", "cuda", "cpu"] = Field(
        default="auto", description="auto: CUDA when the worker sees a GPU, else CPU."
    )
    cpus_per_worker: float = Field(default=1, gt=0, le=512, description="CPUs Ray reserves per worker.")
    max_failures: int = Field(default=3, ge=0, le=1000, description="Worker-group restarts before the run fails.")
    resize_check_seconds: float = Field(
        default=60, ge=1, le=3600, description="Elastic runs: how often Ray checks whether the group can grow."
    )

    @property
    def bounds(self) -> tuple[int, int]:
        """(fewest, most) workers: min/max_replicas, each defaulting to replicas."""
        return self.min_replicas or self.replicas, self.max_replicas or self.replicas

    @model_validator(mode="after")
    def _range(self) -> WorkersConfig:
        lo, hi = self.bounds
        if not lo <= self.replicas <= hi:
            raise ValueError(f"need min_replicas ({lo}) <= replicas ({self.replicas}) <= max_replicas ({hi})")
        return self


class TrainOptions(_Section):
    """The engine: DeepSpeed ZeRO, precision, reporting, checkpoints (the workers aside)."""

    zero_stage: Literal[1, 2, 3] = Field(default=2, description="DeepSpeed ZeRO stage.")
    offload_optimizer: bool = Field(default=False, description="ZeRO: keep optimizer states in CPU memory.")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        default="auto", description="auto: bf16 on GPU, fp32 on CPU (bf16 autocast on CPU is ~20x slower)."
    )
    gradient_checkpointing: bool = Field(default=True, description="Recompute activations in backward.")
    report_every: int = Field(
        default=10, ge=1, description="Steps per window of reported figures (log, progress.json, the history)."
    )
    checkpoint_every: int = Field(default=100, ge=1, description="Steps between checkpoints.")
    keep_checkpoints: int = Field(default=3, ge=1, le=1000, description="Committed checkpoints kept (last K).")
    use_cache: bool = Field(
        default=True, description="Train on cached VAE latents and T5 embeddings (built when missing)."
    )
    cache_uri: Uri | None = Field(default=None, description="Latent cache location (default: <data.uri>/cache).")
    image_noise: bool = Field(
        default=True,
        description="CogVideoX image-to-video: Gaussian noise on the conditioning image before it is encoded, "
        "sigma = exp(N(-3, 0.5)), as both reference trainers do (Wan I2V conditions on the clean frame, as its "
        "pipeline).",
    )
    image_noise_draws: int = Field(
        default=4,
        ge=1,
        le=32,
        description="CogVideoX image-to-video with the cache: noised encodings of the image kept per clip; each step "
        "draws one.",
    )
    image_dropout: float = Field(
        default=0.05, ge=0, le=1, description="CogVideoX image-to-video: the chance a step trains without the image."
    )


class TrainConfig(TrainOptions):
    workers: WorkersConfig = Field(default_factory=WorkersConfig)


class ValidationConfig(_Section):
    """Sample videos rendered during training for fixed prompts (and images for i2v)."""

    every: int = Field(default=0, ge=0, description="Steps between validation videos (0: only at the end).")
    at_end: bool = Field(default=True, description="Render the validation videos after the last step.")
    prompts: list[Prompt] = Field(
        default_factory=list, max_length=VALIDATION_PROMPTS, description="Prompts (empty: no validation videos)."
    )
    images: list[Uri] = Field(
        default_factory=list, max_length=VALIDATION_PROMPTS, description="i2v: one conditioning image per prompt."
    )
    steps: int = Field(default=50, ge=1, le=1000, description="Denoising steps.")
    guidance_scale: float = Field(default=6.0, ge=1.0, description="Classifier-free guidance scale.")
    num_frames: int | None = Field(default=None, ge=1, description="Frames (default: data.num_frames).")
    seed: int = Field(default=0, ge=0, description="Noise seed, fixed so videos compare across steps.")


class EvaluationConfig(_Section):
    """Baseline versus fine-tuned, measured after training (`disney-train eval`): held-out prompts (and
    images for i2v) rendered with the base model and with the run's LoRA at the same seeds, then scored for
    prompt fidelity, temporal consistency and closeness to the training clips' style (CLIP and SSIM)."""

    prompts: list[Prompt] = Field(
        min_length=1,
        max_length=EVALUATION_PROMPTS,
        description="Held-out prompts, used as written (add the id token if trained with one).",
    )
    images: list[Uri] = Field(
        default_factory=list, max_length=EVALUATION_PROMPTS, description="i2v: one conditioning image per prompt."
    )
    clip_uri: Uri = Field(
        description="CLIP in the transformers layout (e.g. openai/clip-vit-base-patch32 copied to s3://models/clip)."
    )
    seeds: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Videos per prompt and model; prompt i of set k is seeded seed + k * prompts + i.",
    )
    seed: int = Field(default=0, ge=0, le=2**31, description="The first noise seed; both models get the same seeds.")
    steps: int = Field(default=50, ge=1, le=1000, description="Denoising steps.")
    guidance_scale: float = Field(default=6.0, ge=1.0, description="Classifier-free guidance scale.")
    num_frames: Frames | None = _frames_field(None, "Frames (default: data.num_frames); as data.num_frames.")
    height: Sixteen | None = _size_field("height", None, "Height (default: data.height); a multiple of 16.")
    width: Sixteen | None = _size_field("width", None, "Width (default: data.width); a multiple of 16.")
    lora_scale: float = Field(default=1.0, gt=0, le=10, description="Scale of the run's LoRA in the fine-tuned videos.")
    reference_clips: int = Field(
        default=32,
        ge=1,
        le=100_000,
        description="Training clips (spread over the dataset) that make the style reference.",
    )
    reference_frames: int = Field(default=8, ge=2, le=1025, description="Frames taken from each reference clip.")


class OutputConfig(_Section):
    uri: Uri = Field(description="Where checkpoints and the final LoRA go: a local path or s3://bucket/prefix.")
    owner: Annotated[str, AfterValidator(_one_line)] | None = Field(
        default=None,
        max_length=512,
        pattern=r"^[^/]+/[^/]+/[^/]+$",
        description="Who the run belongs to (the operator sets <namespace>/<name>/<uid> of its VideoFineTune): "
        "the first start records it in <run>/owner.json, and a run recorded by another namespace or name is "
        "refused, never resumed or reported as finished (one made again under the same namespace and name "
        "adopts it). Unset: no record, no check (local runs).",
    )


class MetricsConfig(_Section):
    """Prometheus metrics of the training workers (see disney_train.metrics.exporter)."""

    port: int = Field(
        default=9500,
        ge=0,
        le=65535,
        description="The worker of local rank i serves http://<its Ray node IP>:port+i/metrics; 0: no metrics.",
    )


class TrainingSpec(_Section):
    """A run's recipe: everything but its name, where its model, data and outputs are, and its workers.

    The `training` block of a VideoFineTune is exactly this (the operator's CRD schema is generated
    from it); `RunConfig` adds the rest."""

    seed: int = Field(default=42, ge=0, le=2**32 - 1, description="Seed of data order and initialisation.")
    data: DataOptions = Field(default_factory=DataOptions)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainOptions = Field(default_factory=TrainOptions)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    s3: S3Options = Field(default_factory=S3Options)


class RunConfig(TrainingSpec):
    """A whole training run."""

    name: str = Field(
        default="disney-lora",
        pattern=r"^[a-z0-9]([a-z0-9\-]{0,61}[a-z0-9])?$",
        description="Run name (lowercase letters, digits, '-'); the same name resumes the same run.",
    )
    model: ModelConfig
    data: DataConfig
    output: OutputConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    evaluation: EvaluationConfig | None = Field(
        default=None,
        description="Baseline versus fine-tuned after training (`disney-train eval`); none: no evaluation.",
    )

    @model_validator(mode="after")
    def _metrics_ports(self) -> RunConfig:
        last = self.metrics.port + self.train.workers.bounds[1] - 1
        if self.metrics.port and last > 65535:
            raise ValueError(f"metrics.port {self.metrics.port}: the ports of the workers would reach {last} (> 65535)")
        return self

    @model_validator(mode="after")
    def _family_frames(self) -> RunConfig:
        m = FRAME_MULTIPLE[self.model.family]
        counts = {"data.num_frames": self.data.num_frames, "validation.num_frames": self.validation.num_frames}
        if self.evaluation is not None:
            counts["evaluation.num_frames"] = self.evaluation.num_frames
        for name, n in counts.items():
            if n is not None and (n - 1) % m != 0:
                raise ValueError(f"{name} {n}: a {self.model.family} model takes {m}N+1 frames")
        return self

    @model_validator(mode="after")
    def _validation_images(self) -> RunConfig:
        v = self.validation
        if self.model.variant == "i2v" and v.prompts and len(v.images) != len(v.prompts):
            raise ValueError(
                f"validation: an image-to-video run needs one image per prompt "
                f"({len(v.prompts)} prompt(s), {len(v.images)} image(s))"
            )
        e = self.evaluation
        if e is not None and self.model.variant == "i2v" and len(e.images) != len(e.prompts):
            raise ValueError(
                f"evaluation: an image-to-video run needs one image per prompt "
                f"({len(e.prompts)} prompt(s), {len(e.images)} image(s))"
            )
        if e is not None and self.model.variant == "t2v" and e.images:
            raise ValueError("evaluation.images: a text-to-video run takes no images")
        return self


class ConfigError(UserError, ValueError):
    """A configuration that cannot be used; the message names the file and every bad field."""


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid run configuration ({err.error_count()} problem(s)):"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check its spelling)"
        elif e["type"] != "missing" and "input" in e:
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"  - {field}: {msg}")
    return "\n".join(lines)


_SECRET_KEYS = {
    "aws_access_key_id",
    "aws_secret_access_key",
    "access_key",
    "secret_key",
    "secretkey",
    "accesskey",
}


def _find_secret_keys(data: Any, path: str = "") -> list[str]:
    found: list[str] = []
    if isinstance(data, dict):
        for k, v in data.items():
            p = f"{path}.{k}" if path else str(k)
            if str(k).lower().replace("-", "_") in _SECRET_KEYS:
                found.append(p)
            found.extend(_find_secret_keys(v, p))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            found.extend(_find_secret_keys(v, f"{path}.{i}"))
    return found


def config_from_dict(data: Any, source: str = "<config>") -> RunConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a run configuration is a mapping, got {type(data).__name__}")
    secrets = _find_secret_keys(data)
    if secrets:
        raise ConfigError(
            f"{source}: {', '.join(secrets)}: credentials do not belong in a run configuration; "
            "set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment (or a Kubernetes Secret)"
        )
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a run configuration from YAML; `overrides` are dotted keys (`data.uri`) set on top."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such configuration file") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{p}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    return config_from_yaml(text, str(p), overrides)


def config_from_yaml(text: str, source: str, overrides: dict[str, Any] | None = None) -> RunConfig:
    """A run configuration from YAML text (a file's, or an environment variable's on a cluster)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        # Name the place, never echo the text: the offending line may hold a secret.
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "syntax error"
        raise ConfigError(f"{source}: not valid YAML{where}: {problem}") from None
    data = {} if data is None else data
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    return config_from_dict(data, source)


def _set_dotted(data: Any, dotted: str, value: Any) -> None:
    """`--set a.b.c=value`: sections made where missing (or null); a field that is not a section is named."""
    if not isinstance(data, dict):
        raise ConfigError(f"--set {dotted}: the configuration is not a mapping of sections")
    node, *parents, last = data, *dotted.split(".")
    for i, part in enumerate(parents):
        if node.get(part) is None:
            node[part] = {}
        if not isinstance(node[part], dict):
            raise ConfigError(f"--set {dotted}: {'.'.join(parents[: i + 1])} is a value, not a section")
        node = node[part]
    node[last] = value


_DUMP_ORDER = ("name", "seed", "model", "data", "output")


def dump_config(cfg: RunConfig) -> str:
    """YAML of a configuration, read top-down: name and where things are first, each `uri` first in its section."""
    data = cfg.model_dump(mode="json")
    data["data"] = {"uri": data["data"].pop("uri"), **data["data"]}
    data["train"] = {"workers": data["train"].pop("workers"), **data["train"]}
    ordered = {k: data.pop(k) for k in _DUMP_ORDER} | data
    return yaml.safe_dump(ordered, sort_keys=False, allow_unicode=True)


DEFAULTS_DIR = Path(__file__).parent / "defaults"


def embedded_default() -> Path:
    """The run configuration `make run` uses: local Ray, CPU workers, a tiny model, a sample clip."""
    return DEFAULTS_DIR / "local.yaml"


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """`--set FIELD=VALUE` items as overrides (each value read as YAML); ConfigError naming a bad one."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected FIELD=VALUE, e.g. --set optim.epochs=3")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or "syntax error"
            raise ConfigError(
                f"--set {item!r}: the value is not YAML ({problem}); quote text: --set 'x=\"[\"'"
            ) from None
    return out


def absolute_uris(cfg: RunConfig, base: Path) -> RunConfig:
    """Local URIs become absolute (relative to `base`): Ray workers do not share our working folder."""
    for section in (cfg.model, cfg.data, cfg.output):
        section.uri = _absolute_uri(section.uri, base)
    if cfg.train.cache_uri:
        cfg.train.cache_uri = _absolute_uri(cfg.train.cache_uri, base)
    cfg.validation.images = [_absolute_uri(u, base) for u in cfg.validation.images]
    if cfg.evaluation is not None:
        cfg.evaluation.clip_uri = _absolute_uri(cfg.evaluation.clip_uri, base)
        cfg.evaluation.images = [_absolute_uri(u, base) for u in cfg.evaluation.images]
    return cfg


def _absolute_uri(uri: str, base: Path) -> str:
    return uri if uri.startswith("s3://") else str((base / uri).resolve())
