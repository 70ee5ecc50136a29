"""Validation videos for the current LoRA, rendered on rank 0 with a fresh pipeline during training."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from disney_train.config import RunConfig
from disney_train.model.base import ModelSpec
from disney_train.runs import RunFiles
from disney_train.storage import read_uri
from disney_train.train import zero_state
from disney_train.train.dist import Dist
from disney_train.train.engine import Placement

log = logging.getLogger("disney_train.worker")


def validate(
    cfg: RunConfig,
    model_path: Path,
    model: ModelSpec,
    files: RunFiles,
    step: int,
    params: list[tuple[str, torch.nn.Parameter]],
    dist: Dist,
    place: Placement,
) -> None:
    """Collective (every rank gathers the LoRA); rank 0 renders the validation prompts and writes the videos
    under the run's `validation/step-N/`."""
    from disney_train.generate import RenderSpec, render
    from disney_train.media import mp4_bytes

    v = cfg.validation
    if not v.prompts:
        return
    weights = zero_state.gather_weights(params)  # collective: every rank takes part
    if dist.rank == 0:
        t0 = time.perf_counter()
        images = [read_uri(u, cfg.s3) for u in v.images]
        pipe = pipeline_with_lora(model_path, model, cfg, weights, place)
        spec = RenderSpec(
            prompts=v.prompts,
            images=images,
            num_frames=v.num_frames or cfg.data.num_frames,
            height=cfg.data.height,
            width=cfg.data.width,
            fps=cfg.data.fps,
            steps=v.steps,
            guidance_scale=v.guidance_scale,
            seed=v.seed,
        )
        videos = [mp4_bytes(frames, cfg.data.fps) for frames in render(pipe, spec, model)]
        files.write_validation(step, videos, v.prompts)
        log.info("validation videos for step %d in %.1f s", step, time.perf_counter() - t0)
        del pipe
    dist.barrier()


def pipeline_with_lora(
    model_path: Path, model: ModelSpec, cfg: RunConfig, weights: dict[str, torch.Tensor], place: Placement
) -> Any:
    """A fresh pipeline of the model with the run's LoRA as saved (on the part the run trains), loaded
    with diffusers' own `load_lora_weights`."""
    from disney_train.generate import apply_lora, load_pipeline
    from disney_train.model.lora import spec_lora_file

    dtype = torch.bfloat16 if place.precision == "bf16" else torch.float32
    pipe = load_pipeline(model_path, model, place.device, dtype)
    apply_lora(pipe, spec_lora_file(weights, cfg.lora, model))
    return pipe
