"""What a diffusers pipeline feeds its transformer: the parity tests' reference side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from disney_train.model.base import ModelSpec


class _Stop(Exception):
    pass


def first_transformer_call(pipe: Any, **call: Any) -> dict[str, Any]:
    """Call `pipe(**call)` and stop it at its transformer's first forward; return the keyword arguments
    that forward got (the pipeline's own inputs at its first denoising step)."""
    seen: dict[str, Any] = {}

    def hook(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        seen.update(kwargs)
        raise _Stop

    handle = pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with pytest.raises(_Stop):
            pipe(**call)
    finally:
        handle.remove()
    return seen


def first_step_inputs(
    spec: ModelSpec, path: Path, prompt: str, size: tuple[int, int, int], image: bytes
) -> dict[str, Any]:
    """What the specification's pipeline, loaded from `path`, feeds its transformer at its one
    denoising step for `prompt` at `size` (frames, height, width), without guidance (one batch entry);
    from `image` for an image-to-video model."""
    frames, height, width = size
    pipe = spec.pipeline_class().from_pretrained(str(path))
    return first_transformer_call(
        pipe,
        prompt=prompt,
        num_frames=frames,
        height=height,
        width=width,
        num_inference_steps=1,
        guidance_scale=1.0,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
        **spec.render_inputs(image if spec.wants_image else None),
    )


def noise_png(height: int, width: int, seed: int = 5) -> bytes:
    """A PNG of random pixels: a conditioning image whose every pixel matters."""
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()
