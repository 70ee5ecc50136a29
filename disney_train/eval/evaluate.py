"""`disney-train eval`: the run's evaluation section, carried out.

1. The held-out prompts (and images, i2v) are rendered with the base model ("baseline") and then with
   the run's final LoRA ("finetuned"), each prompt at the same seeds for both, by the code that
   renders validation videos and `disney-train generate` (`disney_train.generate`).
2. Every video is measured (`disney_train.eval.scores`): prompt fidelity (CLIP text-frame cosine,
   CLIPScore) against the prompt without the run's id token, temporal consistency (adjacent frames'
   CLIP cosine, SSIM); each model's frames together against frames of the training clips (decoded
   from the packed dataset as training sees them) for style closeness.
3. Everything goes under `<run>/eval/`: the mp4s, the report (Markdown, HTML, plots, frame grids, GIFs),
   `eval.json` with every figure, and last `summary.json` (the headline figures the operator puts in
   the VideoFineTune's status). Files of an earlier evaluation that this one did not write are deleted
   after it, so the folder is never a mix of two evaluations.

With a Ray address (RAY_ADDRESS, as KubeRay sets it for a RayJob's entrypoint) the evaluation runs as
one Ray task with one training worker's resources, so on a GPU cluster it lands on a GPU worker rather
than on the pod that submitted the job.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from disney_train.config import EvaluationConfig, RunConfig
from disney_train.errors import UserError
from disney_train.eval.results import (
    EVAL_JSON,
    MODELS,
    REPORT_HTML,
    REPORT_MD,
    EvalResults,
    ModelName,
    ModelSummary,
    PromptInfo,
    Reference,
    Settings,
    Summary,
    VideoKey,
    VideoMetrics,
    VideoResult,
    headline,
)
from disney_train.runs import EVAL_DIR, SUMMARY_JSON

if TYPE_CHECKING:
    from disney_train.storage import Store

log = logging.getLogger(__name__)

Say = Callable[[str], None]


class EvalError(UserError, ValueError):
    """An evaluation that cannot run; the message names the field, file or value."""


def first_seeds(ev: EvaluationConfig) -> list[int]:
    """The first seed of each seed set: prompt i of set k is seeded seed + k * prompts + i, so no two
    videos of a model share a seed and both models get the same ones."""
    return [ev.seed + k * len(ev.prompts) for k in range(ev.seeds)]


def settings_of(cfg: RunConfig, ev: EvaluationConfig, device: str) -> Settings:
    """The rendering settings: the evaluation's, else the training data's."""
    return Settings(
        num_frames=ev.num_frames or cfg.data.num_frames,
        height=ev.height or cfg.data.height,
        width=ev.width or cfg.data.width,
        fps=cfg.data.fps,
        steps=ev.steps,
        guidance_scale=ev.guidance_scale,
        seed_sets=ev.seeds,
        seeds=[first + i for first in first_seeds(ev) for i in range(len(ev.prompts))],
        lora_scale=ev.lora_scale,
        device=device,
    )


def scored_prompt(prompt: str, id_token: str | None) -> str:
    """What CLIP scores a prompt against: the prompt without the run's leading id token (a made-up
    word that tells the fine-tuned model the style, and means nothing to CLIP)."""
    if id_token and prompt.startswith(id_token):
        rest = prompt[len(id_token) :]
        if rest[:1].isspace() or rest[:1] in (",", ":", ";"):  # the token as a word, not a word's start
            return rest.lstrip(" \t,:;") or prompt
    return prompt


def video_key(model: ModelName, prompt: int, seed: int) -> str:
    """The mp4's key, relative to the eval folder."""
    return f"videos/{model}-p{prompt:02d}-s{seed}.mp4"


# --------------------------------------------------------------------------- the style reference
@dataclass(frozen=True)
class ReferenceFrames:
    frames: np.ndarray  # uint8 [N, H, W, 3]: reference_frames from each clip, stacked
    keys: list[str]  # the clips taken
    skipped: list[str]  # clips that could not be read or decoded: reported, left out


