"""The training objective of CogVideoX LoRA fine-tuning, as the reference trainers compute it.

diffusers' `examples/cogvideo/train_cogvideox_lora.py` and the CogVideo project's trainers:
timesteps uniform over the scheduler's 1000, noise added with `CogVideoXDPMScheduler.add_noise`,
the transformer predicts v; `scheduler.get_velocity(v, x_t, t)` turns it into a prediction of the
clean latents x0, and the loss is the mean of (1 / (1 - alpha_bar_t)) * (x0_pred - x0)^2 per
sample, then over the batch. What differs between the variants (time padding, the image-to-video
conditioning, RoPE, `ofs`) is the model specification's (`disney_train.model.spec`).

All randomness comes from one `torch.Generator` per step, seeded by (seed, step, rank): a resumed
run draws the same timesteps, noise and latent samples as an uninterrupted one, without storing
RNG state, and whatever the world size was before.
"""

from __future__ import annotations

from typing import Any

import torch

from disney_train.model.spec import CogVideoXSpec, seeded


def step_generator(seed: int, step: int, rank: int, stream: int = 0) -> torch.Generator:
    return seeded(seed, step, rank, stream)


def diffusion_loss(
    transformer: Any,
    spec: CogVideoXSpec,
    batch: dict[str, torch.Tensor],
    generator: torch.Generator,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """One batch of cached entries -> the scalar loss (graph attached to the transformer's LoRA)."""
    latents = spec.clean_latents(batch, generator, device)
    b = latents.shape[0]
    t = torch.randint(0, int(spec.scheduler.config.num_train_timesteps), (b,), generator=generator).to(device)
    noise = torch.randn(latents.shape, generator=generator).to(device)
    noisy = spec.scheduler.add_noise(latents, noise, t)
    inputs = spec.transformer_inputs(batch, noisy, t, generator, dtype)
    output = transformer(**inputs, return_dict=False)[0]
    return spec.loss(output, noisy, latents, t)
