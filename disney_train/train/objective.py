"""One step's training loss: clean latents, a noise level and noise, the transformer, the loss.

What each of these is (CogVideoX's DDPM timesteps and v-prediction, Wan's flow matching; the
conditioning, the layouts) is the model specification's (`disney_train.model.base.ModelSpec`).

All randomness comes from one `torch.Generator` per step, seeded by (seed, step, rank): a resumed
run draws the same timesteps, noise and latent samples as an uninterrupted one, without storing
RNG state, and whatever the world size was before.
"""

from __future__ import annotations

from typing import Any

import torch

from disney_train.model.base import ModelSpec, seeded


def step_generator(seed: int, step: int, rank: int, stream: int = 0) -> torch.Generator:
    return seeded(seed, step, rank, stream)


def diffusion_loss(
    transformer: Any,
    spec: ModelSpec,
    batch: dict[str, torch.Tensor],
    generator: torch.Generator,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """One batch of cached entries -> the scalar loss (graph attached to the transformer's LoRA)."""
    latents = spec.clean_latents(batch, generator, device)
    levels = spec.draw_noise_levels(latents.shape[0], generator).to(device)
    noise = torch.randn(latents.shape, generator=generator).to(device)
    noisy = spec.add_noise(latents, noise, levels)
    inputs = spec.transformer_inputs(batch, noisy, levels, generator, dtype)
    output = transformer(**inputs, return_dict=False)[0]
    return spec.loss(output, noisy, latents, noise, levels)