def reference_frames(cfg: RunConfig, ev: EvaluationConfig, say: Say) -> ReferenceFrames:
    """Frames of up to `reference_clips` training clips (spread over the dataset), each decoded and cropped
    as training sees it, `reference_frames` evenly spaced frames per clip. A clip that cannot be read or
    decoded is reported and left out; none left is an error."""
    from disney_train.data.pack import load_manifest
    from disney_train.data.reader import ClipDataset, DataError
    from disney_train.media import evenly_spaced
    from disney_train.storage import open_store

    store = open_store(cfg.data.uri, cfg.s3)
    manifest = load_manifest(cfg.data.uri, cfg.s3, store)
    if not manifest.samples:
        raise EvalError(f"{cfg.data.uri}: the packed dataset has no clips to take the style reference from")
    dataset = ClipDataset(store, manifest, cfg.data, seed=cfg.seed, epoch=0, with_image=False)
    parts, keys, skipped = [], [], []
    for i in evenly_spaced(len(manifest.samples), ev.reference_clips):
        try:
            video = dataset[i]["video"]  # float [F, 3, H, W] in [-1, 1]
        except DataError as err:
            say(f"style reference: left out: {err}")
            skipped.append(f"{manifest.samples[i].key}: {err}")
            continue
        u8 = ((video.permute(0, 2, 3, 1).numpy() + 1.0) * 127.5 + 0.5).clip(0, 255).astype(np.uint8)
        parts.append(u8[evenly_spaced(len(u8), ev.reference_frames)])
        keys.append(manifest.samples[i].key)
    if not parts:
        raise EvalError(f"{cfg.data.uri}: none of the training clips could be read for the style reference")
    return ReferenceFrames(np.concatenate(parts), keys, skipped)


# --------------------------------------------------------------------------- rendering
def _render_both(
    cfg: RunConfig, ev: EvaluationConfig, settings: Settings, lora: bytes, images: list[bytes], say: Say
) -> dict[VideoKey, np.ndarray]:
    """Every (model, prompt, seed) video: the base model's first, then the same pipeline with the LoRA."""
    import torch

    from disney_train.generate import RenderSpec, apply_loras, load_pipeline, pick_device, render
    from disney_train.model.source import resolve_model
    from disney_train.model.spec import run_spec

    model_path = resolve_model(cfg.model.uri, cfg.s3)
    spec_of_model = run_spec(cfg, model_path)  # checks the variant, as training does
    device, dtype = pick_device(settings.device)
    pipe = load_pipeline(model_path, spec_of_model, device, dtype)
    videos: dict[VideoKey, np.ndarray] = {}
    sets = first_seeds(ev)
    s = settings
    spec = RenderSpec(ev.prompts, images, s.num_frames, s.height, s.width, s.fps, s.steps, s.guidance_scale, 0)
    for model in MODELS:
        if model == "finetuned":
            apply_loras(pipe, [(lora, ev.lora_scale)])
        for k, first in enumerate(sets):
            say(f"rendering {model}: seed set {k + 1} of {len(sets)}, {len(ev.prompts)} prompt(s)")
            spec = dataclasses.replace(spec, seed=first)
            for i, frames in enumerate(render(pipe, spec, spec_of_model)):
                videos[(model, i, first + i)] = frames
    del pipe
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return videos


# --------------------------------------------------------------------------- measuring
def _summary(videos: list[VideoResult], generated: np.ndarray, reference: np.ndarray) -> ModelSummary:
    from disney_train.eval.scores import mean_cosine_distance, style_distance

    def values(key: str) -> np.ndarray:
        return np.array([getattr(v.metrics, key) for v in videos], dtype=np.float64)

    return ModelSummary(
        clip_score=float(values("clip_score").mean()),
        clipscore=float(values("clipscore").mean()),
        clip_consistency=float(values("clip_consistency").mean()),
        ssim_consistency=float(values("ssim_consistency").mean()),
        style_frechet=style_distance(generated, reference),
        style_cosine=mean_cosine_distance(generated, reference),
        clip_score_std=float(values("clip_score").std()),
        clipscore_std=float(values("clipscore").std()),
        clip_consistency_std=float(values("clip_consistency").std()),
        ssim_consistency_std=float(values("ssim_consistency").std()),
    )


def _measure(
    clip: Any, videos: dict[VideoKey, np.ndarray], texts: list[np.ndarray], prompts: list[PromptInfo]
) -> tuple[list[VideoResult], dict[VideoKey, np.ndarray]]:
    from disney_train.eval.scores import adjacent_cosines, adjacent_ssim, embed_frames, text_frame_score

    results, embeddings = [], {}
    for key, frames in videos.items():
        model, i, seed = key
        emb = embeddings[key] = embed_frames(clip, frames)
        score = text_frame_score(texts[i], emb, prompts[i].truncated)
        clip_adj, ssim_adj = adjacent_cosines(emb), adjacent_ssim(frames)
        metrics = VideoMetrics(
            clip_score=score.score,
            clipscore=score.clipscore,
            clip_consistency=float(clip_adj.mean()),
            ssim_consistency=float(ssim_adj.mean()),
            clip_adjacent=[float(x) for x in clip_adj],
            ssim_adjacent=[float(x) for x in ssim_adj],
        )
        results.append(VideoResult(model=model, prompt=i, seed=seed, video=video_key(model, i, seed), metrics=metrics))
    return results, embeddings


