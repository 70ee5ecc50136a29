"""What `disney-train eval` measured: every figure, as written to `<run>/eval/eval.json`, and the
headline figures (`<run>/eval/summary.json`) that the operator copies into a VideoFineTune's status.

The two models are `baseline` (the base model) and `finetuned` (the base model with the run's LoRA).
Each rendered video is one (model, prompt, seed); both models get the same prompts and seeds, so the
videos pair up and `paired_deltas` compares like with like.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from disney_train.runs import EVAL_DIR

ModelName = Literal["baseline", "finetuned"]
VideoKey = tuple[ModelName, int, int]  # (model, prompt index, seed)
MODELS: tuple[ModelName, ModelName] = ("baseline", "finetuned")
LABELS: dict[ModelName, str] = {"baseline": "Baseline", "finetuned": "Fine-tuned"}

EVAL_JSON = f"{EVAL_DIR}/eval.json"
REPORT_MD = f"{EVAL_DIR}/report.md"
REPORT_HTML = f"{EVAL_DIR}/report.html"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Metric(_Model):
    """How one figure is read: its name in the JSON, its label, which way is better, what it measures."""

    key: str
    label: str
    aspect: str  # the claim it backs: prompt fidelity, temporal consistency, style (aesthetic) fidelity
    higher_is_better: bool
    description: str


# The table's rows, in order; VideoMetrics and ModelSummary have these fields.
METRICS: tuple[Metric, ...] = (
    Metric(
        key="clip_score",
        label="CLIP text-frame cosine",
        aspect="Prompt fidelity",
        higher_is_better=True,
        description="cos(prompt, frame) of CLIP embeddings, averaged over the frames",
    ),
    Metric(
        key="clipscore",
        label="CLIPScore (0-100)",
        aspect="Prompt fidelity",
        higher_is_better=True,
        description="100 x the mean over frames of max(cos, 0)",
    ),
    Metric(
        key="clip_consistency",
        label="Adjacent-frame CLIP cosine",
        aspect="Temporal consistency",
        higher_is_better=True,
        description="cos of adjacent frames' CLIP image embeddings (1: a still video)",
    ),
    Metric(
        key="ssim_consistency",
        label="Adjacent-frame SSIM",
        aspect="Temporal consistency",
        higher_is_better=True,
        description="SSIM between adjacent frames, model-free (1: a still video)",
    ),
    Metric(
        key="style_frechet",
        label="Fréchet distance to the training clips",
        aspect="Style (aesthetic) fidelity",
        higher_is_better=False,
        description="Fréchet distance of the generated frames' CLIP embeddings to the training clips' (0: same)",
    ),
    Metric(
        key="style_cosine",
        label="Mean-embedding cosine distance to the training clips",
        aspect="Style (aesthetic) fidelity",
        higher_is_better=False,
        description="1 - cos of the mean CLIP embeddings of generated and training frames (0: same direction)",
    ),
)
PER_VIDEO = ("clip_score", "clipscore", "clip_consistency", "ssim_consistency")  # the style figures are per set


class PromptInfo(_Model):
    text: str  # as rendered
    scored: str  # what CLIP scored it against: the prompt without the run's id token
    truncated: bool  # longer than CLIP's token limit: only its start was scored
    tokens: int  # CLIP tokens of `scored`, start and end tokens included
    image: str | None = None  # i2v: the conditioning image's URI


class VideoMetrics(_Model):
    clip_score: float
    clipscore: float
    clip_consistency: float
    ssim_consistency: float
    # per adjacent pair of frames (F-1 values): the temporal plot
    clip_adjacent: list[float]
    ssim_adjacent: list[float]


class VideoResult(_Model):
    model: ModelName
    prompt: int  # index into EvalResults.prompts
    seed: int
    video: str  # the mp4, relative to the eval folder
    metrics: VideoMetrics


class ModelSummary(_Model):
    """One model's figures: the per-video ones averaged over all its videos, the style ones over all its
    frames at once."""

    clip_score: float
    clipscore: float
    clip_consistency: float
    ssim_consistency: float
    style_frechet: float
    style_cosine: float
    clip_score_std: float
    clipscore_std: float
    clip_consistency_std: float
    ssim_consistency_std: float


class Settings(_Model):
    num_frames: int
    height: int
    width: int
    fps: float
    steps: int
    guidance_scale: float
    seed_sets: int  # videos per prompt and model
    seeds: list[int]  # every seed used: prompt i of seed set k gets seed + k * prompts + i
    lora_scale: float
    device: str


class Reference(_Model):
    dataset: str
    clips: int
    frames: int  # frames embedded, over all clips
    clip_keys: list[str]
    skipped: list[str] = Field(default_factory=list)  # clips that could not be read: why, each


class EvalResults(_Model):
    run: str  # the run's URI (<output.uri>/<name>)
    model: str
    variant: Literal["t2v", "i2v"]
    lora: str  # the LoRA file's URI
    clip: str
    clip_max_tokens: int
    settings: Settings
    reference: Reference
    prompts: list[PromptInfo]
    videos: list[VideoResult]
    summary: dict[ModelName, ModelSummary]
    created: str  # ISO 8601, UTC
    seconds: float = Field(description="Wall time of the evaluation.")
    ran_on: str = Field(description="Where it ran: a Ray task and its node, or a process and its host.")

    def figure(self, model: ModelName, key: str) -> float:
        return float(getattr(self.summary[model], key))

    def paired_deltas(self, key: str) -> list[float]:
        """finetuned - baseline for each (prompt, seed), for a per-video metric."""
        base = {(v.prompt, v.seed): getattr(v.metrics, key) for v in self.videos if v.model == "baseline"}
        return [
            float(getattr(v.metrics, key)) - float(base[(v.prompt, v.seed)])
            for v in self.videos
            if v.model == "finetuned" and (v.prompt, v.seed) in base
        ]

    def truncated_prompts(self) -> list[int]:
        return [i for i, p in enumerate(self.prompts) if p.truncated]

    def all_finite(self) -> bool:
        values = [x for s in self.summary.values() for x in s.model_dump().values()]
        values += [x for v in self.videos for x in (getattr(v.metrics, k) for k in PER_VIDEO)]
        values += [x for v in self.videos for x in (*v.metrics.clip_adjacent, *v.metrics.ssim_adjacent)]
        return all(math.isfinite(x) for x in values)


class Headline(_Model):
    """The few figures a VideoFineTune's status shows for each model."""

    prompt_fidelity: float  # clip_score
    temporal_consistency: float  # clip_consistency
    ssim: float  # ssim_consistency
    style_distance: float  # style_frechet


class Summary(_Model):
    """`<run>/eval/summary.json`: where the report is, and the headline figures."""

    report: str  # the HTML report's URI
    markdown: str
    json_uri: str = Field(alias="json")
    baseline: Headline
    finetuned: Headline
    videos: int
    truncated_prompts: int
    created: str

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def headline(s: ModelSummary) -> Headline:
    return Headline(
        prompt_fidelity=s.clip_score,
        temporal_consistency=s.clip_consistency,
        ssim=s.ssim_consistency,
        style_distance=s.style_frechet,
    )
