"""Rendering videos with the base model and a LoRA: the validation videos of a training run.

A fresh pipeline is loaded from the model folder and the LoRA file is applied with diffusers'
own `load_lora_weights`, exactly as a user of the published LoRA would; so a validation video
also proves that the saved LoRA loads. It works at every ZeRO stage (the training copy of the
transformer may be partitioned across workers) and leaves the training state untouched.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np


@dataclass(frozen=True)
class RenderSpec:
    prompts: list[str]
    images: list[bytes]  # i2v: one encoded image per prompt
    num_frames: int
    height: int
    width: int
    fps: float
    steps: int
    guidance_scale: float
    seed: int


def load_pipeline(model_path: Path, variant: Literal["t2v", "i2v"], device: str, dtype: Any) -> Any:
    from diffusers import CogVideoXImageToVideoPipeline, CogVideoXPipeline

    cls = CogVideoXImageToVideoPipeline if variant == "i2v" else CogVideoXPipeline
    pipe = cls.from_pretrained(str(model_path), torch_dtype=dtype)
    if device == "cuda":
        pipe.enable_model_cpu_offload()  # beside a training worker's memory
        pipe.vae.enable_tiling()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def apply_lora(pipe: Any, lora_file: bytes, scale: float = 1.0, name: str = "lora") -> None:
    from disney_train.train.lora import LORA_FILE

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / LORA_FILE).write_bytes(lora_file)
        pipe.load_lora_weights(tmp, adapter_name=name)
    pipe.set_adapters([name], [scale])


def render(pipe: Any, spec: RenderSpec, variant: Literal["t2v", "i2v"]) -> list[np.ndarray]:
    """One uint8 video [F, H, W, 3] per prompt, each from the generator seeded by (seed, index)."""
    import io

    import torch
    from PIL import Image

    videos = []
    for i, prompt in enumerate(spec.prompts):
        kwargs: dict[str, Any] = {
            "prompt": prompt,
            "num_frames": spec.num_frames,
            "height": spec.height,
            "width": spec.width,
            "num_inference_steps": spec.steps,
            "guidance_scale": spec.guidance_scale,
            "generator": torch.Generator().manual_seed(spec.seed + i),
            "output_type": "np",
        }
        if variant == "i2v":
            kwargs["image"] = Image.open(io.BytesIO(spec.images[i])).convert("RGB")
        frames = pipe(**kwargs).frames[0]  # float [F, H, W, 3] in [0, 1]
        videos.append((np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))
    return videos


def mp4_bytes(frames: np.ndarray, fps: float) -> bytes:
    from disney_train.data.sample import encode_clip

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "video.mp4"
        encode_clip(list(frames), path, max(1, round(fps)))
        return path.read_bytes()