# --------------------------------------------------------------------------- the whole evaluation
def check_inputs(cfg: RunConfig) -> list[bytes]:
    """What the evaluation reads besides the models it renders with, checked before anything heavy (and by
    `disney-train train --evaluate` before training): CLIP's layout (a listing and config.json, not its
    weights), and every image decoding. Returns the images' bytes; an error names the field and URI."""
    import io

    from PIL import Image, UnidentifiedImageError

    from disney_train.eval.scores import check_clip_source
    from disney_train.model.source import ModelError
    from disney_train.storage import StorageError, read_uri

    ev = cfg.evaluation
    if ev is None:
        raise EvalError(f"run {cfg.name!r}: the configuration has no evaluation section (prompts, clip_uri, ...)")
    try:
        check_clip_source(ev.clip_uri, cfg.s3)
    except (ModelError, StorageError) as err:
        raise EvalError(f"evaluation.clip_uri: {err}") from None
    images = []
    for i, uri in enumerate(ev.images):
        try:
            data = read_uri(uri, cfg.s3)
            with Image.open(io.BytesIO(data)) as im:
                im.convert("RGB")  # decodes it all, not just the header
        except StorageError as err:
            raise EvalError(f"evaluation.images[{i}]: {err}") from None
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise EvalError(f"evaluation.images[{i}] {uri}: not an image that decodes ({err})") from None
        images.append(data)
    return images


def evaluate(cfg: RunConfig, device: str = "auto", say: Say = log.info, ran_on: str | None = None) -> EvalResults:
    """Evaluate the run of `cfg` (its evaluation section) and write everything under `<run>/eval/`.
    `ran_on` says where (default: this process and host)."""
    from disney_train.eval.report import write_report
    from disney_train.eval.scores import count_tokens, embed_frames, embed_text, load_clip
    from disney_train.generate import pick_device
    from disney_train.media import mp4_bytes
    from disney_train.runs import FINAL_LORA, RunFiles

    t0 = time.perf_counter()
    if device not in ("auto", "cpu", "cuda"):
        raise EvalError(f"--device {device!r}: auto, cpu or cuda")
    images = check_inputs(cfg)
    ev = cfg.evaluation
    assert ev is not None  # check_inputs refuses a configuration without one
    device = pick_device(device)[0]
    files = RunFiles(cfg)
    if not files.store.exists(FINAL_LORA):
        raise EvalError(
            f"{files.store.url(FINAL_LORA)}: no fine-tuned LoRA; run {cfg.name!r} has not finished training"
        )
    lora = files.store.read_bytes(FINAL_LORA)
    settings = settings_of(cfg, ev, device)

    say(f"CLIP from {ev.clip_uri}")
    clip = load_clip(ev.clip_uri, cfg.s3, device)
    prompts, texts = [], []
    for i, text in enumerate(ev.prompts):
        scored = scored_prompt(text, cfg.data.id_token)
        emb, truncated = embed_text(clip, scored)
        texts.append(emb)
        prompts.append(
            PromptInfo(
                text=text,
                scored=scored,
                truncated=truncated,
                tokens=count_tokens(clip, scored),
                image=ev.images[i] if ev.images else None,
            )
        )
    say(f"style reference: {ev.reference_clips} clip(s) of {cfg.data.uri}")
    ref = reference_frames(cfg, ev, say)
    reference = embed_frames(clip, ref.frames)

    videos = _render_both(cfg, ev, settings, lora, images, say)
    say(f"measuring {len(videos)} videos")
    measured, embeddings = _measure(clip, videos, texts, prompts)
    sets = {m: np.concatenate([e for k, e in embeddings.items() if k[0] == m]) for m in MODELS}
    summary = {m: _summary([v for v in measured if v.model == m], sets[m], reference) for m in MODELS}
    results = EvalResults(
        run=files.uri,
        model=cfg.model.uri,
        variant=cfg.model.variant,
        lora=files.store.url(FINAL_LORA),
        clip=ev.clip_uri,
        clip_max_tokens=clip.max_tokens,
        settings=settings,
        reference=Reference(
            dataset=cfg.data.uri, clips=len(ref.keys), frames=len(ref.frames), clip_keys=ref.keys, skipped=ref.skipped
        ),
        prompts=prompts,
        videos=measured,
        summary=summary,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        seconds=round(time.perf_counter() - t0, 1),
        ran_on=ran_on or f"process {os.getpid()} on {socket.gethostname()}",
    )
    store = files.store
    earlier = set(store.list_keys(f"{EVAL_DIR}/"))
    if SUMMARY_JSON in earlier:
        store.delete([SUMMARY_JSON])  # no headline of the last evaluation beside this one's files
    written = []
    for (model, i, seed), frames in videos.items():
        written.append(f"{EVAL_DIR}/{video_key(model, i, seed)}")
        store.write_bytes(written[-1], mp4_bytes(frames, settings.fps))
    say("writing the report")
    embedding_sets: dict[str, np.ndarray] = {"reference": reference, **{str(m): e for m, e in sets.items()}}
    written += write_report(results, videos, embedding_sets, store)
    store.write_bytes(EVAL_JSON, (results.model_dump_json(indent=1) + "\n").encode())
    written.append(EVAL_JSON)
    if not results.all_finite():  # kept (videos, report, eval.json), but no headline figures to show
        _delete_stale(store, earlier, written)
        raise EvalError(
            f"run {cfg.name!r}: the evaluation gave figures that are not finite (see {store.url(REPORT_MD)}); "
            "no summary.json written"
        )
    head = Summary(
        report=store.url(REPORT_HTML),
        markdown=store.url(REPORT_MD),
        json_uri=store.url(EVAL_JSON),
        baseline=headline(summary["baseline"]),
        finetuned=headline(summary["finetuned"]),
        videos=len(measured),
        truncated_prompts=len(results.truncated_prompts()),
        created=results.created,
    )
    files.write_eval_summary(head.model_dump_json(by_alias=True, indent=1))
    written.append(SUMMARY_JSON)
    _delete_stale(store, earlier, written)
    return results


def _delete_stale(store: Store, earlier: set[str], written: list[str]) -> None:
    """The files of an earlier evaluation that this one did not write: gone, so the folder is one evaluation."""
    stale = sorted(earlier - set(written))
    if stale:
        store.delete(stale)


def eval_resources(cfg: RunConfig, cluster_gpus: float) -> dict[str, float]:
    """One training worker's resources (Ray's names): the evaluation renders where training ran."""
    from disney_train.train.launch import launch_plan

    return launch_plan(cfg, cluster_gpus).resources_per_worker


def evaluate_on_ray(cfg: RunConfig, device: str, address: str | None) -> EvalResults:
    """`evaluate` as one Ray task with one worker's resources (a GPU on a GPU cluster); its log lines
    reach the driver through Ray."""
    import ray

    from disney_train.train.launch import ensure_ray

    started = ensure_ray(address, None)
    try:
        res = eval_resources(cfg, float(ray.cluster_resources().get("GPU", 0)))  # type: ignore[no-untyped-call]
        task = ray.remote(_evaluate_task).options(num_cpus=res.get("CPU", 1), num_gpus=res.get("GPU", 0), max_retries=0)
        try:
            text: str = ray.get(task.remote(cfg.model_dump(mode="json"), device))
        except ray.exceptions.RayTaskError as err:
            if isinstance(err.cause, ValueError | OSError | RuntimeError):  # ours name the field or file
                raise err.cause from None
            raise
        return EvalResults.model_validate_json(text)
    finally:
        if started:
            ray.shutdown()


def _evaluate_task(run: dict[str, Any], device: str) -> str:
    import ray

    from disney_train.config import config_from_dict

    ctx = ray.get_runtime_context()
    where = f"Ray task {ctx.get_task_id()} on node {ctx.get_node_id()}"
    return evaluate(config_from_dict(run, "the evaluation task"), device, print, where).model_dump_json()


def run_evaluation(
    cfg: RunConfig, device: str = "auto", address: str | None = None, say: Say = log.info
) -> EvalResults:
    """On Ray when there is an address (given, or RAY_ADDRESS), else in this process."""
    if address or os.environ.get("RAY_ADDRESS"):
        return evaluate_on_ray(cfg, device, address)
    return evaluate(cfg, device, say)
